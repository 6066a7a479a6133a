"""Reports: what runs and sweeps logged, as one self-contained HTML page (offline, no
account) or as a W&B Report for a team.

The modules follow the data flow: :mod:`~gradwandb.report.sources` and
:mod:`~gradwandb.report.online` read runs (offline directories, or W&B through
``wandb.Api``), :mod:`~gradwandb.report.downsample` keeps long runs light,
:mod:`~gradwandb.report.sections` turns a run into page sections (drawn with
:mod:`gradwandb.plots`), :mod:`~gradwandb.report.html` assembles and escapes the page,
:mod:`~gradwandb.report.render` and :mod:`~gradwandb.report.sweep` write run and sweep
pages, and :mod:`~gradwandb.report.publish` builds and saves the W&B Report.
"""

from gradwandb.report.publish import PublishError, build_wandb_report, save_report
from gradwandb.report.render import render_report, write_report
from gradwandb.report.sources import ReportError
from gradwandb.report.sweep import render_sweep_report, write_sweep_report

__all__ = [
    "PublishError",
    "ReportError",
    "build_wandb_report",
    "render_report",
    "render_sweep_report",
    "save_report",
    "write_report",
    "write_sweep_report",
]
