"""Training-batch throughput: the decoded cache against decoding JPEGs every epoch.

Both loaders read the same Stanford-Cars-like synthetic JPEGs (class-folder
layout, real-world image sizes) and deliver shuffled float32 batches at the
training input size:

- carclf: ``ImageBatches`` over the decoded cache (memory-mapped uint8, built once);
- baseline: ``keras.utils.image_dataset_from_directory`` (tf.data, parallel JPEG
  decode and resize on every epoch).

Prints images/s for each, measured in the same run, and their ratio, plus the
one-time cost of building the cache. Usage::

    python bench/input_pipeline.py [--per-class 10] [--size 224] [--epochs 2]
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _data import bench_train_frame  # noqa: E402

from carclf.cache import StageCache  # noqa: E402
from carclf.decoded import build_decoded_cache  # noqa: E402
from carclf.generators import ImageBatches  # noqa: E402
from carclf.settings import DecodeSettings  # noqa: E402


def images_per_second(batches, epochs):
    """Median images/s over ``epochs`` passes of a callable that yields batches."""
    rates = []
    for epoch in range(epochs):
        start, count = time.perf_counter(), 0
        for x, _ in batches(epoch):
            count += len(x)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates), count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=196)
    parser.add_argument("--per-class", type=int, default=10, help="training images per class (real set: about 42)")
    parser.add_argument("--size", type=int, default=224, help="square input size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per loader (median reported)")
    parser.add_argument("--root", type=Path, default=None, help="where the synthetic set goes (kept between runs)")
    args = parser.parse_args()

    train, root = bench_train_frame(args.classes, args.per_class, args.root)

    size = (args.size, args.size)
    with tempfile.TemporaryDirectory() as pickles:
        t0 = time.perf_counter()
        decoded = build_decoded_cache(
            train, StageCache(pickles), DecodeSettings(image_size=size, crop="full"), progress=False
        )
        build_s = time.perf_counter() - t0
        gen = ImageBatches(decoded["train"], batch_size=args.batch_size, shuffle=True, seed=0)

        def ours(epoch):
            gen.set_epoch(epoch)
            return (gen[i] for i in range(len(gen)))

        ours_rate, n = images_per_second(ours, args.epochs)

    import keras

    dataset = keras.utils.image_dataset_from_directory(
        root / "car_data" / "car_data" / "train",
        label_mode="categorical",
        image_size=size,
        batch_size=args.batch_size,
        shuffle=True,
        seed=0,
        verbose=False,
    )
    keras_rate, _ = images_per_second(lambda epoch: dataset, args.epochs)

    print(f"{'loader':<44}{'images/s':>10}")
    print(f"{'carclf decoded cache (ImageBatches)':<44}{ours_rate:>10.0f}")
    print(f"{'keras image_dataset_from_directory':<44}{keras_rate:>10.0f}")
    print(f"ratio: {ours_rate / keras_rate:.1f}x (target: 10x or more)")
    print(
        f"one-time cache build: {build_s:.1f} s for {n} images ({n / build_s:.0f} images/s), "
        f"repaid after {build_s / (n / keras_rate - n / ours_rate):.1f} epochs"
    )


if __name__ == "__main__":
    main()
