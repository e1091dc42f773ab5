"""Fuzz the readers of untrusted files: the property is "an ExpoError or a correct result, nothing else".

    python scripts/fuzz.py --cases 100000            # the long run; prints cases, failures, time
    python scripts/fuzz.py --cases 2000 --target gguf

Cases mutate REAL files made by the fixture generator (safetensors headers, the shard index,
config.json, tokenizer_config.json) and a real small GGUF written by gguf-py. Shards are sparse
copies (header + a hole), so a case costs milliseconds. tests/test_fuzz.py drives the same
targets through hypothesis with a small budget on every `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from expo_gguf.errors import ExpoError  # noqa: E402

NASTY = [
    None,
    True,
    -1,
    0,
    2**31,
    2**64,
    -(2**63),
    1e308,
    float("nan"),
    "",
    "x",
    "../../etc/passwd",
    "/etc/passwd",
    "\udcff",
    [],
    {},
    [[[]]],
    {"a": {}},
    [1, 2, 3],
    ["BF16"],
    "I64",
    "F8_E4M3",
]


def mutate_json(value: object, rng: random.Random, depth: int = 0) -> object:
    """Change one thing somewhere in a JSON value: a leaf, a key, or the shape of a container."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        out = dict(value)
        roll = rng.random()
        if roll < 0.1:
            del out[key]
        elif roll < 0.2:
            out[rng.choice(["__metadata__", key + "x", ""])] = out.pop(key)
        else:
            out[key] = mutate_json(value[key], rng, depth + 1)
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        out = list(value)
        i = rng.randrange(len(out))
        roll = rng.random()
        if roll < 0.15:
            del out[i]
        elif roll < 0.25:
            out.append(out[i])
        else:
            out[i] = mutate_json(out[i], rng, depth + 1)
        return out
    if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.5:
        return value + rng.choice([-1, 1, -value, value, 7, 2**40])
    return rng.choice(NASTY)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    roll = rng.random()
    if roll < 0.3 and b:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif roll < 0.5:
        del b[rng.randrange(len(b) + 1) :]
    elif roll < 0.7 and b:
        i = rng.randrange(len(b))
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif roll < 0.85:
        b = bytearray(b"[" * rng.randint(1000, 100000) + b"]" * rng.randint(0, 10))
    else:
        b[0:0] = b"\xff\xfe"
    return bytes(b)


def _json_text(obj: object) -> bytes:
    return json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass")


class Target:
    """One file kind: a pristine copy, a way to damage it, and the reader that must cope."""

    name = ""

    def __init__(self, work: Path, pair: tuple[Path, Path]) -> None:
        self.work, self.sft, self.rlhf = work, *pair
        work.mkdir(parents=True, exist_ok=True)

    def case(self, rng: random.Random) -> Callable[[], object]:
        raise NotImplementedError


