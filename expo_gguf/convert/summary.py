"""A build as plain data for ``build --json``: the plan (every output with its planned size), or the
files written (path, quant, alpha, bytes, sha256, seconds)."""

from __future__ import annotations

from .._fs import BuiltFile
from .plan import Plan


def plan_json(plan: Plan) -> dict[str, object]:
    """``build --dry-run --json``: the plan, every output with its planned size in bytes."""
    r = plan.request
    return {
        "name": plan.name,
        "alphas": list(r.alphas),
        "math": plan.math,
        "architecture": plan.hparams.architecture,
        "tensors": len(plan.tensors),
        "rlhf": {"label": plan.rlhf.label, "path": str(plan.rlhf.path), "revision": plan.rlhf.revision},
        "sft": {"label": plan.sft.label, "path": str(plan.sft.path), "revision": plan.sft.revision},
        "outdir": str(r.outdir),
        "threads": r.threads,
        "input_bytes": plan.input_bytes,
        "peak_ram_bytes": plan.peak_ram,
        "disk_needed_bytes": plan.disk_needed,
        "disk_free_bytes": plan.disk_free,
        "outputs": [
            {
                "path": str(o.path),
                "quant": o.quant.label,
                "alpha": o.alpha,
                "bytes": o.nbytes,
                "estimate": o.estimate,
                "written_by": "llama.cpp" if o.types is None else "stream pass",
                "temporary": o.temporary,
            }
            for o in plan.outputs
        ],
        "existing": [str(p) for p in plan.existing],
        "unwritable": plan.unwritable,
        "warnings": list(plan.warnings),
    }


def built_json(plan: Plan, built: list[BuiltFile], seconds: float) -> dict[str, object]:
    """``build --json``: what was written, for scripts."""
    alpha = {o.path: o.alpha for o in plan.outputs}
    return {
        "alphas": list(plan.request.alphas),
        "seconds": round(seconds, 3),
        "files": [
            {
                "path": str(b.path),
                "quant": b.quant,
                "alpha": alpha.get(b.path),
                "bytes": b.nbytes,
                "sha256": b.sha256,
                "seconds": round(b.seconds, 3),
            }
            for b in built
        ],
    }
