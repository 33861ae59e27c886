"""``python -m carclf``: the notebook's stages from a terminal."""

import sys

from carclf.cli import main

sys.exit(main())
