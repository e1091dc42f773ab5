"""`download` and `build --remote` against a loopback stand-in for the hub (tests/hub_server.py).

Nothing here talks to the real hub: ``HF_ENDPOINT`` points huggingface_hub and expo-gguf at a
server on 127.0.0.1 that serves the session's tiny pair the way the hub's resolve endpoint does.
The reference for every remote build is the local build of the same pair, byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest

from conftest import Pair, one_error_line, run_cli
from hub_server import Hub

SFT, RLHF = "org/sft-model", "org/rlhf-model"


@pytest.fixture(scope="module")
def served(pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    pickles = tmp_path_factory.mktemp("pickle-only")
    (pickles / "config.json").write_text((pair.rlhf / "config.json").read_text())
    (pickles / "pytorch_model.bin").write_bytes(b"not unpickled" * 100)
    published = {"openchat/openchat-3.5-0106": pair.sft, "Nexusflow/Starling-LM-7B-beta": pair.rlhf}
    with Hub({SFT: pair.sft, RLHF: pair.rlhf, "org/pickle-only": pickles, **published}) as hub:
        yield hub


@pytest.fixture
def hub(served: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Hub:
    """The server with no faults, the CLI pointed at it, an empty cache, no token, fast retries."""
    from expo_gguf.source import remote

    served.faults.__init__()  # type: ignore[misc]
    served.served.clear()
    served.blob_gets = 0
    served.log.clear()
    monkeypatch.setenv("HF_ENDPOINT", served.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token from this machine
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    return served


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hashes(outdir: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(outdir.glob("*.gguf"))}


def remote_build(outdir: Path, *args: str):  # noqa: ANN201
    return run_cli("build", "--remote", "--sft", SFT, "--rlhf", RLHF, "--outdir", outdir, "--threads", "2", *args)


def shard_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.safetensors"))


def one_line(res, code: int, expected: str) -> None:  # noqa: ANN001
    assert res.exit_code == code, res.output
    lines = res.output.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and expected in lines[-1], res.output
    assert sum(line.startswith("error: ") for line in lines) == 1 and "Traceback" not in res.output


@pytest.mark.slow
def test_download_then_offline_build_matches_remote_build(hub: Hub, pair: Pair, tmp_path: Path) -> None:
    """download fills the HF cache; an offline build (HF_HUB_OFFLINE=1, a separate process) and a
    remote build give the same bytes, for two alphas from one read of each shard."""
    res = run_cli("download", SFT, RLHF)
    assert res.exit_code == 0, res.output
    for repo, folder in ((SFT, pair.sft), (RLHF, pair.rlhf)):
        snap = tmp_path / "cache" / f"models--{repo.replace('/', '--')}" / "snapshots" / hub.commit(repo)
        assert sorted(p.name for p in snap.iterdir()) == sorted(p.name for p in folder.iterdir())
        assert all(sha(snap / p.name) == sha(p) for p in folder.iterdir())
    requests_before = len(hub.log)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    offline = subprocess.run(
        [sys.executable, "-c", "from expo_gguf.cli import main; main()", "build", "--sft", SFT, "--rlhf", RLHF]
        + ["--alpha", "0.3,0.5", "-q", "q8_0,f16", "--outdir", str(tmp_path / "local"), "--threads", "2"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert len(hub.log) == requests_before  # offline means offline

    hub.served.clear()
    res = remote_build(tmp_path / "remote", "--alpha", "0.3,0.5", "-q", "q8_0,f16")
    assert res.exit_code == 0, res.output
    assert f"revision {hub.commit(RLHF)}" in res.output
    local, remote = hashes(tmp_path / "local"), hashes(tmp_path / "remote")
    assert len(remote) == 4 and remote == local
    from expo_gguf.source.checkpoint import HEADER_PROBE

    for repo, folder in ((SFT, pair.sft), (RLHF, pair.rlhf)):
        for name in shard_names(folder):
            size = (folder / name).stat().st_size
            # one read of each shard (and its header probe) for the four outputs
            assert size <= hub.served_bytes(repo, name) <= size + HEADER_PROBE
    reader = gguf.GGUFReader(next((tmp_path / "remote").glob("*.gguf")))
    field = reader.fields["expo.rlhf_revision"]
    assert bytes(field.parts[field.data[0]]).decode() == hub.commit(RLHF)
    assert list((tmp_path / "remote").glob("*.part")) == []


def test_download_preset_then_build_offline(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`download --preset` fetches the preset's two repos; `build` (its defaults) then plans offline."""
    res = run_cli("download", "--preset", "starling-lm-7b-beta")
    assert res.exit_code == 0, res.output
    assert "openchat/openchat-3.5-0106" in res.output and "Nexusflow/Starling-LM-7B-beta" in res.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.log.clear()
    res = run_cli("build", "--dry-run", "--outdir", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "RLHF Nexusflow/Starling-LM-7B-beta" in res.output and hub.log == []


def test_download_refuses_pickle_only_before_downloading(hub: Hub, tmp_path: Path) -> None:
    res = run_cli("download", SFT, "org/pickle-only")
    one_error_line(res, "org/pickle-only: only pickle weights (pytorch_model.bin)")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))
    assert hub.blob_gets == 0 and not any("/resolve/" in line for line in hub.log[-10:] if SFT in line)


