"""Training-batch throughput: the decoded cache against decoding JPEGs every epoch.

Both loaders read the same Stanford-Cars-like synthetic JPEGs (class-folder
layout, real-world image sizes) and deliver shuffled float32 batches at the
training input size:

- carclf: ``ImageBatches`` over the decoded cache (memory-mapped uint8, built once);
- baseline: ``keras.utils.image_dataset_from_directory`` (tf.data, parallel JPEG
  decode and resize on every epoch).

Prints images/s for each, measured in the same run, and their ratio, plus the
one-time cost of building the cache.

Then the modern recipe's online path: the same batches through its augmentation (a random resized crop,
then the report's seven transforms), made by Keras's ``PyDataset`` with 1 worker (the one producer ``fit``
reads from) and with 2 worker threads, and the cores it would take to feed ResNet50 on one H100 with mixed
precision (2,700 images/s, published), projected from those two rates. Usage::

    python bench/input_pipeline.py [--per-class 10] [--size 224] [--epochs 2] [--online-batches 20]
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _data import bench_train_frame  # noqa: E402

from carclf.augment import OnlineAugment, pipeline_for  # noqa: E402
from carclf.cache import StageCache  # noqa: E402
from carclf.decoded import build_decoded_cache  # noqa: E402
from carclf.generators import ImageBatches  # noqa: E402
from carclf.settings import DecodeSettings  # noqa: E402

#: ResNet50's published training rate on one H100 with mixed precision (issue 18's figure).
GPU_IMAGES_PER_S = 2700


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
    parser.add_argument("--online-batches", type=int, default=20, help="batches timed per worker count (online)")
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
        online = {workers: online_rate(decoded["train"], args, workers) for workers in (1, 2)}

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
    print_online(online, args.size)


def online_rate(split, args, workers):
    """images/s of the modern recipe's online augmentation, batches made by ``workers`` PyDataset threads."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    augment = OnlineAugment(pipeline_for("modern", (args.size, args.size)))
    gen = ImageBatches(split, batch_size=args.batch_size, shuffle=True, seed=0, augment=augment, workers=workers)
    adapter = PyDatasetAdapter(gen, shuffle=False)
    adapter.on_epoch_begin()
    iterator, count = adapter.get_numpy_iterator(), 0
    next(iterator)  # the workers' warm-up (thread start, first pipeline build) is not timed
    start = time.perf_counter()
    for _, (images, _labels) in zip(range(args.online_batches), iterator):
        count += len(images)
    rate = count / (time.perf_counter() - start)
    adapter.on_epoch_end()
    return rate


def print_online(online, size):
    one, two = online[1], online[2]
    efficiency = two / (2 * one)
    cores = GPU_IMAGES_PER_S / (one * min(1.0, efficiency))
    print(f"\nonline augmentation, modern recipe at {size}x{size} (random resized crop + the report's seven)")
    print(f"{'workers':<44}{'images/s':>10}")
    print(f"{'1 (the producer fit reads from)':<44}{one:>10.0f}")
    print(f"{'2 threads':<44}{two:>10.0f}")
    print(
        f"scaling 1 -> 2 workers: {two / one:.2f}x ({efficiency:.0%} of linear); to feed {GPU_IMAGES_PER_S:,} "
        f"images/s (ResNet50, one H100, mixed precision): about {cores:.0f} cores at the 2-worker efficiency"
    )


if __name__ == "__main__":
    main()
