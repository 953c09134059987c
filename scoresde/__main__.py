"""``python -m scoresde``: the ``scoresde`` command line (see :mod:`scoresde.cli`)."""

from .cli import main

raise SystemExit(main())
