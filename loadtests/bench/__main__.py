"""``python -m loadtests.bench``."""

import sys

from loadtests.bench.cli import main

sys.exit(main())
