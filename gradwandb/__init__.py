"""gradwandb: gradient health for PyTorch training, visible on Weights & Biases.

>>> import gradwandb
>>> callable(gradwandb.watch)
True
"""

from gradwandb.clipping import ClipPolicy, ClipResult, NormClip
from gradwandb.keys import Keys
from gradwandb.record import StepRecord
from gradwandb.sinks import Histogram, MemorySink, Sink, Table
from gradwandb.tracker import StopTraining, Tracker
from gradwandb.watching import unwatch, watch

__version__ = "0.1.0"

__all__ = [
    "ClipPolicy",
    "ClipResult",
    "Histogram",
    "Keys",
    "MemorySink",
    "NormClip",
    "Sink",
    "StepRecord",
    "StopTraining",
    "Table",
    "Tracker",
    "__version__",
    "unwatch",
    "watch",
]