def sparse_copy(src: Path, dst: Path) -> None:
    """A checkpoint folder whose shards keep their headers but hold a hole instead of weights."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                head = fh.read(n)
            with open(dst / f.name, "wb") as out:
                out.write(n.to_bytes(8, "little") + head)
                out.truncate(f.stat().st_size)
        else:
            shutil.copy(f, dst / f.name)


class HeaderTarget(Target):
    name = "safetensors"

    def case(self, rng: random.Random) -> Callable[[], object]:
        from expo_gguf.source.checkpoint import read_header

        src = rng.choice(sorted(self.rlhf.glob("*.safetensors")))
        with open(src, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        size = src.stat().st_size
        if rng.random() < 0.7:
            head = _json_text(mutate_json(header, rng))
        else:
            head = mutate_bytes(json.dumps(header).encode(), rng)
        length = len(head) if rng.random() < 0.8 else rng.choice([0, 7, len(head) + 1, 2**40, 2**64 - 1])
        path = self.work / "shard.safetensors"
        with open(path, "wb") as out:
            out.write(length.to_bytes(8, "little") + head)
            out.truncate(max(size + rng.choice([0, 0, -1000, 1000]), 8 + len(head)) if rng.random() < 0.9 else 4)

        def run() -> object:
            refs = read_header(path)
            real = path.stat().st_size
            assert all(0 <= r.offset and r.offset + r.nbytes <= real for r in refs.values()), "read outside the file"
            return refs

        return run


class CheckpointTarget(Target):
    """The index, config.json and tokenizer_config.json, through the whole planner."""

    name = "checkpoint"

    def __init__(self, work: Path, pair: tuple[Path, Path]) -> None:
        super().__init__(work, pair)
        self.base = work / "base"
        if not self.base.exists():
            sparse_copy(self.sft, self.base / "sft")
            sparse_copy(self.rlhf, self.base / "rlhf")

    def case(self, rng: random.Random) -> Callable[[], object]:
        from expo_gguf.convert.plan import BuildRequest, make_plan
        from expo_gguf.quant.types import QUANTS

        case = self.work / "case"
        shutil.rmtree(case, ignore_errors=True)
        shutil.copytree(self.base, case, copy_function=os.link)
        side = rng.choice(["sft", "rlhf"])
        fname = rng.choice(
            ["model.safetensors.index.json", "config.json", "tokenizer_config.json", "added_tokens.json"]
        )
        target = case / side / fname
        target.unlink()  # a hard link to the pristine copy: replace, never write through
        original = json.loads((self.base / side / fname).read_text())
        text = (
            _json_text(mutate_json(original, rng)) if rng.random() < 0.85 else mutate_bytes(_json_text(original), rng)
        )
        target.write_bytes(text)
        req = BuildRequest(
            str(case / "sft"), str(case / "rlhf"), (0.5,), (QUANTS["q8_0"],), self.work / "out", threads=1
        )
        return lambda: make_plan(req)


class GGUFTarget(Target):
    name = "gguf"

    def __init__(self, work: Path, pair: tuple[Path, Path]) -> None:
        super().__init__(work, pair)
        import gguf
        import numpy as np

        self.good = work / "small.gguf"
        w = gguf.GGUFWriter(self.good, "llama")
        w.add_block_count(1)
        w.add_context_length(64)
        w.add_token_list([b"<unk>", b"<s>", b"</s>", b"a", b"b"])
        w.add_token_types([2, 3, 3, 1, 1])
        w.add_eos_token_id(2)
        w.add_chat_template("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
        w.add_tensor("token_embd.weight", np.ones((5, 32), np.float32))
        w.add_tensor("output_norm.weight", np.ones(32, np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    def case(self, rng: random.Random) -> Callable[[], object]:
        from expo_gguf.gguf_file.info import describe

        data = self.good.read_bytes()
        head, tail = data[:512], data[512:]
        roll = rng.random()
        if roll < 0.6:
            data = mutate_bytes(head, rng) + tail
        elif roll < 0.8:
            data = data[: rng.randrange(len(data))]
        else:  # an absurd count or length at a field boundary
            i = rng.choice([8, 16]) if rng.random() < 0.6 else rng.randrange(24, 400)
            data = data[:i] + rng.choice([2**63, 2**32, 2**64 - 1, 10**9]).to_bytes(8, "little") + data[i + 8 :]
        path = self.work / "case.gguf"
        path.write_bytes(data)
        return lambda: describe(path)


def _byte_level_alphabet() -> list[str]:
    """GPT-2's bytes-to-unicode map: the 256 single-byte tokens of a byte-level BPE."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


