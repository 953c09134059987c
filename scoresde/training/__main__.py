"""``python -m scoresde.training``: see :mod:`scoresde.training.launch`."""

import sys

from .launch import main

if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    sys.exit(main())
