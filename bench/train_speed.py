"""Training throughput of the eight models on one device, and the report's full run projected from it.

For each model (all eight, or ``--models``) this measures, on a
Stanford-Cars-sized synthetic set (196 classes x 42 training images by
default on a GPU; a tiny set with ``--tiny``):

- training images/s: ``model.fit`` on the real generator, ``ImageBatches``
  over the decoded cache (memory-mapped uint8, read as float32 0-255 batches,
  shuffled per epoch), with the model built and compiled the way
  ``carclf.train.run_model_pipeline`` does it: the dtype policy and XLA
  setting of ``carclf.device.configure`` (mixed precision and XLA on a GPU,
  overridable), the pipeline's optimizer (``make_optimizer``: Adam 1e-3),
  categorical cross-entropy and the report's seven metrics;
- evaluation images/s: ``model.evaluate`` on the same generator, unshuffled
  (what validation and the final test run);
- the generator's own delivery rate: iterating the same ``ImageBatches`` with
  the same batch size and worker threads, no model, in the same run; and again
  with the modern recipe's online augmentation (a random resized crop, then the
  report's seven transforms) made by those workers.

Warm-up (tracing/XLA compilation and the first steps) is excluded: one
``fit`` call runs ``--warmup`` steps, then ``--steps`` timed ones; the clock
starts when the last warm-up step has finished and stops when the last timed
step has (the loss of each is read back, which waits for the device; nothing
else is synchronised in between, apart from what the pipeline itself does:
its ``StopOnNonFiniteLoss`` callback, included, reads the loss every ``nonfinite_check_steps`` steps,
and Keras's TensorFlow trainer converts every step's logs).
Likewise one ``evaluate`` call. The last partial batch is never used (it
would be a new shape to compile), so ``--steps`` is capped by the set's size.

The batch size per model defaults to what suits the device (256 for the
pretrained bases and 512 for model1 and AlexNet on a GPU, 16 on a CPU); a
batch that does not fit in the device's memory is halved until it does. The
generator's worker threads (``PyDataset`` workers) are, on a GPU machine, the
fastest of 2, 4, 8 and 16 at delivering batches, measured first.

It prints a Markdown table (model, backend, device, batch, training images/s,
step time, evaluation images/s, warm-up, projected minutes, the report's
minutes) and the projected wall time of the report's full run: every model
for 22 epochs over 8,144 training images, each epoch validated on the 8,041
test images (as ``run_model_pipeline`` does), plus the final test, next to
the report's 190 minutes or so per model (27+ hours in all).

Usage::

    python bench/train_speed.py                              # all eight at 224x224
    python bench/train_speed.py --models resnet50 --batch 256
    python bench/train_speed.py --tiny                       # CPU smoke run, seconds per model
    KERAS_BACKEND=jax python bench/train_speed.py ...        # the JAX backend (no TensorFlow needed)

``bench/prepare_gpu_wheels.py`` prepares a bare JAX-only GPU machine for it.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .` (the GPU machine)
    sys.path.insert(0, str(REPO))

#: The report's full run: epochs, and the real training and test set sizes.
EPOCHS = 22
TRAIN_IMAGES = 8144
TEST_IMAGES = 8041

#: The report's "Execution time (minutes)" per model (default hyperparameters).
REPORT_MINUTES = {
    "model1": 187.98,
    "alexnet": 184.83,
    "vgg16": 193.18,
    "resnet50": 187.2,
    "densenet121": 195.61,
    "imagenet": 192.86,
    "efficientnetb0": 200.31,
    "inceptionv3": 200.09,
}
#: The report's total for the notebook ("27+" hours, augmentation included).
REPORT_TOTAL_HOURS = 27

#: Targets of the speed issue (for one H100).
TARGET_RESNET50 = 2700
TARGET_FULL_RUN_MIN = 60
TARGET_SPEEDUP = 25
TARGET_INPUT_RATIO = 2.0

#: Default batch per model on a GPU (mixed precision); halved on out-of-memory.
GPU_BATCH = {"model1": 512, "alexnet": 512}
GPU_BATCH_DEFAULT = 256
CPU_BATCH = 16
TINY_BATCH = 8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default=None, help="comma-separated model names, measured in that order (default: all eight)"
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="square input size (default 224; --tiny: the smallest size every chosen model accepts, at least 32)",
    )
    parser.add_argument("--classes", type=int, default=None, help="number of classes (default 196; --tiny: 4)")
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help="synthetic training images (default: 196 x 42 = 8,232 on a GPU, 2 per class on a CPU, 64 with --tiny)",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="batch size for every model (default: per model, chosen for the device)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps before timing (default 3; CPU 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 30; CPU 6; tiny 5)")
    parser.add_argument("--eval-steps", type=int, default=None, help="timed evaluation steps (default 20; CPU 4)")
    parser.add_argument(
        "--workers",
        default=None,
        help="generator worker threads (PyDataset workers), or 'auto': the fastest of 1 (not on a "
        "GPU), 2, 4, 8, 16 (up to the cores), measured first (default: auto on a GPU machine, "
        "1 on a CPU)",
    )
    parser.add_argument(
        "--mixed-precision",
        default="auto",
        help="as run_model_pipeline: auto (bfloat16 on compute 8.0+, float16 on 7.x), true, false, bfloat16, float32",
    )
    parser.add_argument("--jit-compile", default="auto", help="as run_model_pipeline: auto (XLA on a GPU), true, false")
    parser.add_argument("--tiny", action="store_true", help="a tiny CPU-sized run (CI): small set, size, batch, steps")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="where the synthetic set and its decoded cache go (kept between runs; default data/bench/train-speed-...)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here (after every model)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no new model after this many seconds (a run on a borrowed machine)",
    )
    return parser.parse_args(argv)


def _switch(value):
    low = str(value).strip().lower()
    if low in ("true", "1", "on", "yes"):
        return True
    if low in ("false", "0", "off", "no"):
        return False
    return low


# --------------------------------------------------------------------------- #
# Device and data
# --------------------------------------------------------------------------- #


def cpu_name():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_label(acc):
    if acc.kind == "cpu":
        return f"CPU, {os.cpu_count()} cores ({cpu_name()})"
    name = acc.name or acc.kind.upper()
    return name if acc.count <= 1 else f"{name} (1 of {acc.count})"


def prepare_data(root, classes, per_class, size):
    """The synthetic set's training split, decoded once at ``size`` (box crops), as a DecodedSplit."""
    from carclf.cache import StageCache
    from carclf.data import load_stanford_cars
    from carclf.decoded import build_decoded_cache
    from carclf.settings import DecodeSettings
    from carclf.synthetic import make_synthetic

    t0 = time.perf_counter()
    widths = (max(64, size), max(96, 2 * size))
    make_synthetic(
        root / "cars",
        n_classes=classes,
        per_class_train=per_class,
        per_class_test=1,
        size_range=widths,
        seed=1,
        progress=False,
    )
    frame = load_stanford_cars(root / "cars")
    train = frame[frame["split"] == "train"]
    drawn = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = build_decoded_cache(train, StageCache(root / "pickles"), DecodeSettings(image_size=size), progress=False)
    return decoded["train"], drawn, time.perf_counter() - t0


