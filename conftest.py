"""Test-wide set-up, loaded before anything imports wandb: W&B offline, and every W&B and
matplotlib directory inside one temp folder, so tests never touch the home folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_ROOT = Path(tempfile.mkdtemp(prefix="gradwandb-tests-"))
for _var, _sub in (
    ("WANDB_DIR", "wandb"),
    ("WANDB_CACHE_DIR", "cache"),
    ("WANDB_DATA_DIR", "data"),
    ("WANDB_CONFIG_DIR", "config"),
    ("MPLCONFIGDIR", "mpl"),
):
    os.environ[_var] = str(_ROOT / _sub)
    (_ROOT / _sub).mkdir(parents=True, exist_ok=True)
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["WANDB_ERROR_REPORTING"] = "false"
os.environ["WANDB_CONSOLE"] = "off"
os.environ["WANDB_DISABLE_GIT"] = "true"

# The doctests of an optional integration need its framework (gradwandb[lightning],
# gradwandb[huggingface]); without it, the module is not collected (its tests skip by name).
import importlib.util as _util  # noqa: E402

collect_ignore = [
    f"gradwandb/integrations/{module}.py"
    for module, framework in (("lightning", "lightning"), ("huggingface", "transformers"))
    if _util.find_spec(framework) is None
]
