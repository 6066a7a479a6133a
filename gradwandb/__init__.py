"""gradwandb: gradient health for PyTorch training, visible on Weights & Biases.

>>> import gradwandb
>>> callable(gradwandb.watch)
True

The names below load on first use: ``import gradwandb`` alone imports neither torch nor
matplotlib, so the reading wing (``gradwandb.read_run``, reports) works without the live one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "ActivationMonitor": "gradwandb.live.monitors.activations",
    "BPTTMonitor": "gradwandb.live.monitors.through_time",
    "ChartObserver": "gradwandb.live.monitors.charts",
    "ClipPolicy": "gradwandb.live.clip.policy",
    "ClipResult": "gradwandb.live.clip.policy",
    "Diagnosis": "gradwandb.live.diagnosis",
    "Finding": "gradwandb.live.diagnosis",
    "GradientView": "gradwandb.live.stats.statistic",
    "Histogram": "gradwandb.live.sinks",
    "Image": "gradwandb.live.sinks",
    "Keys": "gradwandb.keys",
    "MemorySink": "gradwandb.live.sinks",
    "NormClip": "gradwandb.live.clip.policy",
    "PercentileClip": "gradwandb.live.clip.adaptive",
    "RunLog": "gradwandb.read.run",
    "Sink": "gradwandb.live.sinks",
    "Statistic": "gradwandb.live.stats.statistic",
    "StepRecord": "gradwandb.live.record",
    "StopTraining": "gradwandb.live.shield",
    "Table": "gradwandb.live.sinks",
    "Thresholds": "gradwandb.live.diagnosis",
    "Tracker": "gradwandb.live.tracker",
    "UnitwiseClip": "gradwandb.live.clip.adaptive",
    "ValueClip": "gradwandb.live.clip.adaptive",
    "ZScoreClip": "gradwandb.live.clip.adaptive",
    "build_wandb_report": "gradwandb.report.publish",
    "read_run": "gradwandb.read.run",
    "unwatch": "gradwandb.live.watching",
    "watch": "gradwandb.live.watching",
    "write_report": "gradwandb.report.render",
    "write_sweep_report": "gradwandb.report.sweep",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gradwandb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from gradwandb.keys import (
        Keys as Keys,
    )
    from gradwandb.live.clip.adaptive import (
        PercentileClip as PercentileClip,
    )
    from gradwandb.live.clip.adaptive import (
        UnitwiseClip as UnitwiseClip,
    )
    from gradwandb.live.clip.adaptive import (
        ValueClip as ValueClip,
    )
    from gradwandb.live.clip.adaptive import (
        ZScoreClip as ZScoreClip,
    )
    from gradwandb.live.clip.policy import (
        ClipPolicy as ClipPolicy,
    )
    from gradwandb.live.clip.policy import (
        ClipResult as ClipResult,
    )
    from gradwandb.live.clip.policy import (
        NormClip as NormClip,
    )
    from gradwandb.live.diagnosis import (
        Diagnosis as Diagnosis,
    )
    from gradwandb.live.diagnosis import (
        Finding as Finding,
    )
    from gradwandb.live.diagnosis import (
        Thresholds as Thresholds,
    )
    from gradwandb.live.monitors.activations import (
        ActivationMonitor as ActivationMonitor,
    )
    from gradwandb.live.monitors.charts import (
        ChartObserver as ChartObserver,
    )
    from gradwandb.live.monitors.through_time import (
        BPTTMonitor as BPTTMonitor,
    )
    from gradwandb.live.record import (
        StepRecord as StepRecord,
    )
    from gradwandb.live.shield import (
        StopTraining as StopTraining,
    )
    from gradwandb.live.sinks import (
        Histogram as Histogram,
    )
    from gradwandb.live.sinks import (
        Image as Image,
    )
    from gradwandb.live.sinks import (
        MemorySink as MemorySink,
    )
    from gradwandb.live.sinks import (
        Sink as Sink,
    )
    from gradwandb.live.sinks import (
        Table as Table,
    )
    from gradwandb.live.stats.statistic import (
        GradientView as GradientView,
    )
    from gradwandb.live.stats.statistic import (
        Statistic as Statistic,
    )
    from gradwandb.live.tracker import (
        Tracker as Tracker,
    )
    from gradwandb.live.watching import (
        unwatch as unwatch,
    )
    from gradwandb.live.watching import (
        watch as watch,
    )
    from gradwandb.read.run import (
        RunLog as RunLog,
    )
    from gradwandb.read.run import (
        read_run as read_run,
    )
    from gradwandb.report.publish import (
        build_wandb_report as build_wandb_report,
    )
    from gradwandb.report.render import (
        write_report as write_report,
    )
    from gradwandb.report.sweep import (
        write_sweep_report as write_sweep_report,
    )
