"""Wall time of one hyperparameter-search trial per model at the full profile's settings, and the search projected.

For each model (all eight, or ``--models``) this runs ONE search trial the way the full profile's search
runs it: ``carclf.search.run_search(name, decoded["train"], settings, hyperparams=fixed, training=...,
seed=0, store=Store.at(tmp), optimizer=...)``, as ``carclf.workflow.stages.search_hyperparameters`` calls
it, with

- ``settings``: the full profile's ``SearchSettings`` (``input_size`` 160x160, ``validation_fraction``
  0.2, the skopt backend, EarlyStopping on ``val_loss``) with ``n_trials=1``, ``epochs=--epochs`` (2) and
  ``subsample=--subsample`` images (a count; the full profile takes 0.5 of the 8,144; here, by default,
  192, 0.5 of the 384 images of 64 of the 196 classes, 3 per class: the fewest that give each class a
  validation image at the 0.2 fraction, so 196 classes would need 588; the models keep their 196-way head);
- ``training``: the full profile's ``TrainSettings`` (the modern recipe: batch 32, warmup-cosine schedule,
  label smoothing, EMA; the search itself turns two-phase training, the checkpoint and TensorBoard off);
- ``hyperparams``: the full profile's defaults for the model less what is searched (as the stage derives
  them), with ``weights=None`` (no ImageNet weights here; every layer trains either way);
- the data: a synthetic Stanford-Cars-like set (196 classes, ``--per-class`` images each, drawn by
  ``carclf.synthetic.make_synthetic``) decoded once at the full profile's 224x224 (the search's views
  resize to 160x160 as they read, as in the real run).

A Keras callback, added by wrapping ``carclf.train.run_model_pipeline`` (``run_trial`` looks it up when
called), times each epoch's training steps, its validation, and the callbacks at its end (the state
save). The steady epoch takes each part's fastest time over the epochs (the first epoch also traces the
graphs; on a shared machine another job can slow any epoch) and the last epoch's end (the end of the
phase, which always takes the resume state, as every epoch of the full profile's minutes-long epochs
does): its training and validation images/s are this CPU's rates. What the trial took beyond ``epochs``
steady epochs is its
fixed cost: preparing the search, building and compiling the model, tracing, saving it at the end.

From these it projects, on this CPU, the full profile's trial (about 3,258 training and 814 validation
images per epoch: 0.5 of 8,144, a fifth of it held out) for one and for five epochs, and each model's
search of 20 trials: without pruning (every trial runs its 5 epochs: an upper bound), and with Optuna's
``HyperbandPruner(min_resource=1, max_resource=5, reduction_factor=3)``, whose expected epochs per trial
are simulated here with the real pruner (20-trial studies of random learning curves).

On one H100 nothing is measured (bench/RESULTS.md, "GPU: pending"): the projection scales every model's
compute by ResNet50's speed-up, bench/train_speed.py's target of 2,700 images/s at 224x224 (mixed
precision), taken at 160x160 by the pixel count, over this CPU's ResNet50 rate at the same size; no part
of an epoch runs faster than the trial's generator (``ImageBatches``, one thread, resizing to 160x160 as
it reads) delivers on this CPU, measured alone; the fixed per-trial cost and the epoch-end callbacks stay
as measured here. A projection, not a measurement.

Usage::

    python bench/search_time.py                                  # all eight, 192 images, 2 epochs
    python bench/search_time.py --models model1,resnet50 --json out.json
    python bench/search_time.py --models model1 --classes 4 --per-class 6 --subsample 12 \\
        --image-size 32 --input-size 32 --hyperband-studies 5    # a smoke run (tests/test_bench.py)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

#: The real training set (Stanford Cars).
TRAIN_IMAGES = 8144
#: bench/train_speed.py's target for one H100 (ResNet50, mixed precision, 224x224): not a measurement.
H100_RESNET50_IMAGES_PER_S = 2700
H100_RESNET50_SIZE = 224
#: This machine's ResNet50 training rate at 224x224, batch 32 (bench/RESULTS.md, "Stanford-Cars scale"):
#: the reference when ResNet50 is not among the models measured.
CPU_RESNET50_IMAGES_PER_S_224 = 3.7
#: The Hyperband pruner the full profile's search is moving to.
HYPERBAND = {"min_resource": 1, "max_resource": 5, "reduction_factor": 3}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=None, help="comma-separated model names (default: all eight)")
    parser.add_argument(
        "--classes", type=int, default=196, help="classes of the synthetic set and the models' heads (default 196)"
    )
    parser.add_argument(
        "--sampled-classes",
        type=int,
        default=64,
        help="classes the trial's images come from (default 64: three images each make the trial's 192)",
    )
    parser.add_argument(
        "--per-class", type=int, default=6, help="synthetic training images per class (default 6: 1,176 in all)"
    )
    parser.add_argument(
        "--subsample",
        type=int,
        default=None,
        help="images the trial's search subsamples (default 3 per sampled class, 192: the fewest that give "
        "every class a validation image at the 0.2 fraction)",
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="decoded cache size (default: the full profile's, 224)"
    )
    parser.add_argument(
        "--input-size", type=int, default=None, help="the search's input size (default: the full profile's, 160)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="epochs of the timed trial (2 or more: one is the first, traced; default 2)",
    )
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the full profile's, 32)")
    parser.add_argument(
        "--hyperband-studies", type=int, default=100, help="simulated 20-trial studies for Hyperband's expectation"
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="where the synthetic set and its cache go (default data/bench/...)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here (after every model)")
    parser.add_argument(
        "--reproject", type=Path, default=None, help="measure nothing: project a saved --json run again"
    )
    parser.add_argument("--budget-s", type=float, default=None, help="start no new model after this many seconds")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- #
# Data and settings
# --------------------------------------------------------------------------- #


def cpu_label():
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            name = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), name)
    except OSError:
        pass
    return f"CPU, {os.cpu_count()} cores ({name})"


def prepare_data(root, classes, per_class, size):
    """The synthetic set's training split decoded at ``size`` (box crops), as the search's input takes it."""
    from carclf.cache import StageCache
    from carclf.data import load_stanford_cars
    from carclf.decoded import build_decoded_cache
    from carclf.settings import DecodeSettings
    from carclf.synthetic import make_synthetic

    t0 = time.perf_counter()
    make_synthetic(
        root / "cars",
        n_classes=classes,
        per_class_train=per_class,
        per_class_test=1,
        size_range=(max(64, size), max(96, 2 * size)),
        seed=1,
        progress=False,
    )
    frame = load_stanford_cars(root / "cars")
    decoded = build_decoded_cache(
        frame[frame["split"] == "train"],
        StageCache(root / "pickles"),
        DecodeSettings(image_size=(size, size)),
        progress=False,
    )
    return decoded["train"], time.perf_counter() - t0


def sampled_split(split, classes):
    """The rows of ``split``'s first ``classes`` classes, as a split that keeps all its classes (the head)."""
    from carclf.splits import SplitView

    if classes >= split.num_classes:
        return split
    return SplitView(split, np.flatnonzero(np.asarray(split.class_ids) < classes), "train")


