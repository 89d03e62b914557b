"""``python -m nfflowd``: the command line, as the ``nfflowd`` script."""

import sys

from nfflowd.cli import main

sys.exit(main())
