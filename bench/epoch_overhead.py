"""What the training loop waits for at each epoch's end, before and after the background state writer, as a
share of a projected GPU epoch; and what each step waits for.

Per model (built at 224x224 for 196 classes, the optimizer's variables created), with the epoch-end
callbacks of ``run_model_pipeline`` and validation improving at every epoch (the worst case):

- *before*: the resume state pickled in the training thread after every epoch, and the best checkpoint a
  full ``.keras`` file (Keras's ``ModelCheckpoint``), as carclf did until issue 18;
- *after*: today's callbacks: the state a host copy handed to the background writer, taken at most every
  ``TrainSettings.state_interval`` seconds; early stopping and the best checkpoint keep one copy of the
  best weights on the device, fetched with the state and written as ``best.weights.h5`` when the run ends.

Blocked seconds are the wall time of the epoch-end callbacks in the training thread. A projected GPU epoch
is ResNet50's published ~2,700 training images/s on one H100 (8,144 training images, validation at three
times that rate: about 4 s), scaled per model by its training step time measured here on this machine's
device (``--no-rates``: ResNet50's epoch for every model). With the state taken every ``interval`` s, its
host copy counts in an epoch's share as ``copy x min(1, epoch / interval)``. The same blocking is also
projected onto one H100 (the device copy at its memory bandwidth, the state's fetch at an assumed PCIe rate,
each tensor paying the fixed cost measured here): a projection until ``--json`` comes from a GPU.

The second table times training steps of a small model with the non-finite-loss check read every step
(before) and every ``nonfinite_check_steps`` (after), and with ``steps_per_execution`` 1 and 4.

    python bench/epoch_overhead.py [--models resnet50,efficientnetb0,imagenet] [--tiny] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

ALL = "model1,alexnet,vgg16,resnet50,densenet121,imagenet,efficientnetb0,inceptionv3"
#: ResNet50 on one H100 with mixed precision (published), and the real set's sizes.
GPU_RESNET50_IMAGES_PER_S = 2700
TRAIN_IMAGES, VALIDATION_IMAGES = 8144, 8041
TARGET_SHARE = 0.05
#: Published H100 SXM memory bandwidth; a copy reads and writes each byte, so it moves at half of it.
GPU_COPY_BYTES_PER_S = 3.35e12 / 2
#: Assumed device-to-host rate into pageable NumPy memory: a third of PCIe 4.0 x16's 32 GB/s (conservative;
#: pinned transfers reach most of it, and an H100's PCIe 5.0 link doubles it).
GPU_FETCH_BYTES_PER_S = 10e9


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=ALL)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=196)
    parser.add_argument("--epochs", type=int, default=3, help="simulated epoch ends per model (averaged)")
    parser.add_argument("--no-rates", action="store_true", help="ResNet50's GPU epoch for every model")
    parser.add_argument("--root", type=Path, default=None, help="where the files are written (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="a smoke run: model1 and resnet50 at 32 px, 10 classes")
    args = parser.parse_args()
    if args.tiny:
        args.models = "model1,resnet50" if args.models == ALL else args.models
        args.size, args.classes, args.epochs = 32, 10, 2
    return args


def build(name, size, classes):
    import keras

    from carclf.metrics import report_metrics
    from carclf.models import build as build_model
    from carclf.train import make_optimizer, optimizer_settings

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = build_model(name, (size, size, 3), classes)
    model.compile(
        optimizer=make_optimizer(optimizer_settings({}))[0], loss="categorical_crossentropy", metrics=report_metrics()
    )
    model.optimizer.build(model.trainable_variables)
    return model


def step_seconds(model, size, classes, batch=8, steps=2):
    """Seconds per training step on this device (one warm-up step first)."""
    import keras

    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(batch) % classes, classes)
    model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - t0) / steps


def epoch_ends(model, callbacks, epochs):
    """Mean wall seconds of the callbacks' ``on_epoch_end`` after the first (a warm-up: first allocations,
    first conversions), validation improving every epoch."""
    from keras.src.callbacks.callback_list import CallbackList

    listed = CallbackList(callbacks, model=model, add_history=False, add_progbar=False)
    listed.on_train_begin()
    times = []
    for epoch in range(epochs + 1):
        listed.on_epoch_begin(epoch)
        loss = 1.0 / (epoch + 1)
        logs = {"loss": loss, "val_loss": loss, "val_top3_accuracy": 1 - loss, "val_accuracy": 1 - loss}
        t0 = time.perf_counter()
        listed.on_epoch_end(epoch, logs)
        times.append(time.perf_counter() - t0)
    return float(np.mean(times[1:]))


def _saver(run_dir, callbacks, writer, interval):
    from carclf.train.resume import ResumableState

    return ResumableState(
        run_dir / "resume" / "state.pkl",
        key="bench",
        phase={"index": 0, "end": 10**6},
        callbacks=callbacks,
        schedule=None,
        train_generator=None,
        history={},
        history_path=run_dir / "history.csv",
        writer=writer,
        interval=interval,
    )


def before(model, run_dir, epochs):
    """The old path: the state pickled in the training thread every epoch, the best checkpoint a .keras file,
    Keras's EarlyStopping fetching the weights to the host at every improvement."""
    from dataclasses import asdict

    import keras

    from carclf.settings import CallbackSettings
    from carclf.train.callbacks import create_callbacks
    from carclf.train.resume import write_state
    from carclf.train.writer import BackgroundWriter

    cbs = create_callbacks("bench", checkpoint_path=None)
    cbs.early_stopping = keras.callbacks.EarlyStopping(**asdict(CallbackSettings().early_stopping))  # Keras's own
    saver = _saver(run_dir, cbs, BackgroundWriter(write_state, background=False), 0.0)
    best = keras.callbacks.ModelCheckpoint(
        str(run_dir / "best.keras"), monitor="val_top3_accuracy", mode="max", save_best_only=True
    )
    blocked = epoch_ends(model, [cbs.early_stopping, cbs.reduce_lr, best, saver], epochs)
    state = (run_dir / "resume" / "state.pkl").stat().st_size
    model_file = run_dir / "final.keras"
    model.save(model_file)
    files = state + (run_dir / "best.keras").stat().st_size
    return {
        "blocked_s": blocked,
        "state_bytes": state,
        "epoch_bytes": files,
        "run_bytes": model_file.stat().st_size + (run_dir / "best.keras").stat().st_size,
    }


