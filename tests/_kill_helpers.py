"""Work that the kill tests run in a subprocess, then SIGKILL part-way.

    python tests/_kill_helpers.py atomic  PATH SIZE
    python tests/_kill_helpers.py units   ROOT N DELAY
    python tests/_kill_helpers.py decoded FRAME_PICKLE ROOT DELAY

Not a test module (pytest collects ``test_*.py`` only).
"""

import sys
import time


def atomic_loop(path, size):
    """Rewrite ``path`` forever, each time with one repeated byte."""
    from carclf.cache import atomic_write

    i = 0
    while True:
        atomic_write(path, bytes([i % 251]) * size)
        i += 1


UNITS_CONFIG = {"what": "squares", "n": None}


def units_stage(cache, n, compute_unit, progress=False):
    """The run_units stage shared by the subprocess and the test."""
    config = dict(UNITS_CONFIG, n=n)
    return cache.run_units("squares", config, range(n), compute_unit, progress=progress)


def square(unit):
    return {"unit": unit, "square": unit * unit}


def units(root, n, delay):
    from carclf.cache import StageCache

    def slow_square(unit):
        time.sleep(delay)
        return square(unit)

    units_stage(StageCache(root), n, slow_square)


DECODED_SETTINGS = {"image_size": (24, 32), "crop": "box", "margin": 0.1}
DECODED_OPTIONS = {"chunk_size": 2, "workers": 1}


def decoded(frame_pickle, root, delay):
    import pandas as pd

    from carclf import images
    from carclf.cache import StageCache
    from carclf.decoded import build_decoded_cache
    from carclf.settings import DecodeSettings

    read = images.read_image

    def slow_read(*args, **kwargs):
        time.sleep(delay)
        return read(*args, **kwargs)

    images.read_image = slow_read  # this subprocess only: makes the kill land mid-build
    build_decoded_cache(
        pd.read_pickle(frame_pickle),
        StageCache(root),
        DecodeSettings(**DECODED_SETTINGS),
        progress=False,
        **DECODED_OPTIONS,
    )


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "atomic":
        atomic_loop(args[0], int(args[1]))
    elif mode == "units":
        units(args[0], int(args[1]), float(args[2]))
    elif mode == "decoded":
        decoded(args[0], args[1], float(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")
