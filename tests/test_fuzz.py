"""Hostile and damaged files: every reader answers with an ExpoError or a correct result, nothing else.

The mutations are scripts/fuzz.py's (it runs the same targets for 100k cases); hypothesis picks
the random choices here, with a budget that keeps `make test` fast.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import _load_script

pytestmark = pytest.mark.slow

fuzz = _load_script("fuzz")
BUDGET = {"safetensors": 1500, "gguf": 1500, "checkpoint": 250, "tokenizer": 600}


@pytest.fixture(scope="module")
def targets(pair, tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz")
    return {name: cls(work / name, (pair.sft, pair.rlhf)) for name, cls in fuzz.TARGETS.items()}


@pytest.mark.parametrize("name", list(BUDGET))
def test_reader_never_fails_otherwise(targets, name):
    target = targets[name]

    @settings(
        max_examples=BUDGET[name],
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.randoms(use_true_random=False))
    def check(rng: random.Random) -> None:
        failure = fuzz.run_case(target.case(rng))
        assert failure is None, failure

    check()