def full_profile_trial(full):
    """The full profile's trial data: training and validation images per epoch, as the search carves them.

    0.5 of the 8,144 training images, a fifth of them held out (per class the split rounds up, by one
    image at most, which this leaves out)."""
    rows = round(TRAIN_IMAGES * full.search.subsample)
    val = round(rows * full.search.validation_fraction)
    return rows - val, val


def fixed_hyperparams(full, name):
    """The model's fixed hyperparameters as the search stage derives them (its defaults less the searched),
    with ``weights=None``; and the run's optimizer."""
    from carclf.search import search_space

    own = {**full.hyperparams_for(name).as_dict(), "weights": None}
    searched = search_space(full.search.adam_only, optimizer=own["optimizer_type"], schedule=full.train.schedule)
    return {k: v for k, v in own.items() if k not in searched}, own["optimizer_type"]


# --------------------------------------------------------------------------- #
# One trial, timed
# --------------------------------------------------------------------------- #


class EpochClock:
    """Times a trial's ``fit`` from inside: each epoch's training steps, validation, and epoch-end callbacks.

    It is the last callback (``run_model_pipeline`` runs extra callbacks after the epoch's state is saved),
    so an epoch's end includes the other callbacks' work. Nothing is synchronised: TensorFlow's trainer
    reads every step's logs back, so the steps are done when their batch ends.
    """

    def __init__(self):
        import keras

        clock = self

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                clock.fit_begin = time.perf_counter()

            def on_epoch_begin(self, epoch, logs=None):
                clock.epochs.append({"begin": time.perf_counter()})

            def on_test_begin(self, logs=None):
                if clock.epochs:
                    clock.epochs[-1]["test_begin"] = time.perf_counter()

            def on_test_end(self, logs=None):
                if clock.epochs:
                    clock.epochs[-1]["test_end"] = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                clock.epochs[-1]["end"] = time.perf_counter()

            def on_train_end(self, logs=None):
                clock.fit_end = time.perf_counter()

        self.callback = Callback()
        self.reset()

    def reset(self):
        self.epochs, self.fit_begin, self.fit_end = [], None, None
        self.call_begin = self.call_end = None
        self.train_images = self.val_images = None

    def epoch(self, index):
        e = self.epochs[index]
        test_begin, test_end = e.get("test_begin", e["end"]), e.get("test_end", e["end"])
        return {
            "train_s": test_begin - e["begin"],
            "val_s": test_end - test_begin,
            "end_s": e["end"] - test_end,
            "epoch_s": e["end"] - e["begin"],
        }


