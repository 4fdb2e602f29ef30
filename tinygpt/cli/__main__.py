"""``python -m tinygpt.cli``: the ``tinygpt`` command."""

import sys

from tinygpt.cli import main

sys.exit(main())
