"""An offline augmentation run that the kill test starts in a subprocess, then SIGKILLs part-way.

    python tests/_augment_kill.py SOURCE_NPY ROOT DELAY

Not a test module (pytest collects ``test_*.py`` only).
"""

import sys
import time
from pathlib import Path

#: The build's settings, shared with the test (workers=1: the slowed function runs in this process).
SETTINGS = {"n_variants": 2, "seed": 7, "workers": 1, "chunk_size": 4, "progress": False}


def source_split(npy):
    import numpy as np

    from carclf.splits import DecodedSplit

    images = np.load(npy, mmap_mode="r")
    n = len(images)
    return DecodedSplit(images, np.arange(n) % 3, [f"/cars/train/{i + 1:05d}.jpg" for i in range(n)], "train", 3)


def build(npy, root, **overrides):
    from carclf.augment import build_augmented_set
    from carclf.cache import StageCache
    from carclf.settings import AugmentSettings

    root = Path(root)
    options = {**SETTINGS, **overrides}
    settings, seed = AugmentSettings(n_variants=options.pop("n_variants")), options.pop("seed")
    return build_augmented_set(
        source_split(npy), StageCache(root / "pickles"), settings, seed, out_dir=root / "augmented", **options
    )


def main(npy, root, delay):
    import carclf.augment.offline as offline

    original = offline.augment_with

    def slow(*args, **kwargs):
        time.sleep(delay)  # this subprocess only: makes the kill land mid-build
        return original(*args, **kwargs)

    offline.augment_with = slow
    build(npy, root)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
