"""Runs and sweeps on a W&B server, read through ``wandb.Api`` into the same shapes the
offline readers give: a :class:`~gradwandb.read.run.RunLog` for a run, a
:class:`~gradwandb.report.sweep.SweepData` for a sweep.

The seam is small on purpose: :func:`run_log` needs only what ``wandb.Api().run(path)``
returns (``id``, ``state``, ``config``, ``summary``, ``scan_history()``, ``file(name)``), so
tests hand it a stand-in object of that shape and no server is needed. Logged tables (the
through-time curves, the parameter table) are fetched on first use with ``run.file(path)``
into a scratch folder, where :class:`RunLog` finds them as it finds an offline run's files.

    log = online_run("my-team/translate/abc123")          # needs `wandb login`
    log.global_series("global_norm")
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from gradwandb.read.run import RunLog

__all__ = ["RUN_PATH", "ApiRun", "OnlineRunLog", "is_run_path", "online_run", "run_log"]

RUN_PATH = re.compile(r"[\w.-]+/[\w.-]+/[\w.-]+\Z")  # entity/project/run_id


class ApiRun(Protocol):
    """What :func:`run_log` uses of a ``wandb.apis.public.Run``."""

    id: str
    state: str
    config: Mapping[str, Any]
    summary: Any

    def scan_history(self) -> Iterable[Mapping[str, Any]]: ...

    def file(self, name: str) -> Any: ...


class OnlineRunLog(RunLog):
    """A :class:`RunLog` read from a server; media files are downloaded when first asked."""

    def __init__(self, api_run: ApiRun, folder: Path, **parts: Any) -> None:
        self._api_run = api_run
        super().__init__(path=folder / f"{api_run.id}.wandb", **parts)

    def media_path(self, value: Any) -> Path | None:
        path = super().media_path(value)
        if path is None or path.exists():
            return path
        stored = str(value["path"])
        try:
            self._api_run.file(stored).download(root=str(self.run_dir / "files"), exist_ok=True)
        except Exception:  # a file the server does not have reads as no table
            return None
        return path


def is_run_path(text: str) -> bool:
    """Whether ``text`` has the shape ``entity/project/run_id``.

    >>> is_run_path("team/translate/abc123"), is_run_path("wandb/offline-run-1-abc")
    (True, False)
    """
    return bool(RUN_PATH.match(text))


def run_log(api_run: ApiRun, folder: str | Path | None = None) -> OnlineRunLog:
    """The :class:`RunLog` of a run object as ``wandb.Api().run(path)`` gives it: its whole
    history (``scan_history``), summary and config; ``complete`` when its state is
    ``finished``. ``folder`` holds downloaded tables (default: a new temporary folder)."""
    where = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="gradwandb-"))
    history = [dict(row) for row in api_run.scan_history()]
    history.sort(key=lambda row: int(row.get("_step", 0)))
    summary = _plain(api_run.summary)
    config = {k: _plain(v) for k, v in dict(api_run.config).items() if not k.startswith("_")}
    return OnlineRunLog(
        api_run,
        where,
        history=history,
        summary=summary if isinstance(summary, dict) else {},
        config=config,
        complete=str(getattr(api_run, "state", "")) == "finished",
        name=str(getattr(api_run, "name", "") or "") or None,
    )


def online_run(path: str, api: Any = None, folder: str | Path | None = None) -> OnlineRunLog:
    """Read ``entity/project/run_id`` from W&B (``api``: a ``wandb.Api``, made if None)."""
    return run_log(_api(api).run(path), folder)


def _api(api: Any) -> Any:
    if api is not None:
        return api
    import wandb

    return wandb.Api()


def _plain(value: Any) -> Any:
    """W&B's summary and config objects as plain dicts and lists."""
    if hasattr(value, "_json_dict"):
        value = value._json_dict
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
