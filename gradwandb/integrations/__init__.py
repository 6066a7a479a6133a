"""Callbacks that put :func:`gradwandb.watch` into a training framework with one line.

- :mod:`gradwandb.integrations.lightning`: for PyTorch Lightning
  (``pip install 'gradwandb[lightning]'``)::

      trainer = lightning.Trainer(callbacks=[GradwandbCallback()], logger=WandbLogger())

- :mod:`gradwandb.integrations.huggingface`: for the Hugging Face Trainer
  (``pip install 'gradwandb[huggingface]'``)::

      trainer = transformers.Trainer(model, args, callbacks=[GradwandbCallback()])

Importing this package imports neither framework; each module imports its own and, when it
is missing, says which extra to install.
"""

from __future__ import annotations
