"""``expo-gguf info``: what a GGUF file holds, read with gguf-py (header only, no weights)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from ..errors import ExpoError
from .header import TensorEntry, read_gguf_header

K = gguf.Keys.Tokenizer
SPECIALS = {
    "bos": K.BOS_ID,
    "eos": K.EOS_ID,
    "eot": K.EOT_ID,
    "eom": K.EOM_ID,
    "unk": K.UNK_ID,
    "pad": K.PAD_ID,
    "sep": K.SEP_ID,
}


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    nbytes: int
    architecture: str
    name: str | None
    file_type: str | None
    base_models: list[str]
    expo: dict[str, object]
    tensor_types: dict[str, int]
    n_tensors: int
    context_length: int | None
    block_count: int | None
    kv_width: int | None  # n_head_kv * head_dim: what one token costs per layer in the KV cache
    special_tokens: dict[str, tuple[int, str]]
    chat_template: str | None
    n_vocab: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    imatrix: dict[str, object] = field(default_factory=dict)  # quantize.imatrix.*, as llama-quantize writes them

    def kv_cache_bytes(self, n_cells: int) -> int:
        """An F16 K and V cache of ``n_cells`` cells: 2 x layers x cells x KV heads x head size x 2 bytes."""
        return 2 * 2 * (self.block_count or 0) * n_cells * (self.kv_width or 0)

    def ram_estimate(self, n_ctx: int) -> int:
        """Weights plus an F16 K and V cache for ``n_ctx`` tokens, plus ~10% compute buffers."""
        return int(self.nbytes * 1.1) + self.kv_cache_bytes(n_ctx)

    def to_json(self) -> dict[str, object]:
        """What ``info --json`` prints: every field, special tokens as objects, the RAM estimate
        at the context ``info`` shows it for."""
        n = min(4096, self.context_length) if self.context_length else None
        return {
            "path": str(self.path),
            "bytes": self.nbytes,
            "architecture": self.architecture,
            "name": self.name,
            "file_type": self.file_type,
            "base_models": list(self.base_models),
            "expo": dict(self.expo),
            "n_tensors": self.n_tensors,
            "tensor_types": dict(sorted(self.tensor_types.items())),
            "context_length": self.context_length,
            "block_count": self.block_count,
            "n_vocab": self.n_vocab,
            "special_tokens": {k: {"id": i, "text": t} for k, (i, t) in self.special_tokens.items()},
            "ram_estimate": {"n_ctx": n, "bytes": self.ram_estimate(n)} if n else None,
            "chat_template": self.chat_template,
        }


def describe(path: Path) -> GGUFInfo:
    """From the checked header alone: instant even for a 7B file (gguf-py's full parse is ~1 s)."""
    header = read_gguf_header(path)
    try:
        return _describe(Path(path), header.values, header.tensors)
    except (ValueError, TypeError, IndexError, KeyError, OverflowError) as e:  # fields of the wrong type
        raise ExpoError(f"{path} has damaged metadata ({type(e).__name__}: {str(e)[:80]})") from None


def file_type_name(file_type: object) -> str:
    """``general.file_type`` as llama.cpp names it (Q8_0, Q4_K_M, ...), from the header's int or
    the string llama.cpp's metadata gives; one we do not know keeps its number."""
    try:
        return gguf.LlamaFileType(int(str(file_type))).name.removeprefix("MOSTLY_")
    except ValueError:
        return "unknown" if file_type in (None, "") else str(file_type)


def _describe(path: Path, kv: dict[str, object], tensors: list[TensorEntry]) -> GGUFInfo:
    def get(key: str) -> Any:  # noqa: ANN401 (GGUF values are of any type)
        return kv.get(key)

    arch = get(gguf.Keys.General.ARCHITECTURE) or "?"
    ft = get(gguf.Keys.General.FILE_TYPE)
    file_type = file_type_name(ft) if ft is not None else None
    bases = []
    for i in range(get(gguf.Keys.General.BASE_MODEL_COUNT) or 0):
        org = get(gguf.Keys.General.BASE_MODEL_ORGANIZATION.format(id=i))
        nm = get(gguf.Keys.General.BASE_MODEL_NAME.format(id=i)) or "?"
        bases.append(f"{org}/{nm}" if org else nm)
    tokens = get(gguf.Keys.Tokenizer.LIST)
    tokens = tokens if isinstance(tokens, list) else []
    specials = {}
    for kind, key in SPECIALS.items():
        tid = get(key)
        if isinstance(tid, int):
            specials[kind] = (tid, tokens[tid] if 0 <= tid < len(tokens) else "?")
    n_head = get(f"{arch}.attention.head_count")
    n_kv = get(f"{arch}.attention.head_count_kv") or n_head
    n_embd = get(f"{arch}.embedding_length")
    head_dim = get(f"{arch}.attention.key_length") or (n_embd // n_head if n_embd and n_head else None)
    return GGUFInfo(
        path=path,
        nbytes=path.stat().st_size,
        architecture=arch,
        name=get(gguf.Keys.General.NAME),
        file_type=file_type,
        base_models=bases,
        expo={k.removeprefix("expo."): v for k, v in kv.items() if k.startswith("expo.")},
        tensor_types=dict(Counter(gguf.GGMLQuantizationType(t.ggml_type).name for t in tensors)),
        n_tensors=len(tensors),
        context_length=get(f"{arch}.context_length"),
        block_count=get(f"{arch}.block_count"),
        kv_width=(n_kv * head_dim) if n_kv and head_dim else None,
        special_tokens=specials,
        chat_template=get(gguf.Keys.Tokenizer.CHAT_TEMPLATE),
        n_vocab=len(tokens),
        imatrix={k.removeprefix("quantize.imatrix."): v for k, v in kv.items() if k.startswith("quantize.imatrix.")},
    )
