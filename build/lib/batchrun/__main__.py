"""`python -m batchrun` runs the CLI."""

import sys

from batchrun.cli import main

sys.exit(main())
