"""``python -m aioflow`` is the ``aioflow`` command."""

import sys

from aioflow.cli import main

sys.exit(main())