def after(model, run_dir, epochs):
    """Today's path: the state a host copy for the background writer, the checkpoint a host copy."""
    from carclf.settings import TrainSettings
    from carclf.train.callbacks import create_callbacks
    from carclf.train.resume import write_state
    from carclf.train.writer import BackgroundWriter

    cbs = create_callbacks("bench", checkpoint_path=run_dir / "best.weights.h5")
    writer = BackgroundWriter(write_state)
    blocked = epoch_ends(model, [cbs.early_stopping, cbs.reduce_lr, cbs.checkpoint], epochs)
    saver = _saver(run_dir, cbs, writer, 0.0)
    saver.set_model(model)
    times = []
    for epoch in range(epochs + 1, epochs + 4):  # the state alone, the first a warm-up
        t0 = time.perf_counter()
        saver.save(epoch)
        times.append(time.perf_counter() - t0)
    copy = float(np.mean(times[1:]))
    t0 = time.perf_counter()
    writer.flush()
    write_s = time.perf_counter() - t0
    state = (run_dir / "resume" / "state.pkl").stat().st_size
    cbs.checkpoint.write(model)
    model_file = run_dir / "final.keras"
    model.save(model_file)
    return {
        "blocked_s": blocked,
        "copy_s": copy,
        "flush_s": write_s,
        "state_bytes": state,
        "interval": TrainSettings().state_interval,
        "run_bytes": model_file.stat().st_size + (run_dir / "best.weights.h5").stat().st_size,
    }


def per_tensor_s(count=400, repeats=5):
    """Seconds of fixed cost per tensor of a device copy and of a host fetch, measured here on scalars (the
    dispatch and bookkeeping a GPU pays as well, before any byte moves)."""
    import keras

    from carclf.train.callbacks import device_copy
    from carclf.train.resume import host_copy

    scalars = [keras.Variable(0.0) for _ in range(count)]
    out = {}
    for label, copy in (("device", device_copy), ("host", host_copy)):
        copy(scalars)
        t0 = time.perf_counter()
        for _ in range(repeats):
            copy(scalars)
        out[label] = (time.perf_counter() - t0) / (repeats * count)
    return out


def projected_gpu(model, fixed):
    """The after path's blocking projected onto one H100: the best weights copied in GPU memory, the state's
    variables fetched over PCIe, each tensor paying the fixed cost measured here."""
    from carclf.train.saving import variable_bytes

    weights = model.weights
    state = list(model.variables) + list(model.optimizer.variables)
    sizes = {"weights": variable_bytes(weights), "state": variable_bytes(state)}
    return {
        "fixed": fixed,
        "tensors": {"weights": len(weights), "state": len(state)},
        "bytes": sizes,
        "blocked_s": len(weights) * fixed["device"] + sizes["weights"] / GPU_COPY_BYTES_PER_S,
        "copy_s": len(state) * fixed["host"] + sizes["state"] / GPU_FETCH_BYTES_PER_S,
    }


def gpu_epoch_s(step_s, resnet50_step_s):
    resnet50 = TRAIN_IMAGES / GPU_RESNET50_IMAGES_PER_S + VALIDATION_IMAGES / (3 * GPU_RESNET50_IMAGES_PER_S)
    return resnet50 * (step_s / resnet50_step_s if step_s and resnet50_step_s else 1.0)


def measure_model(name, args, root, fixed):
    model = build(name, args.size, args.classes)
    row = {"model": name, "params": model.count_params(), "projected": projected_gpu(model, fixed)}
    row["step_s"] = None if args.no_rates else step_seconds(model, args.size, args.classes)
    for label, path in (("before", before), ("after", after)):
        run_dir = root / name / label
        run_dir.mkdir(parents=True, exist_ok=True)
        row[label] = path(model, run_dir, args.epochs)
        shutil.rmtree(run_dir, ignore_errors=True)
    return row


