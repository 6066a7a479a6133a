"""``python -m gradwandb``: the same as the ``gradwandb`` command."""

from gradwandb.cli import main

raise SystemExit(main())
