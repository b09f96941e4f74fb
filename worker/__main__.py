"""`python -m worker` runs a worker, like `tunefleet worker`."""

import sys

from worker.command import main

sys.exit(main(sys.argv[1:]))
