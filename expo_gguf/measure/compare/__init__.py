"""``compare``: the same prompts through each model, one loaded at a time. The run (``run``), what
is checked before it (``checks``), the prompts (``prompts``), the figures and verdicts
(``metrics``) and the report (``report``).

May import what ``measure`` may, and ``measure.divergence``.
"""

from .checks import Checked, CompareOptions, check_inputs
from .run import Comparison, ModelRun, Reply, compare, run_checked

__all__ = ["Checked", "CompareOptions", "Comparison", "ModelRun", "Reply", "check_inputs", "compare", "run_checked"]
