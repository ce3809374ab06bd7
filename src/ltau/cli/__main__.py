"""``python -m ltau.cli``: the ``ltau`` command."""

import sys

from ltau.cli import main

sys.exit(main())
