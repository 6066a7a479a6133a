"""The reading wing: what a run logged, read back from its ``.wandb`` file (no training process,
no torch). It meets the live wing only at :mod:`gradwandb.keys`."""

from gradwandb.read.run import (
    Finding,
    Histogram,
    LayerMatrix,
    RunLog,
    Table,
    View,
    clear_cache,
    find_run_file,
    read_run,
)

__all__ = [
    "Finding",
    "Histogram",
    "LayerMatrix",
    "RunLog",
    "Table",
    "View",
    "clear_cache",
    "find_run_file",
    "read_run",
]
