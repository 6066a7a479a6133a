"""The W&B sink: writes rows into a run so that the grad metrics and the user's own ``run.log``
metrics share one optimizer-step axis.

How rows are placed. Each row is logged with ``commit=False`` at an explicit W&B step, chosen
as the step the run would write next, unless this sink's previous row is still waiting there
(the user logged nothing since), in which case the next one. So:

- a user who logs once per optimizer step, after ``optimizer.step()``, gets one row per step
  holding both their metrics and ours, and W&B's ``_step`` equals ``gradwandb/step``;
- a user who logs rarely or never still gets one row per optimizer step;
- a user who logs with ``step=k`` (the index of the step just taken) gets ours in row ``k``;
- the last row is a real step's row, so ``finish()`` adds no trailing step, and no row is ever
  sent behind the run's current step, where W&B would drop it.

Every row also carries ``gradwandb/step``, the exact optimizer step, whatever the W&B step is.

Alerts go to ``run.alert`` with a wait of :data:`ALERT_WAIT_S` seconds: W&B then sends no
second alert with the same title within that time (the tracker already sends each kind of
finding at most once per layer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gradwandb.live.sinks import Histogram, Image, Table, Value

ALERT_WAIT_S = 300  # W&B's wait_duration: no second alert of the same title within 5 minutes


class WandbSink:
    """Logs rows to the W&B run it was given (never to whatever ``wandb.run`` is later)."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self._last_step: int | None = None  # optimizer step of the row we wrote last
        self._last_target: int | None = None  # the W&B step we wrote it at

    def _next_wandb_step(self) -> int:
        local = getattr(self.run, "_local_step", None)  # in-process, no round trip
        return int(local) if isinstance(local, int) else int(self.run.step)

    def _target(self, step: int) -> int:
        current = self._next_wandb_step()
        last = self._last_target
        if last is None or current > last:
            return current  # the user committed since our last row: join the row now open
        if step == self._last_step:
            return last  # more of the same optimizer step: merge
        return last + 1  # our previous row is still open: move it out, open the next

    def log(self, row: Mapping[str, Value], step: int) -> None:
        target = self._target(step)
        self.run.log({k: _to_wandb(v) for k, v in row.items()}, step=target, commit=False)
        self._last_step, self._last_target = step, target

    def summary(self, values: Mapping[str, Any]) -> None:
        self.run.summary.update({k: _to_wandb(v) for k, v in values.items()})

    def alert(self, title: str, text: str, level: str) -> None:
        self.run.alert(title=title, text=text, level=level, wait_duration=ALERT_WAIT_S)

    def alive(self) -> bool:
        return not getattr(self.run, "_is_finished", False)

    def on_finish(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the run finishes, before it closes (W&B's teardown hook).

        Without that hook (another wandb version) :meth:`alive` still catches the finish at
        the next step.
        """
        try:
            from wandb.sdk.wandb_run import TeardownHook, TeardownStage

            self.run._teardown_hooks.append(TeardownHook(callback, TeardownStage.EARLY))
        except (ImportError, AttributeError):
            pass

    def close(self) -> None:
        pass


def _to_wandb(value: Any) -> Any:
    import numpy as np
    import wandb

    if isinstance(value, Histogram):
        return wandb.Histogram(np_histogram=(np.asarray(value.counts), np.asarray(value.edges)))
    if isinstance(value, Image):
        import io

        from PIL import Image as PILImage

        return wandb.Image(PILImage.open(io.BytesIO(value.png)), caption=value.caption)
    if isinstance(value, Table):
        return wandb.Table(columns=list(value.columns), data=[list(r) for r in value.rows])
    return value
