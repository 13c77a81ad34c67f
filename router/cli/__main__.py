"""`python -m router.cli`: how supervisord and systemd run fleet's own programs."""

import os
import sys

from router.cli import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
sys.exit(main())
