"""What a tracker was asked to do, as plain data for the run summary (``gradwandb/settings``).

A reader tells "not logged because it was off" from "no such layer" with it.

>>> describe(log_every=1, layers_every=None, hist_every=lambda step: False, clip=1.0)
{'log_every': 1, 'layers_every': None, 'hist_every': 'custom', 'clip': 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _plain(value: Any) -> Any:
    """A value W&B's summary stores as it is: numbers, strings, lists; else a description."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    if callable(value) and not hasattr(value, "state_dict"):
        return "custom"
    return repr(value)


def describe(**settings: Any) -> dict[str, Any]:
    """Each setting as plain data: an interval as its int (or ``"custom"`` for a callable),
    a policy as its repr, a list as a list."""
    return {name: _plain(value) for name, value in settings.items()}
