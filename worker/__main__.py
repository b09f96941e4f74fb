"""`python -m worker` runs a worker, like `tunefleet worker`."""

import sys

from tunefleet.cli import main

sys.exit(main(["worker", *sys.argv[1:]]))
