"""``python -m rick_core`` is the ``rick`` command."""

import sys

from rick_core.cli import main

sys.exit(main())
