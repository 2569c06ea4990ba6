"""``python -m serve_app.launch key=value ...`` prints the Serve config (``boot.main``)."""

import sys

from serve_app.launch.boot import main

sys.exit(main())
