"""`python -m ferry` runs the `ferry` CLI."""

import sys

from ferry.cli import main

sys.exit(main())
