"""The peers' ways of running early exits (per-sample batch-1 loop, run-all-then-mask, batch-level exit).

The implementation lives in the installed package, :mod:`exitnet.bench.baselines`, so that ``exitnet bench`` works
from an installed copy; this file re-exports it for readers of ``benchmarks/``.
"""

from exitnet.bench.baselines import (
    BaselineResult,
    backbone_alone,
    batch_level_exit,
    input_layout,
    per_sample_early_exit,
    run_all_then_mask,
)

__all__ = [
    "BaselineResult",
    "backbone_alone",
    "batch_level_exit",
    "input_layout",
    "per_sample_early_exit",
    "run_all_then_mask",
]
