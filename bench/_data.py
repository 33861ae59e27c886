"""The Stanford-Cars-like training set the benchmarks share (kept under data/bench/ between runs)."""

import time

from carclf.data import load_stanford_cars
from carclf.paths import Paths
from carclf.synthetic import make_synthetic


def bench_train_frame(classes, per_class, root=None):
    """The training rows of a synthetic set with real-world image sizes; prints what it holds."""
    root = root or Paths.default().data / "bench" / f"cars-{classes}x{per_class}"
    t0 = time.perf_counter()
    make_synthetic(
        root,
        n_classes=classes,
        per_class_train=per_class,
        per_class_test=1,
        size_range=(360, 1000),
        seed=1,
        progress=False,
    )
    frame = load_stanford_cars(root)
    train = frame[frame["split"] == "train"]
    print(
        f"dataset: {len(train)} training JPEGs, {classes} classes, "
        f"{train['width'].mean():.0f}x{train['height'].mean():.0f} px on average "
        f"(ready in {time.perf_counter() - t0:.1f} s)"
    )
    return train, root