class TokenizerTarget(Target):
    """A small Llama-3-style tokenizer.json (byte-level BPE, llama-bpe pre-tokenizer, specials, an
    eos list in generation_config.json, a template file), through load_vocab."""

    name = "tokenizer"
    SIZE = 264

    def __init__(self, work: Path, pair: tuple[Path, Path]) -> None:
        super().__init__(work, pair)
        from expo_gguf.source.vocab_bpe import LLAMA3_REGEX

        alphabet = _byte_level_alphabet()
        vocab = {t: i for i, t in enumerate(alphabet)} | {"Ġt": 256, "he": 257, "Ġthe": 258}
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|my_end|>"]
        added = [{"id": 259 + i, "content": c, "special": True, "normalized": False} for i, c in enumerate(specials)]
        self.files = {
            "tokenizer.json": {
                "version": "1.0",
                "added_tokens": added,
                "normalizer": None,
                "pre_tokenizer": {
                    "type": "Sequence",
                    "pretokenizers": [
                        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
                        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
                    ],
                },
                "post_processor": {
                    "type": "TemplateProcessing",
                    "single": [
                        {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                    ],
                },
                "decoder": {"type": "ByteLevel"},
                "model": {
                    "type": "BPE",
                    "byte_fallback": False,
                    "ignore_merges": True,
                    "vocab": vocab,
                    "merges": ["Ġ t", ["h", "e"], "Ġt he"],
                },
            },
            "tokenizer_config.json": {
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|eot_id|>",
                "added_tokens_decoder": {str(a["id"]): a for a in added},
            },
            "generation_config.json": {"eos_token_id": [260, 261, 262]},
        }
        self.template = b"{% for m in messages %}{{ m['content'] }}<|eot_id|>{% endfor %}"

    def case(self, rng: random.Random) -> Callable[[], object]:
        from expo_gguf.source.vocab import load_vocab

        case = self.work / "case"
        shutil.rmtree(case, ignore_errors=True)
        case.mkdir(parents=True)
        victim = rng.choice([*self.files, "chat_template.jinja"])
        for name, obj in self.files.items():
            text = _json_text(obj)
            if name == victim:
                text = _json_text(mutate_json(obj, rng)) if rng.random() < 0.85 else mutate_bytes(text, rng)
            (case / name).write_bytes(text)
        (case / "chat_template.jinja").write_bytes(
            mutate_bytes(self.template, rng) if victim == "chat_template.jinja" else self.template
        )

        def run() -> object:
            vocab = load_vocab(case, self.SIZE)
            assert len(vocab.tokens) == len(vocab.types) == self.SIZE, "vocab size differs from the embedding rows"
            assert all(0 <= t < self.SIZE for t in vocab.special_ids.values()), "special id out of range"
            return vocab

        return run


TARGETS = {t.name: t for t in (HeaderTarget, CheckpointTarget, GGUFTarget, TokenizerTarget)}


def run_case(fn: Callable[[], object]) -> str | None:
    """None when the property holds; else a short signature of the failure."""
    try:
        fn()
    except ExpoError:
        return None
    except Exception as e:  # noqa: BLE001 (anything else is the bug we hunt)
        frame = traceback.extract_tb(e.__traceback__)[-1]
        return f"{type(e).__name__} at {Path(frame.filename).name}:{frame.lineno}: {str(e)[:80]}"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/expo-fuzz"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_synthetic_pair import make_pair

    shutil.rmtree(args.work, ignore_errors=True)
    pair = make_pair(args.work / "pair", "tiny", 0)
    names = list(TARGETS) if args.target == "all" else [args.target]
    targets = [TARGETS[n](args.work / n, pair) for n in names]
    rng, failures, counts = random.Random(args.seed), Counter(), Counter()
    t0 = time.perf_counter()
    for i in range(args.cases):
        target = targets[i % len(targets)]
        counts[target.name] += 1
        sig = run_case(target.case(rng))
        if sig:
            failures[f"{target.name}: {sig}"] += 1
    secs = time.perf_counter() - t0
    print(f"cases: {sum(counts.values())} ({', '.join(f'{k} {v}' for k, v in counts.items())}) in {secs:.0f} s")
    print(f"distinct failures: {len(failures)}")
    for sig, n in failures.most_common():
        print(f"  {n:6d}  {sig}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
