"""``python -m connecteur``: the same as the ``connecteur`` command."""

import sys

from .cli import main

sys.exit(main())
