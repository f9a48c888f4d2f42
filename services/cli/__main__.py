"""`python -m services.cli ARGS` runs the `viewcounter` command."""

import os
import sys

from services.cli.main import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")  # children (api, flusher) print as they go
sys.exit(main())
