"""gradwandb: gradient health for PyTorch training, visible on Weights & Biases.

>>> import gradwandb
>>> callable(gradwandb.watch)
True
"""

from gradwandb.activations import ActivationMonitor
from gradwandb.adaptive_clipping import PercentileClip, UnitwiseClip, ValueClip, ZScoreClip
from gradwandb.charts import ChartObserver
from gradwandb.clipping import ClipPolicy, ClipResult, NormClip
from gradwandb.diagnosis import Diagnosis, Finding, Thresholds
from gradwandb.keys import Keys
from gradwandb.record import StepRecord
from gradwandb.recurrent import BPTTMonitor
from gradwandb.sinks import Histogram, Image, MemorySink, Sink, Table
from gradwandb.tracker import StopTraining, Tracker
from gradwandb.watching import unwatch, watch

__version__ = "0.1.0"

__all__ = [
    "ActivationMonitor",
    "BPTTMonitor",
    "ChartObserver",
    "ClipPolicy",
    "ClipResult",
    "Diagnosis",
    "Finding",
    "Histogram",
    "Image",
    "Keys",
    "MemorySink",
    "NormClip",
    "PercentileClip",
    "Sink",
    "StepRecord",
    "StopTraining",
    "Table",
    "Thresholds",
    "Tracker",
    "UnitwiseClip",
    "ValueClip",
    "ZScoreClip",
    "__version__",
    "unwatch",
    "watch",
]
