"""``python -m aioflow`` is the ``aioflow`` command."""

import sys

from aioflow._core.cli import main

sys.exit(main())