def _images(generator):
    split = getattr(generator, "split", None)
    return len(split) if split is not None else None


def clocked_pipeline(clock):
    """``carclf.train.run_model_pipeline`` with ``clock``'s callback added; the original to restore."""
    import carclf.train

    real = carclf.train.run_model_pipeline

    def run_model_pipeline(*args, extra_callbacks=(), **kwargs):
        clock.reset()
        clock.train_images = _images(args[5] if len(args) > 5 else kwargs.get("train_generator"))
        clock.val_images = _images(args[6] if len(args) > 6 else kwargs.get("test_generator"))
        clock.call_begin = time.perf_counter()
        try:
            return real(*args, extra_callbacks=[*extra_callbacks, clock.callback], **kwargs)
        finally:
            clock.call_end = time.perf_counter()

    return run_model_pipeline, real


def time_trial(name, split, full, search, training, clock, work):
    """One search trial of ``name`` through ``run_search``, timed; its figures."""
    import keras

    import carclf.train
    from carclf.paths import Store
    from carclf.search import run_search

    fixed, optimizer = fixed_hyperparams(full, name)
    keras.backend.clear_session()
    gc.collect()
    wrapped, real = clocked_pipeline(clock)
    carclf.train.run_model_pipeline = wrapped
    try:
        t0 = time.perf_counter()
        result = run_search(
            name,
            split,
            search.override(model=name),
            hyperparams=fixed,
            training=training,
            seed=0,
            store=Store.at(work),
            optimizer=optimizer,
        )
        wall = time.perf_counter() - t0
    finally:
        carclf.train.run_model_pipeline = real
        keras.backend.clear_session()
        gc.collect()
    trial = result.trials.iloc[0].to_dict() if hasattr(result, "trials") else {}
    if len(clock.epochs) != search.epochs:
        raise RuntimeError(f"{name}: the trial ran {len(clock.epochs)} epochs, not {search.epochs} ({trial})")
    epochs = [clock.epoch(i) for i in range(len(clock.epochs))]
    steady = {
        "train_s": min(e["train_s"] for e in epochs),
        "val_s": min(e["val_s"] for e in epochs),
        "end_s": epochs[-1]["end_s"],
    }
    steady["epoch_s"] = steady["train_s"] + steady["val_s"] + steady["end_s"]
    row = {
        "model": name,
        "trial_state": trial.get("state"),
        "train_images": clock.train_images,
        "val_images": clock.val_images,
        "epochs": len(epochs),
        "trial_wall_s": wall,
        "epoch_times": epochs,
        "steady_epoch_s": steady["epoch_s"],
        "train_images_per_s": clock.train_images / steady["train_s"],
        "eval_images_per_s": clock.val_images / steady["val_s"],
        "epoch_end_s": steady["end_s"],
        "before_fit_s": clock.fit_begin - t0,
        "after_fit_s": t0 + wall - clock.fit_end,
        "first_epoch_extra_s": epochs[0]["epoch_s"] - steady["epoch_s"],
    }
    # What the trial took beyond its epochs at the steady rate: preparing, building, compiling, tracing, saving.
    row["fixed_s"] = wall - len(epochs) * steady["epoch_s"]
    row["one_epoch_trial_wall_s"] = wall - (len(epochs) - 1) * steady["epoch_s"]
    return row