def full_batches(split, batch, shuffle, workers, augment=None):
    """The real generator, ``ImageBatches``, without the last partial batch (a new shape to compile)."""
    from carclf.generators import ImageBatches

    class FullBatches(ImageBatches):
        def __len__(self):
            return max(1, len(self.split) // self.batch_size)

    kwargs = {"workers": workers, "use_multiprocessing": False, "max_queue_size": 10} if workers > 1 else {}
    return FullBatches(split, batch_size=batch, shuffle=shuffle, seed=0, augment=augment, **kwargs)


def modern_augment(size):
    """The modern recipe's online augmentation (a random resized crop, then the report's seven)."""
    from carclf.augment import OnlineAugment, pipeline_for

    return OnlineAugment(pipeline_for("modern", (size, size)))


def choose_workers(split, batch, least=1):
    """The number of generator threads (``least`` or more) that delivers fastest here, and each one's rate.

    On a GPU ``least`` is 2: with one worker Keras builds each batch in the training loop itself, and
    since Keras's TensorFlow trainer reads every step's logs back, the device would wait for it; worker
    threads build the next batches while the device computes.
    """
    cores = os.cpu_count() or 1
    candidates = sorted({least, *(w for w in (1, 2, 4, 8, 16) if least <= w <= cores)})
    rates = {w: generator_rate(split, batch, w, batches=16) for w in candidates}
    return max(rates, key=rates.get), rates


def generator_rate(split, batch, workers, batches=None, augment=None):
    """Images/s of iterating the generator alone (``workers`` threads, in order, as PyDataset's enqueuer)."""
    gen = full_batches(split, batch, True, workers, augment)
    n = min(len(gen), batches or len(gen))
    with ThreadPoolExecutor(workers) as pool:

        def count():
            if workers == 1:
                return sum(len(gen[i][0]) for i in range(n))
            return sum(len(x) for x, _ in pool.map(gen.__getitem__, range(n)))

        count()  # a first pass pages the memmap in (as a training epoch would have) and starts the threads
        t0 = time.perf_counter()
        images = count()
        return images / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- #
# One model
# --------------------------------------------------------------------------- #


class OutOfMemory(RuntimeError):
    pass


def _is_oom(exc):
    text = f"{type(exc).__name__}: {exc}"
    return any(
        s in text
        for s in ("RESOURCE_EXHAUSTED", "ResourceExhausted", "Out of memory", "out of memory", "OOM when allocating")
    )


class StepTimer:
    """Times steps ``first .. last`` (0-based) of one ``fit`` or ``evaluate`` call from inside it.

    It waits for the device only at two batch ends, the one before ``first``
    and ``last``, by reading back that step's loss (JAX dispatches steps
    asynchronously), so the steps in between run as they do in training.
    """

    def __init__(self, first, last):
        import keras

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(cb, batch, logs=None):
                self._mark(batch, logs)

            def on_test_batch_end(cb, batch, logs=None):
                self._mark(batch, logs)

        self.first, self.last = first, last
        self.callback = Callback()
        self.start = self.begin = self.end = None

    def _mark(self, batch, logs):
        if batch == self.first - 1 or batch == self.last:
            import keras

            keras.ops.convert_to_numpy((logs or {})["loss"])
            if batch == self.last:
                self.end = time.perf_counter()
            else:
                self.begin = time.perf_counter()

    def run(self, call):
        self.start = time.perf_counter()
        call([self.callback])
        if self.begin is None or self.end is None:
            raise RuntimeError(f"the step timer saw no steps {self.first - 1} and {self.last}")
        return (self.end - self.begin) / (self.last - self.first + 1), self.begin - self.start


def measure(name, split, size, num_classes, batch, device, workers, warmup, steps, eval_steps):
    """One model's training and evaluation rates at ``batch``, as run_model_pipeline builds and compiles it."""
    import keras

    from carclf.device import precision_policy
    from carclf.metrics import report_metrics
    from carclf.models import build
    from carclf.settings import TrainSettings
    from carclf.train import StopOnNonFiniteLoss, make_optimizer, optimizer_settings

    keras.backend.clear_session()
    gc.collect()
    keras.utils.set_random_seed(0)
    model = None
    try:
        with precision_policy(device.policy):
            model = build(name, (size, size, 3), num_classes)
        optimizer, _ = make_optimizer(optimizer_settings({}))
        model.compile(
            optimizer=optimizer,
            loss="categorical_crossentropy",
            metrics=report_metrics(),
            jit_compile=device.jit_compile,
        )
        train = full_batches(split, batch, True, workers)
        evaluation = full_batches(split, batch, False, workers)
        # warm-up steps, then timed steps, in one call: no partial batch, no second start-up
        warm_train = max(1, min(warmup, len(train) - 1))
        n_train = max(1, min(steps, len(train) - warm_train))
        warm_eval = max(1, min(warmup - 1, len(evaluation) - 1))
        n_eval = max(1, min(eval_steps, len(evaluation) - warm_eval))

        # StopOnNonFiniteLoss is the pipeline's one per-batch callback (it reads the loss every K steps).
        timer = StepTimer(warm_train, warm_train + n_train - 1)
        train_step, warm = timer.run(
            lambda cbs: model.fit(
                train,
                epochs=1,
                steps_per_epoch=warm_train + n_train,
                verbose=0,
                shuffle=False,
                callbacks=[StopOnNonFiniteLoss(name, check_every=TrainSettings().nonfinite_check_steps), *cbs],
            )
        )
        timer = StepTimer(warm_eval, warm_eval + n_eval - 1)
        eval_step, eval_warm = timer.run(
            lambda cbs: model.evaluate(evaluation, steps=warm_eval + n_eval, verbose=0, callbacks=cbs)
        )
        params = model.count_params()
    except Exception as exc:
        if _is_oom(exc):
            raise OutOfMemory(str(exc).splitlines()[0][:300]) from None
        raise
    finally:
        model = None  # free the device memory before the next model (or a smaller batch)
        keras.backend.clear_session()
        gc.collect()
    return {
        "model": name,
        "batch": batch,
        "params": params,
        "train_images_per_s": batch / train_step,
        "train_step_ms": 1000 * train_step,
        "eval_images_per_s": batch / eval_step,
        "eval_step_ms": 1000 * eval_step,
        "warmup_s": warm + eval_warm,
        "timed_steps": n_train,
        "timed_eval_steps": n_eval,
    }


def projected_minutes(row):
    """The report's run of one model on this device: 22 epochs of training and validation, then the test."""
    train = EPOCHS * TRAIN_IMAGES / row["train_images_per_s"]
    evaluation = (EPOCHS + 1) * TEST_IMAGES / row["eval_images_per_s"]
    return (train + evaluation) / 60, train / 60


# --------------------------------------------------------------------------- #
# Output
# --------------------------------------------------------------------------- #


def _fmt(value, digits=0):
    return f"{value:,.{digits}f}"


def table(rows, backend, device):
    lines = [
        "| model | backend | device | batch | train images/s | step ms | eval images/s | warm-up s "
        "| projected min | report min |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(
                f"| {row['model']} | {backend} | {device} | {row.get('batch', '-')} | {row['skipped']} "
                f"| | | | | {_fmt(REPORT_MINUTES[row['model']], 1)} |"
            )
            continue
        lines.append(
            f"| {row['model']} | {backend} | {device} | {row['batch']} | {_fmt(row['train_images_per_s'], 1)} "
            f"| {_fmt(row['train_step_ms'], 1)} | {_fmt(row['eval_images_per_s'], 1)} | {_fmt(row['warmup_s'], 1)} "
            f"| {_fmt(row['projected_min'], 1)} | {_fmt(REPORT_MINUTES[row['model']], 1)} |"
        )
    return "\n".join(lines)


def summary(rows, generator, acc, all_eight, size=224):
    done = [r for r in rows if "skipped" not in r]
    out = []
    if not done:
        return ["no model was measured"]
    total = sum(r["projected_min"] for r in done)
    training = sum(r["projected_train_min"] for r in done)
    report = sum(REPORT_MINUTES[r["model"]] for r in done)
    which = (
        "all eight models"
        if all_eight and len(done) == 8
        else f"{len(done)} model(s): {', '.join(r['model'] for r in done)}"
    )
    out.append(
        f"projected full run, {which}: {_fmt(total, 1)} min ({_fmt(total / 60, 2)} h) = {EPOCHS} epochs x "
        f"({TRAIN_IMAGES:,} training + {TEST_IMAGES:,} validation images) + a final test on {TEST_IMAGES:,}; "
        f"training steps alone {_fmt(training, 1)} min"
        + ("" if size == 224 else f" (measured at {size}x{size}, not the report's 224x224)")
    )
    out.append(
        f"the report, same models: {_fmt(report, 0)} min ({_fmt(report / 60, 1)} h; {REPORT_TOTAL_HOURS}+ h for "
        f"the whole notebook) -> "
        + (f"{_fmt(report / total, 1)}x faster" if report >= total else f"{_fmt(total / report, 1)}x slower")
    )
    fastest = max(done, key=lambda r: r["train_images_per_s"])
    gen = generator.get(fastest["batch"])
    if gen:
        ratio = gen["images_per_s"] / fastest["train_images_per_s"]
        out.append(
            f"input pipeline: ImageBatches delivers {_fmt(gen['images_per_s'])} images/s (batch {fastest['batch']}, "
            f"{gen['workers']} thread(s), float32 {gen['size']}x{gen['size']} batches from the uint8 memmap) against "
            f"{_fmt(fastest['train_images_per_s'])} images/s consumed by the fastest model ({fastest['model']}): "
            f"{ratio:.1f}x (target >= {TARGET_INPUT_RATIO:g}x)"
        )
        online_ratio = gen["online_images_per_s"] / fastest["train_images_per_s"]
        out.append(
            f"with the modern recipe's online augmentation (a random resized crop, then the report's seven) on "
            f"{gen['workers']} thread(s): {_fmt(gen['online_images_per_s'])} images/s, {online_ratio:.1f}x the "
            f"fastest model"
        )
    where = "" if acc.kind == "gpu" else " (the targets are for one H100 GPU; this is not one)"
    resnet = next((r for r in done if r["model"] == "resnet50"), None)
    checks = []
    if resnet:
        ok = resnet["train_images_per_s"] >= TARGET_RESNET50
        checks.append(
            f"ResNet50 {_fmt(resnet['train_images_per_s'])} images/s "
            f"(target >= {TARGET_RESNET50:,}: {'met' if ok else 'not met'})"
        )
    if all_eight and len(done) == 8:
        ok = total < TARGET_FULL_RUN_MIN and report / total >= TARGET_SPEEDUP
        checks.append(
            f"full run {_fmt(total, 1)} min, {_fmt(report / total, 1)}x "
            f"(target < {TARGET_FULL_RUN_MIN} min and >= {TARGET_SPEEDUP}x: {'met' if ok else 'not met'})"
        )
    if gen:
        ok = ratio >= TARGET_INPUT_RATIO
        checks.append(f"input {ratio:.1f}x (target >= {TARGET_INPUT_RATIO:g}x: {'met' if ok else 'not met'})")
        ok = online_ratio >= TARGET_INPUT_RATIO
        checks.append(
            f"input with online augmentation {online_ratio:.1f}x (target >= {TARGET_INPUT_RATIO:g}x: "
            f"{'met' if ok else 'not met'})"
        )
    if checks:
        out.append("targets" + where + ": " + "; ".join(checks))
    return out


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    import keras

    from carclf.device import configure
    from carclf.models import MIN_INPUT_SIZE, NAMES
    from carclf.paths import Paths

    names = [n.strip() for n in args.models.split(",")] if args.models else list(NAMES)
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {', '.join(NAMES)}")

    device = configure(_switch(args.mixed_precision), _switch(args.jit_compile))
    acc = device.accelerator
    gpu = acc.kind != "cpu"
    backend = keras.backend.backend()

    need = max(MIN_INPUT_SIZE[n] for n in names)
    size = args.size or (max(32, need) if args.tiny else 224)
    if size < need:
        small = [n for n in names if MIN_INPUT_SIZE[n] > size]
        raise SystemExit(f"--size {size} is below the minimum of {small} ({need}); use --size {need} or more")
    classes = args.classes or (4 if args.tiny else 196)
    images = args.images or (64 if args.tiny else 196 * 42 if gpu else 2 * classes)
    per_class = max(1, math.ceil(images / classes))
    workers = args.workers or ("1" if args.tiny or not gpu else "auto")
    warmup = args.warmup or (2 if args.tiny or not gpu else 3)
    steps = args.steps or (5 if args.tiny else 30 if gpu else 6)
    eval_steps = args.eval_steps or (4 if args.tiny or not gpu else 20)
    default_batch = TINY_BATCH if args.tiny else None

    def batch_for(name):
        if args.batch:
            return args.batch
        if default_batch:
            return default_batch
        return GPU_BATCH.get(name, GPU_BATCH_DEFAULT) if gpu else CPU_BATCH

    label = device_label(acc)
    print(f"# device: {acc.describe()}; {label}", flush=True)
    print(
        f"# Keras {keras.__version__} on {backend}; dtype policy {device.policy}, XLA/jit_compile "
        f"{device.jit_compile} (as run_model_pipeline sets them)",
        flush=True,
    )

    root = args.root or Paths.default().data / "bench" / f"train-speed-{classes}x{per_class}-{size}"
    split, drawn_s, decoded_s = prepare_data(Path(root), classes, per_class, size)
    print(
        f"# data: {len(split):,} synthetic training images, {classes} classes, {size}x{size}; drawn/read in "
        f"{drawn_s:.1f} s, decoded cache built/opened in {decoded_s:.1f} s ({root})",
        flush=True,
    )
    if workers == "auto":
        workers, tried = choose_workers(split, min(batch_for(names[0]), len(split)), least=2 if gpu else 1)
        print(
            "# generator threads: " + ", ".join(f"{w}: {r:,.0f} images/s" for w, r in tried.items()) + f" -> {workers}",
            flush=True,
        )
    workers = int(workers)
    print(
        f"# generator: ImageBatches over the decoded cache, {workers} worker thread(s); warm-up {warmup} steps, "
        f"timed {steps} training and {eval_steps} evaluation steps per model",
        flush=True,
    )

    rows, generator = [], {}
    results = {
        "backend": backend,
        "device": label,
        "accelerator": acc.describe(),
        "policy": device.policy,
        "jit_compile": device.jit_compile,
        "keras": keras.__version__,
        "size": size,
        "classes": classes,
        "images": len(split),
        "workers": workers,
        "rows": rows,
        "generator": generator,
    }

    def save():
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2, default=str))

    for name in names:
        if args.budget_s and time.perf_counter() - started > args.budget_s:
            rows.append({"model": name, "skipped": "skipped (time budget)"})
            print(f"# {name}: skipped, past the {args.budget_s:.0f} s budget", flush=True)
            continue
        batch = batch_for(name)
        while True:
            batch = min(batch, len(split))
            print(f"# {name}: batch {batch} ...", flush=True)
            try:
                row = measure(name, split, size, classes, batch, device, workers, warmup, steps, eval_steps)
                break
            except OutOfMemory as exc:
                print(f"# {name}: out of memory at batch {batch} ({exc}); halving", flush=True)
                if batch == 1:
                    row = {"model": name, "batch": batch, "skipped": "out of memory"}
                    break
                batch //= 2
        if "skipped" not in row:
            row["projected_min"], row["projected_train_min"] = projected_minutes(row)
            if batch not in generator:
                rate = generator_rate(split, batch, workers)
                generator[batch] = {"images_per_s": rate, "workers": workers, "size": size}
                if workers > 1:
                    generator[batch]["one_thread_images_per_s"] = generator_rate(split, batch, 1)
                online = generator_rate(split, batch, workers, batches=8, augment=modern_augment(size))
                generator[batch]["online_images_per_s"] = online
            print(
                f"# {name}: {row['train_images_per_s']:,.1f} images/s training, {row['eval_images_per_s']:,.1f} "
                f"evaluating, warm-up {row['warmup_s']:.1f} s",
                flush=True,
            )
        rows.append(row)
        save()

    print()
    print(table(rows, backend, label))
    print()
    for line in summary(rows, generator, acc, all_eight=not args.models or len(names) == 8, size=size):
        print(line)
    for batch, gen in sorted(generator.items()):
        extra = f", {gen['one_thread_images_per_s']:,.0f} with 1 thread" if "one_thread_images_per_s" in gen else ""
        print(
            f"generator at batch {batch}: {gen['images_per_s']:,.0f} images/s with {gen['workers']} thread(s){extra}; "
            f"{gen['online_images_per_s']:,.0f} with the online augmentation"
        )
    print(f"total wall time of this benchmark: {time.perf_counter() - started:.0f} s")
    results["wall_s"] = time.perf_counter() - started
    save()
    return results


if __name__ == "__main__":
    main()