def test_build_remote_refuses_pickle_only(hub: Hub, tmp_path: Path) -> None:
    res = run_cli("build", "--remote", "--sft", "org/pickle-only", "--rlhf", RLHF, "--outdir", tmp_path / "out")
    one_error_line(res, "only pickle weights")
    assert not (tmp_path / "out").exists()


def test_dry_run_reads_only_headers(hub: Hub, pair: Pair, tmp_path: Path) -> None:
    from expo_gguf.source.checkpoint import HEADER_PROBE

    res = remote_build(tmp_path / "out", "--dry-run", "-q", "q4_k_m")
    assert res.exit_code == 0, res.output
    assert f"RLHF {RLHF}  (hub, revision {hub.commit(RLHF)})" in res.output
    for repo, folder in ((SFT, pair.sft), (RLHF, pair.rlhf)):
        for name in shard_names(folder):
            assert 0 < hub.served_bytes(repo, name) <= HEADER_PROBE
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dropped_connections_resume_to_the_same_bytes(hub: Hub, tmp_path: Path) -> None:
    """Every 3rd blob request is cut halfway; each transfer resumes from the byte where it stopped."""
    res = remote_build(tmp_path / "clean", "-q", "q8_0")
    assert res.exit_code == 0, res.output
    hub.faults.drop_every = 3
    hub.served.clear()
    res = remote_build(tmp_path / "dropped", "-q", "q8_0")
    assert res.exit_code == 0, res.output
    assert hub.blob_gets >= 6
    assert hashes(tmp_path / "dropped") == hashes(tmp_path / "clean")


def test_corrupted_byte_fails_on_the_hash(hub: Hub, pair: Pair, tmp_path: Path) -> None:
    name = shard_names(pair.sft)[-1]
    hub.faults.corrupt = name
    res = remote_build(tmp_path / "out", "-q", "q8_0")
    one_line(res, 1, f"{SFT}/{name}@{hub.commit(SFT)[:10]}: sha256 mismatch")
    assert not (tmp_path / "out").exists()  # nothing left, not even the folder the build made


def test_missing_shard_is_one_line(hub: Hub, pair: Pair, tmp_path: Path) -> None:
    name = shard_names(pair.rlhf)[0]
    hub.faults.missing = {name}
    res = remote_build(tmp_path / "out", "-q", "q8_0")
    one_error_line(res, f"{RLHF}/{name}@{hub.commit(RLHF)[:10]}: not found on the hub (404)")
    assert not (tmp_path / "out").exists()


def test_token_required(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No token: a 401 that says which repo needs one; a wrong token on a gated repo: 403; the right
    token (HF_TOKEN) builds."""
    hub.faults.token = "hf_right"
    res = remote_build(tmp_path / "out", "-q", "q8_0")
    one_error_line(res, f"{RLHF}: the hub refused access (401)")
    assert "hf auth login" in res.output
    hub.faults.gated = True
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    res = remote_build(tmp_path / "out", "-q", "q8_0")
    one_error_line(res, f"{RLHF}: your token has no access (403)")
    monkeypatch.setenv("HF_TOKEN", "hf_right")
    res = remote_build(tmp_path / "out", "-q", "q8_0")
    assert res.exit_code == 0, res.output


def test_download_needs_the_token_too(hub: Hub) -> None:
    hub.faults.token = "hf_right"
    one_error_line(run_cli("download", SFT), f"{SFT}: the hub refused access (401)")


def test_server_that_stops_answering(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The headers come, then the server accepts the shards' streams and never answers: bounded
    retries, one line with the file and offset, no file left."""
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "0.3")
    hub.faults.hang_streams = True
    res = remote_build(tmp_path / "out", "-q", "q8_0")
    one_line(res, 1, "download failed at byte 0 after 5 tries")
    assert re.search(rf"error: ({SFT}|{RLHF})/model-\d+-of-\d+\.safetensors@[0-9a-f]{{10}}: ", res.output)
    assert not (tmp_path / "out").exists()  # nothing left, not even the folder the build made