def generator_rates(split, full, search, training, min_s=1.0):
    """Images/s of the trial's generators alone: ``ImageBatches`` over the search's training view (shuffled)
    and validation view, built as ``run_trial`` builds them (one thread; each image resized to the search's
    input size as it is read), the best of passes over them for ``min_s`` seconds after a first one."""
    from carclf.generators import ImageBatches
    from carclf.search.objective import prepare

    with tempfile.TemporaryDirectory(prefix="search-time-generator-") as work:
        from carclf.paths import Store

        fixed, optimizer = fixed_hyperparams(full, "model1")
        ctx = prepare(
            "model1",
            split,
            search,
            hyperparams=fixed,
            training=training,
            seed=0,
            store=Store.at(work),
            optimizer=optimizer,
        )
    rates = {}
    for part, view, shuffle in (("train", ctx.train_view, True), ("val", ctx.val_view, False)):
        gen = ImageBatches(view, training.batch_size, shuffle=shuffle, seed=0)
        best, spent, passes = 0.0, 0.0, 0
        while passes < 2 or spent < min_s:
            t0 = time.perf_counter()
            images = sum(len(gen[i][0]) for i in range(len(gen)))
            took = time.perf_counter() - t0
            if passes:  # the first pass pages the memmap in
                best, spent = max(best, images / took), spent + took
            passes += 1
        rates[part] = best
    return rates


# --------------------------------------------------------------------------- #
# Hyperband's expected epochs per trial
# --------------------------------------------------------------------------- #


def hyperband_epochs(n_trials, max_epochs, studies, seed=0):
    """Mean epochs per trial under Optuna's HyperbandPruner (``HYPERBAND``) in ``studies`` studies of
    ``n_trials`` trials, each a random learning curve (a trial's level plus a decaying term and noise).

    Each epoch is reported at the number of epochs done (1, 2, ...), as the search's pruning callback does.
    The bracket of a trial depends on the study's name (a CRC of it): the studies are named like the
    search's, ``<model>-<key>``, with random keys.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(seed)
    means, pruned = [], 0
    for k in range(studies):
        study = optuna.create_study(
            study_name=f"model-{rng.integers(1 << 62):016x}",
            direction="minimize",
            sampler=optuna.samplers.RandomSampler(seed=k),
            pruner=optuna.pruners.HyperbandPruner(**HYPERBAND),
        )

        def objective(trial):
            level = rng.uniform(0.0, 1.0)
            for epoch in range(max_epochs):
                value = level + 1.0 / (epoch + 1) + rng.normal(0.0, 0.02)
                trial.set_user_attr("epochs", epoch + 1)
                trial.report(value, epoch + 1)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            return value

        study.optimize(objective, n_trials=n_trials)
        means.append(np.mean([t.user_attrs["epochs"] for t in study.trials]))
        pruned += sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return {
        "epochs_per_trial": float(np.mean(means)),
        "min": float(np.min(means)),
        "max": float(np.max(means)),
        "pruned_share": pruned / (studies * n_trials),
        "studies": studies,
    }


def hyperband_asymptotic(max_epochs):
    """Epochs per trial with infinitely many trials: each bracket's successive halving keeps the best
    1/reduction_factor at each rung; the brackets take Optuna's allocation budgets."""
    r, eta, top = HYPERBAND["min_resource"], HYPERBAND["reduction_factor"], HYPERBAND["max_resource"]
    n = math.floor(math.log(top / r, eta)) + 1
    budgets = [math.ceil(n * eta ** (n - 1 - b) / (n - b)) for b in range(n)]
    total = 0.0
    for bracket, budget in enumerate(budgets):
        epochs, alive = 0.0, 1.0
        start = 0
        for rung in range(bracket, 64):
            step = r * eta**rung
            stop = step  # epochs done when the rung is checked
            if stop >= max_epochs:
                break
            epochs += alive * (stop - start)
            alive /= eta
            start = stop
        epochs += alive * (max_epochs - start)
        total += budget * epochs
    return total / sum(budgets)


