"""`python -m tunefleet` is the `tunefleet` command."""

import sys

from tunefleet.cli import main

sys.exit(main())
