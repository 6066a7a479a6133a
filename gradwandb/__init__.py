"""gradwandb: gradient health for PyTorch training, visible on Weights & Biases.

>>> import gradwandb
>>> callable(gradwandb.watch)
True
"""

from gradwandb.keys import Keys
from gradwandb.live.clip.adaptive import PercentileClip, UnitwiseClip, ValueClip, ZScoreClip
from gradwandb.live.clip.policy import ClipPolicy, ClipResult, NormClip
from gradwandb.live.diagnosis import Diagnosis, Finding, Thresholds
from gradwandb.live.monitors.activations import ActivationMonitor
from gradwandb.live.monitors.charts import ChartObserver
from gradwandb.live.monitors.through_time import BPTTMonitor
from gradwandb.live.record import StepRecord
from gradwandb.live.shield import StopTraining
from gradwandb.live.sinks import Histogram, Image, MemorySink, Sink, Table
from gradwandb.live.stats.statistic import GradientView, Statistic
from gradwandb.live.tracker import Tracker
from gradwandb.live.watching import unwatch, watch

__version__ = "0.1.0"

__all__ = [
    "ActivationMonitor",
    "BPTTMonitor",
    "ChartObserver",
    "ClipPolicy",
    "ClipResult",
    "Diagnosis",
    "Finding",
    "GradientView",
    "Histogram",
    "Image",
    "Keys",
    "MemorySink",
    "NormClip",
    "PercentileClip",
    "Sink",
    "Statistic",
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