# --------------------------------------------------------------------------- #
# Projections and output
# --------------------------------------------------------------------------- #


def project(row, full_train, full_val, n_trials, max_epochs, hb_epochs, speedup, generator):
    """The full profile's trial and search for ``row``'s model, on this CPU and on one H100.

    On the H100 each part of an epoch takes the longer of the model's compute (this CPU's over ``speedup``)
    and the generator's delivery at the rate measured here (overlapped: an optimistic assumption)."""
    train, val = full_train / row["train_images_per_s"], full_val / row["eval_images_per_s"]
    compute = train + val
    epoch = compute + row["epoch_end_s"]
    h100_train = max(train / speedup, full_train / generator["train"])
    h100_val = max(val / speedup, full_val / generator["val"])
    h100_epoch = h100_train + h100_val + row["epoch_end_s"]
    fixed = row["fixed_s"]
    return {
        "full_epoch_s": epoch,
        "full_trial_1_epoch_min": (fixed + epoch) / 60,
        "full_trial_min": (fixed + max_epochs * epoch) / 60,
        "search_hyperband_min": n_trials * (fixed + hb_epochs * epoch) / 60,
        "search_no_pruning_min": n_trials * (fixed + max_epochs * epoch) / 60,
        "h100_epoch_s": h100_epoch,
        "h100_input_bound": full_train / generator["train"] > train / speedup,
        "h100_search_hyperband_min": n_trials * (fixed + hb_epochs * h100_epoch) / 60,
        "h100_search_no_pruning_min": n_trials * (fixed + max_epochs * h100_epoch) / 60,
        "h100_search_epochs_only_hyperband_min": n_trials * hb_epochs * h100_epoch / 60,
    }


def _f(value, digits=1):
    return f"{value:,.{digits}f}"


def table(rows, meta):
    e, hb = meta["epochs"], meta["hyperband"]["epochs_per_trial"]
    lines = [
        f"| model | CPU train images/s | CPU eval images/s | measured trial wall s ({meta['subsample_rows']} images, "
        f"{e} epoch{'s' if e > 1 else ''}) | of which fixed s | full trial min, 1 epoch | full trial min, "
        f"{meta['max_epochs']} epochs | CPU search min, Hyperband ({hb:.2f} epochs) | CPU search min, no pruning "
        f"| H100 search min, Hyperband | H100 search min, no pruning |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['skipped']} | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {_f(r['train_images_per_s'], 2)} | {_f(r['eval_images_per_s'], 2)} "
            f"| {_f(r['trial_wall_s'])} | {_f(r['fixed_s'])} | {_f(r['full_trial_1_epoch_min'])} "
            f"| {_f(r['full_trial_min'])} | {_f(r['search_hyperband_min'], 0)} | {_f(r['search_no_pruning_min'], 0)} "
            f"| {_f(r['h100_search_hyperband_min'])} | {_f(r['h100_search_no_pruning_min'])} |"
        )
    return "\n".join(lines)