def shares(rows):
    ref = next((r["step_s"] for r in rows if r["model"] == "resnet50"), None)
    for r in rows:
        epoch = gpu_epoch_s(r["step_s"], ref)
        b, a = r["before"], r["after"]
        r["gpu_epoch_s"] = epoch
        r["share_before"] = b["blocked_s"] / epoch
        amortize = min(1.0, epoch / a["interval"]) if a["interval"] else 1.0
        a["amortized_copy_s"] = a["copy_s"] * amortize
        r["share_after"] = (a["blocked_s"] + a["amortized_copy_s"]) / epoch
        p = r["projected"]
        p["share"] = (p["blocked_s"] + p["copy_s"] * amortize) / epoch
    return rows


def mb(n):
    return f"{n / 1e6:,.0f} MB"


def print_table(rows, args):
    print(
        f"\n{args.size}x{args.size}, {args.classes} classes; validation improving every epoch; "
        f"state every {rows[0]['after']['interval']:g} s after the change\n"
    )
    print(
        "| model | params | GPU epoch s | before: blocked s | before: share | after: blocked s (copy) | "
        "after: share | H100 projected: blocked ms (copy) | projected share | state | written per epoch before | "
        "per finished run before / after |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        b, a, p = r["before"], r["after"], r["projected"]
        print(
            f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['gpu_epoch_s']:.1f} | {b['blocked_s']:.2f} | "
            f"{r['share_before']:.0%} | {a['blocked_s']:.3f} ({a['copy_s']:.3f}) | {r['share_after']:.1%} | "
            f"{1000 * p['blocked_s']:.1f} ({1000 * p['copy_s']:.0f}) | {p['share']:.2%} | "
            f"{mb(a['state_bytes'])} | {mb(b['epoch_bytes'])} | {mb(b['run_bytes'])} / {mb(a['run_bytes'])} |"
        )
    worst = max(r["share_after"] for r in rows)
    projected = max(r["projected"]["share"] for r in rows)
    print(
        f"\nlargest blocking share after: {worst:.1%} measured here, {projected:.2%} projected on one H100 "
        f"(target under {TARGET_SHARE:.0%}); one model file per finished run after (the checkpoint is weights only)"
    )
    fixed = rows[0]["projected"]["fixed"]
    print(
        f"projection: {fixed['device'] * 1e6:.0f} us per tensor copied and {fixed['host'] * 1e6:.0f} us per tensor "
        f"fetched (measured here), {GPU_COPY_BYTES_PER_S / 1e12:.2f} TB/s in GPU memory (published / 2), "
        f"{GPU_FETCH_BYTES_PER_S / 1e9:.0f} GB/s to the host (assumed)"
    )


def step_costs(tiny):
    """ms per training step of model1 on random 64x64 batches: the loss read every step or every 50, and
    steps_per_execution 1 or 4."""
    import keras

    from carclf.models import build as build_model
    from carclf.train.callbacks import StopOnNonFiniteLoss

    size, batch, steps = (32, 8, 40) if tiny else (64, 16, 120)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch * steps, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(batch * steps) % 10, 10)
    rows = []
    for label, every, spe in (
        ("loss read every step (before)", 1, 1),
        ("every 50 steps (after)", 50, 1),
        ("every 50, steps_per_execution 4", 50, 4),
    ):
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        model = build_model("model1", (size, size, 3), 10)
        model.compile(optimizer="adam", loss="categorical_crossentropy", steps_per_execution=spe)
        check = StopOnNonFiniteLoss("m", check_every=every)
        fit = {"batch_size": batch, "verbose": 0, "shuffle": False, "callbacks": [check]}
        model.fit(x[: batch * 8], y[: batch * 8], epochs=1, **fit)  # trace and warm up
        t0 = time.perf_counter()
        model.fit(x, y, epochs=1, **fit)
        rows.append((label, 1000 * (time.perf_counter() - t0) / steps))
    print(f"\nmodel1 training steps, {size}x{size}, batch {batch}, {steps} steps, {keras.backend.backend()} backend\n")
    print("| non-finite check | ms per step | vs before |")
    print("| --- | ---: | ---: |")
    for label, ms in rows:
        print(f"| {label} | {ms:.1f} | {ms / rows[0][1]:.2f}x |")
    return rows


def main():
    args = parse_args()
    from carclf.device import detect_accelerator

    root = args.root or Path(tempfile.mkdtemp(prefix="carclf-epoch-overhead-"))
    print(f"device: {detect_accelerator().describe()}; files under {root}")
    fixed = per_tensor_s()
    rows = []
    for name in args.models.split(","):
        t0 = time.perf_counter()
        rows.append(measure_model(name.strip(), args, root, fixed))
        print(f"{name}: measured in {time.perf_counter() - t0:.0f} s", flush=True)
    print_table(shares(rows), args)
    steps = step_costs(args.tiny)
    if args.json:
        args.json.write_text(json.dumps({"models": rows, "steps": steps}, indent=1, default=float))
    if args.root is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
