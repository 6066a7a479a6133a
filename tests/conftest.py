"""Shared fixtures; the environment (W&B offline, temp directories) is set in ../conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: on tiny tensors a thread pool only adds contention on a
    busy 2-core machine. Use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def wandb_run(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start offline W&B runs in ``tmp_path``; each is finished at teardown if still open.

    Call it to get a run: ``run = wandb_run()``; ``run.settings.sync_dir`` is where it lives.
    """
    import wandb

    runs: list[Any] = []

    def start(**kwargs: Any) -> Any:
        run = wandb.init(
            project="gradwandb-tests", dir=str(tmp_path), reinit="create_new", **kwargs
        )
        runs.append(run)
        return run

    yield start
    for run in runs:
        if not getattr(run, "_is_finished", False):
            run.finish()


def read_back(run: Any) -> Any:
    """Finish ``run`` if needed and read it back with W&B's own reader."""
    from gradwandb.read.run import read_run

    if not getattr(run, "_is_finished", False):
        run.finish()
    return read_run(run.settings.sync_dir)