def summary(rows, meta):
    done = [r for r in rows if "skipped" not in r]
    if not done:
        return ["no model was measured"]
    which = "all eight models" if len(done) == 8 else f"{len(done)} model(s)"
    total = {k: sum(r[k] for r in done) for k in done[0] if k.startswith(("search_", "h100_search_"))}
    hb = meta["hyperband"]
    lines = [
        f"trial wall on this CPU ({meta['device']}, shared with other jobs), measured, one search trial through "
        f"run_search ({meta['subsample_rows']} images of {meta['sampled_classes']} classes: "
        f"{done[0]['train_images']} training + {done[0]['val_images']} validation, {meta['classes']}-way head, "
        f"{meta['input_size']}x{meta['input_size']}, batch {meta['batch']}, "
        f"{meta['epochs']} epochs): "
        + ", ".join(f"{r['model']} {r['trial_wall_s']:.0f} s" for r in done)
        + "; the same trial with one epoch (less its steady last epoch): "
        + ", ".join(f"{r['model']} {r['one_epoch_trial_wall_s']:.0f} s" for r in done),
        f"full profile's trial ({meta['full_train']:,} training + {meta['full_val']:,} validation images, "
        f"{meta['max_epochs']} epochs) on this CPU: "
        + ", ".join(f"{r['model']} {r['full_trial_min']:.0f} min" for r in done),
        f"projected search of {which} on this CPU ({meta['n_trials']} trials each): Hyperband "
        f"{_f(total['search_hyperband_min'], 0)} min ({_f(total['search_hyperband_min'] / 60)} h), no pruning "
        f"{_f(total['search_no_pruning_min'], 0)} min ({_f(total['search_no_pruning_min'] / 60)} h)",
        f"projected search of {which} on one H100 (a projection: nothing measured on a GPU): Hyperband "
        f"{_f(total['h100_search_hyperband_min'])} min ({_f(total['h100_search_hyperband_min'] / 60, 2)} h), no "
        f"pruning {_f(total['h100_search_no_pruning_min'])} min "
        f"({_f(total['h100_search_no_pruning_min'] / 60, 2)} h); the epochs alone (no fixed per-trial cost), "
        f"Hyperband: {_f(total['h100_search_epochs_only_hyperband_min'])} min; per model (Hyperband / no pruning): "
        + ", ".join(
            f"{r['model']} {r['h100_search_hyperband_min']:.1f} / {r['h100_search_no_pruning_min']:.1f}" for r in done
        ),
        f"H100 assumption: every model's compute runs {_f(meta['speedup'], 0)}x faster than here, ResNet50's "
        f"speed-up ({H100_RESNET50_IMAGES_PER_S:,} images/s at {H100_RESNET50_SIZE}x{H100_RESNET50_SIZE}, "
        f"bench/train_speed.py's target, taken at {meta['input_size']}x{meta['input_size']} by the pixel count: "
        f"{_f(meta['h100_resnet50_images_per_s'], 0)}; over {meta['cpu_resnet50_source']}), but no faster than "
        f"the trial's one-thread generator delivers here ({_f(meta['generator_images_per_s']['train'], 0)} training "
        f"/ {_f(meta['generator_images_per_s']['val'], 0)} validation images/s; input-bound: "
        f"{', '.join(r['model'] for r in done if r['h100_input_bound']) or 'none'}); the fixed per-trial cost "
        f"and the epoch-end callbacks as measured here",
        f"Hyperband (Optuna HyperbandPruner min_resource={HYPERBAND['min_resource']}, max_resource="
        f"{HYPERBAND['max_resource']}, reduction_factor={HYPERBAND['reduction_factor']}): {hb['epochs_per_trial']:.2f} "
        f"epochs per trial ({hb['min']:.2f} to {hb['max']:.2f} over {hb['studies']} simulated {meta['n_trials']}-trial "
        f"studies, {100 * hb['pruned_share']:.0f} % of trials pruned), the epochs reported as epochs done as "
        f"the search's pruning callback does; with unboundedly many trials {meta['hyperband_asymptotic']:.2f}; "
        f"no pruning: {meta['max_epochs']}",
    ]
    return lines


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #


def project_all(rows, meta):
    """Project every measured row of ``meta`` (``rows``), then print the table and the summary."""
    done = [r for r in rows if "skipped" not in r]
    full_train, full_val, n_trials, max_epochs = (meta[k] for k in ("full_train", "full_val", "n_trials", "max_epochs"))
    input_size, generator, hb = meta["input_size"], meta["generator_images_per_s"], meta["hyperband"]
    resnet = next((r for r in done if r["model"] == "resnet50"), None)
    pixels = (H100_RESNET50_SIZE / input_size) ** 2
    if resnet:
        cpu_resnet = resnet["train_images_per_s"]
        meta["cpu_resnet50_source"] = f"this run's ResNet50, {cpu_resnet:.2f} images/s"
    else:
        cpu_resnet = CPU_RESNET50_IMAGES_PER_S_224 * pixels
        meta["cpu_resnet50_source"] = (
            f"bench/RESULTS.md's ResNet50 on this CPU, {CPU_RESNET50_IMAGES_PER_S_224} images/s at 224x224, "
            f"by the pixel count {cpu_resnet:.2f} (ResNet50 was not measured in this run)"
        )
    meta["h100_resnet50_images_per_s"] = H100_RESNET50_IMAGES_PER_S * pixels
    meta["speedup"] = meta["h100_resnet50_images_per_s"] / cpu_resnet
    for row in done:
        row.update(
            project(row, full_train, full_val, n_trials, max_epochs, hb["epochs_per_trial"], meta["speedup"], generator)
        )
    meta["totals"] = {k: sum(r[k] for r in done) for k in (done[0] if done else {}) if "search_" in k}

    print()
    print(table(rows, meta))
    print()
    for line in summary(rows, meta):
        print(line)


def reproject(path, studies):
    """The projections of a saved run (``--json``) again, with this script's Hyperband simulation."""
    meta = json.loads(Path(path).read_text())
    meta["hyperband"] = hyperband_epochs(meta["n_trials"], meta["max_epochs"], studies)
    meta["hyperband_asymptotic"] = hyperband_asymptotic(meta["max_epochs"])
    print(f"# re-projected from {path} (measured {meta['device']}, shared machine: {meta['shared_machine']})")
    project_all(meta["rows"], meta)
    return meta