def test_offline_refuses_remote(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one_error_line(remote_build(tmp_path / "out"), f"{RLHF}: HF_HUB_OFFLINE is set")
    assert hub.log == []


def test_remote_file_alone(hub: Hub, pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """The byte source by itself: many threads reading chunks out of order within the window, a
    read far behind it (refetched), dropped connections; every byte right and the hash checked."""
    from expo_gguf.source import remote
    from expo_gguf.source.remote_repo import open_remote, session

    for knob, mib in (("BLOCK", 1), ("AHEAD", 2), ("BEHIND", 2)):
        monkeypatch.setattr(remote, knob, mib << 20)
    repo = open_remote(RLHF)
    name = shard_names(pair.rlhf)[0]
    data = (pair.rlhf / name).read_bytes()
    hub.faults.drop_every = 2
    src = remote.RemoteFile(session(), repo.shards[name], 2.0)
    rng = np.random.default_rng(0)
    step = 300_001
    offsets = list(range(0, len(data), step))
    errors: list[BaseException] = []

    def read(chunk: list[int]) -> None:
        try:
            for off in chunk:
                buf = bytearray(min(step, len(data) - off))
                assert src.read_into(off, memoryview(buf)) == len(buf)
                assert buf == data[off : off + len(buf)], off
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    groups = [offsets[i::4] for i in range(4)]
    threads = [threading.Thread(target=read, args=(g,)) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    refetched = src.refetched
    off = int(rng.integers(0, 1000))
    back = bytearray(1000)
    assert src.read_into(off, memoryview(back)) == 1000 and back == data[off : off + 1000]
    src.finish()
    assert src.refetched == refetched + 1000  # far behind the window: a request of its own
    assert hub.served_bytes(RLHF, name) < 2 * len(data)
    src.close()


@pytest.mark.slow
def test_sft_in_another_layout(hub: Hub, pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An SFT checkpoint saved as one file (tensors by name) while RLHF's shards hold them in
    another order: reads the small window no longer holds are fetched again by their own range
    requests; the result is still the local build's, byte for byte."""
    from safetensors.torch import load_file, save_file

    from expo_gguf.source import remote

    from conftest import synthetic

    single = tmp_path / "single"
    single.mkdir()
    tensors = {}
    for shard in sorted(pair.sft.glob("*.safetensors")):
        tensors.update(load_file(shard))
    save_file(tensors, single / "model.safetensors", metadata={"format": "pt"})
    for f in pair.sft.iterdir():
        if not f.name.startswith("model"):
            (single / f.name).write_bytes(f.read_bytes())
    with Hub({"org/single": single, RLHF: pair.rlhf}) as other:
        monkeypatch.setenv("HF_ENDPOINT", other.url)
        for knob, mib in (("BLOCK", 1), ("AHEAD", 1), ("BEHIND", 1)):
            monkeypatch.setattr(remote, knob, mib << 20)
        res = run_cli("build", "--remote", "--sft", "org/single", "--rlhf", RLHF, "--outdir", tmp_path / "remote")
        assert res.exit_code == 0, res.output
        size = (single / "model.safetensors").stat().st_size
        assert other.served_bytes("org/single", "model.safetensors") > size  # some reads came twice
        for repo, folder in (("org/single", single), (RLHF, pair.rlhf)):
            synthetic.fake_hf_cache(tmp_path / "cache", repo, folder, revision=other.commit(repo))
    res = run_cli("build", "--sft", "org/single", "--rlhf", RLHF, "--outdir", tmp_path / "local")
    assert res.exit_code == 0, res.output
    assert hashes(tmp_path / "remote") == hashes(tmp_path / "local") != {}
