"""``python -m carclf``: the notebook's stages from a terminal."""

import os
import sys

# TensorFlow's C++ start-up notices (CUDA stubs, oneDNN) drown the command's own output; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from carclf.cli import main  # noqa: E402

sys.exit(main())