def main(argv=None):
    args = parse_args(argv)
    if args.reproject:
        return reproject(args.reproject, args.hyperband_studies)
    started = time.perf_counter()
    import keras

    from carclf.device import configure
    from carclf.models import MIN_INPUT_SIZE, NAMES
    from carclf.paths import Paths
    from carclf.settings import profile

    names = [n.strip() for n in args.models.split(",")] if args.models else list(NAMES)
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {', '.join(NAMES)}")
    full = profile("full")
    image_size = args.image_size or full.data.decode.image_size[0]
    input_size = args.input_size or full.search.input_size[0]
    small = [n for n in names if MIN_INPUT_SIZE[n] > input_size]
    if small:
        raise SystemExit(f"--input-size {input_size} is below the minimum of {small}")
    sampled = min(args.sampled_classes, args.classes)
    subsample = args.subsample or 3 * sampled
    if subsample > sampled * args.per_class:
        raise SystemExit(f"--subsample {subsample} is more than the sampled classes' {sampled * args.per_class} images")
    search = full.search.override(n_trials=1, epochs=args.epochs, subsample=subsample, input_size=(input_size,) * 2)
    training = full.train.override(batch_size=args.batch) if args.batch else full.train
    full_train, full_val = full_profile_trial(full)

    device = configure(training.mixed_precision, training.jit_compile)
    label = cpu_label() if device.accelerator.kind == "cpu" else device.accelerator.describe()
    print(f"# device: {device.accelerator.describe()}; {label}", flush=True)
    print(
        f"# Keras {keras.__version__} on {keras.backend.backend()}; dtype policy {device.policy}, XLA "
        f"{device.jit_compile}; search: {search.backend}, subsample {subsample} images, {input_size}x{input_size}, "
        f"validation fraction {search.validation_fraction}, {search.epochs} epoch(s); training: the full "
        f"profile's ({full.recipe} recipe), batch {training.batch_size}, weights=None",
        flush=True,
    )
    root = args.root or Paths.default().data / "bench" / f"search-time-{args.classes}x{args.per_class}-{image_size}"
    decoded, data_s = prepare_data(Path(root), args.classes, args.per_class, image_size)
    split = sampled_split(decoded, sampled)
    print(
        f"# data: {len(decoded):,} synthetic training images, {args.classes} classes, decoded at "
        f"{image_size}x{image_size} in {data_s:.1f} s ({root}); the trial reads the {len(split):,} of "
        f"{sampled} classes (a {args.classes}-way head either way)",
        flush=True,
    )
    generator = generator_rates(split, full, search, training)
    print(
        f"# generator: ImageBatches over the trial's views (one thread, resized to {input_size}x{input_size} as "
        f"read) delivers {generator['train']:,.0f} training / {generator['val']:,.0f} validation images/s",
        flush=True,
    )
    t0 = time.perf_counter()
    max_epochs, n_trials = full.search.epochs, full.search.n_trials
    hb = hyperband_epochs(n_trials, max_epochs, args.hyperband_studies)
    asymptotic = hyperband_asymptotic(max_epochs)
    print(f"# Hyperband: {hb['epochs_per_trial']:.2f} epochs per trial; simulated in {time.perf_counter() - t0:.1f} s")

    rows = []
    meta = {
        "device": label,
        "accelerator": device.accelerator.describe(),
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "policy": device.policy,
        "jit_compile": device.jit_compile,
        "classes": args.classes,
        "sampled_classes": sampled,
        "images": len(decoded),
        "sampled_images": len(split),
        "image_size": image_size,
        "input_size": input_size,
        "subsample_rows": subsample,
        "batch": training.batch_size,
        "epochs": args.epochs,
        "max_epochs": max_epochs,
        "n_trials": n_trials,
        "full_train": full_train,
        "full_val": full_val,
        "hyperband": hb,
        "hyperband_asymptotic": asymptotic,
        "hyperband_settings": HYPERBAND,
        "generator_images_per_s": generator,
        "shared_machine": True,
        "rows": rows,
    }

    def save():
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(meta, indent=2, default=str))

    clock = EpochClock()
    for name in names:
        if args.budget_s and time.perf_counter() - started > args.budget_s:
            rows.append({"model": name, "skipped": "skipped (time budget)"})
            print(f"# {name}: skipped, past the {args.budget_s:.0f} s budget", flush=True)
            continue
        print(f"# {name} ...", flush=True)
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix=f"search-time-{name}-") as work:
            row = time_trial(name, split, full, search, training, clock, work)
        row["load_average"] = [load_before, os.getloadavg()[0]]  # 1-minute, before and after (2 cores)
        print(
            f"# {name}: trial {row['trial_wall_s']:.1f} s ({row['trial_state']}), steady epoch "
            f"{row['steady_epoch_s']:.1f} s, {row['train_images_per_s']:.2f} training / "
            f"{row['eval_images_per_s']:.2f} validation images/s, fixed {row['fixed_s']:.1f} s; load average "
            f"{row['load_average'][0]:.1f} -> {row['load_average'][1]:.1f}",
            flush=True,
        )
        rows.append(row)
        save()

    project_all(rows, meta)
    meta["wall_s"] = time.perf_counter() - started
    print(f"total wall time of this benchmark: {meta['wall_s']:.0f} s")
    save()
    return meta


if __name__ == "__main__":
    main()
