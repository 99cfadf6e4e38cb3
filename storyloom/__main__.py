"""`python -m storyloom`: the command line."""

import sys

from storyloom.cli import main

sys.exit(main())
