"""Offline augmentation throughput: the report's pipeline written to disk, 1 worker against all cores.

On a Stanford-Cars-like synthetic set (196 classes, real-world image sizes,
class-folder layout; shared with ``bench/input_pipeline.py``), the box crops
are decoded once at the training input size, then the offline augmented set
(:func:`carclf.augment.build_augmented_set`: augment, JPEG-encode, atomic
write, manifest) is built from scratch with 1 worker and with every core,
each into a fresh folder. Prints images/s for each (best of ``--repeats``),
the speed-up, and the projected time for the real 8,144 training images
against the report's 30.6 minutes. The timed builds include starting the
worker processes.

Two more lines say where the time goes: the pipeline alone (augment and JPEG
encode in memory, 1 process against all cores) and the file writes alone
(``carclf.cache.atomic_write(..., durable=False)``, as the build writes them:
temp file and rename, one sync per chunk; 1 thread against all cores). Usage::

    python bench/augment.py [--per-class 10] [--variants 4] [--executor process] [--repeats 2]
"""

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

# Only what the spawned workers need at the top: they import this script again.
from carclf.augment import augment_image, build_augmented_set
from carclf.augment.offline import _encode
from carclf.cache import StageCache, atomic_write
from carclf.paths import usable_cpus
from carclf.settings import AugmentSettings, DecodeSettings

REAL_TRAIN_IMAGES = 8144
REPORT_MINUTES = 30.645


def cpu_seconds():
    """CPU time (user + system) of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def build_rate(train, workers, args, scratch):
    """(images/s, cores busy on average) of one build from scratch (new cache, new folder)."""
    root = Path(tempfile.mkdtemp(dir=scratch, prefix=f"w{workers}-"))
    start, cpu = time.perf_counter(), cpu_seconds()
    result = build_augmented_set(
        train,
        StageCache(root / "pickles"),
        AugmentSettings(n_variants=args.variants),
        0,
        out_dir=root / "augmented",
        workers=workers,
        executor=args.executor,
        progress=False,
    )
    seconds = time.perf_counter() - start
    assert result.written == len(train) * args.variants and not result.loaded
    return result.written / seconds, (cpu_seconds() - cpu) / seconds


def _pipeline_only(job):
    import cv2

    cv2.setNumThreads(1)
    images, start = job
    return sum(len(_encode(augment_image(im, 0, start + i, 0), "jpg", 95)) for i, im in enumerate(images))


def pipeline_rate(train, workers, n=800):
    """images/s of augment + encode alone, in ``workers`` spawned processes (start-up excluded)."""
    images = np.asarray(train.images[:n])
    jobs = [(images[i : i + 16], i) for i in range(0, len(images), 16)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_pipeline_only, jobs[:workers]))  # start and warm the workers
        start = time.perf_counter()
        sizes = list(pool.map(_pipeline_only, jobs))
        seconds = time.perf_counter() - start
    return len(images) / seconds, sum(sizes) / len(images)


def write_rate(scratch, threads, size, n=600):
    """files/s of atomic_write alone, as the build calls it (``size``-byte files, fresh folder)."""
    folder = Path(tempfile.mkdtemp(dir=scratch, prefix=f"writes{threads}-"))
    data = os.urandom(int(size))
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(lambda i: atomic_write(folder / f"{i:05d}.jpg", data, durable=False), range(n)))
        return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=196)
    parser.add_argument("--per-class", type=int, default=10, help="training images per class (real set: about 42)")
    parser.add_argument("--size", type=int, default=224, help="square input size")
    parser.add_argument(
        "--variants",
        type=int,
        default=4,
        help="variants per image in the timed builds (default 4: 1,960 x 4 files, about as many "
        "as the real set's 8,144 x 1, so the workers' start-up weighs as it would there)",
    )
    parser.add_argument("--executor", choices=("process", "thread"), default="process")
    parser.add_argument("--workers", type=int, default=None, help="the parallel run's workers (default: all cores)")
    parser.add_argument("--repeats", type=int, default=2, help="timed builds per setting (best reported)")
    parser.add_argument("--root", type=Path, default=None, help="where the synthetic set goes (kept between runs)")
    args = parser.parse_args()

    from _data import bench_train_frame

    from carclf.decoded import build_decoded_cache

    train_frame, _ = bench_train_frame(args.classes, args.per_class, args.root)

    workers = args.workers or usable_cpus()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="carclf-bench-augment-") as scratch:
        t0 = time.perf_counter()
        train = build_decoded_cache(
            train_frame, StageCache(Path(scratch) / "decoded"), DecodeSettings(image_size=args.size), progress=False
        )["train"]
        print(f"box crops decoded at {args.size}x{args.size} in {time.perf_counter() - t0:.1f} s")
        one = many = (0.0, 0.0)
        for _ in range(args.repeats):  # interleaved, so a busy moment hurts both alike
            one = max(one, build_rate(train, 1, args, scratch))
            many = max(many, build_rate(train, workers, args, scratch))
        pipe_one, jpeg_bytes = pipeline_rate(train, 1)
        pipe_many, _ = pipeline_rate(train, workers)
        write_one = write_rate(scratch, 1, jpeg_bytes)
        write_many = write_rate(scratch, workers, jpeg_bytes)

    print(
        f"machine load (1-min load average, {usable_cpus()} cores): {load_before:.1f} before the timings, "
        f"{os.getloadavg()[0]:.1f} after (other jobs on the machine take cores from the parallel run)"
    )
    print(
        f"\noffline augmentation of {len(train)} crops x {args.variants} variants = {len(train) * args.variants} "
        f"files, {args.executor} workers (best of {args.repeats}, worker start-up included)"
    )
    print(f"{'workers':<9}{'images/s':>9}{'cores busy':>12}{'8,144 x 1':>12}{f'8,144 x {args.variants}':>12}")
    for n, (rate, busy) in ((1, one), (workers, many)):
        print(
            f"{n:<9}{rate:>9.0f}{busy:>12.2f}{REAL_TRAIN_IMAGES / rate / 60:>8.2f} min"
            f"{REAL_TRAIN_IMAGES * args.variants / rate / 60:>8.2f} min"
        )
    print(f"speed-up 1 -> {workers} workers: {many[0] / one[0]:.2f}x (target: at least 1.8x on 2 cores)")
    print(
        f"  pipeline alone (augment + JPEG encode, {jpeg_bytes / 1e3:.0f} kB/image): {pipe_one:.0f} -> "
        f"{pipe_many:.0f} images/s, {pipe_many / pipe_one:.2f}x"
    )
    print(
        f"  file writes alone (atomic_write, 1 -> {workers} threads): {write_one:.0f} -> {write_many:.0f} "
        f"files/s, {write_many / write_one:.2f}x"
    )
    minutes = REAL_TRAIN_IMAGES / many[0] / 60
    print(
        f"the real training set (8,144 images, 1 variant each) with {workers} workers: {minutes:.2f} min against "
        f"the report's {REPORT_MINUTES} min ({REPORT_MINUTES / minutes:.0f}x faster; target: under 2 min)"
    )


if __name__ == "__main__":
    main()
