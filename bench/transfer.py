"""A transfer proxy: does the modern recipe beat the report's, and which of its parts carry the gain?

Neither ImageNet weights nor the Stanford Cars photographs can be had here, so the two steps of the real
thing are played out on synthetic cars:

1. *source*: a base (ResNet50, EfficientNetB0) is trained from random weights on many synthetic classes,
   and its base saved in keras.applications' no-top layout, the layout of the ImageNet file;
2. *target*: other synthetic classes, a few images each, the base loaded from that file with
   ``weights=<file>`` and fine-tuned by each arm: from scratch (random weights), the report's recipe, the
   modern recipe, and the modern recipe with each of its parts switched off in turn.

Every arm selects its epoch on a validation split of the target's training images; the test split is read
once per arm, after training. The table gives top-1 on the target's test images with a Wilson interval,
the difference to the modern recipe on the same images with a paired bootstrap interval and McNemar's
test, and each arm's wall time. Runs are cached under ``--root``: a rerun (or a killed one) continues.

    python bench/transfer.py [--bases resnet50,efficientnetb0] [--size 64] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

#: The modern recipe's parts, each switched off in turn: (arm, what it changes, the settings).
ABLATIONS = (
    ("- gap head", "the report's head (gates, Flatten or its pooling, 512 units)", {"hyperparams.head": "report"}),
    ("- two phases", "one phase: the whole network from step 0", {"train.two_phase": False}),
    ("- AdamW", "Adam, no weight decay", {"hyperparams.optimizer_type": "Adam", "hyperparams.weight_decay": None}),
    ("- warmup+cosine", "a constant learning rate", {"train.schedule": "report"}),
    ("- label smoothing", "plain cross-entropy", {"train.label_smoothing": 0.0}),
    ("- EMA", "the trained weights, not their average", {"train.ema": False}),
    ("- resized crop", "the report's seven transforms only", {"augment.pipeline": "report"}),
    ("- augmentation", "no augmentation", {"augment.augmentation": "none"}),
)

#: Source epochs per base: EfficientNetB0 from random weights, with its dropout and stochastic depth, needs
#: more than ResNet50 to learn its source classes at all (at 12 it scored 0.175 on 16 classes).
PRETRAIN_EPOCHS = {"resnet50": 12, "efficientnetb0": 30}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", default="resnet50,efficientnetb0")
    parser.add_argument("--ablate", default="resnet50", help="the bases whose modern recipe loses each part in turn")
    parser.add_argument("--size", type=int, default=64, help="square input size (64-96)")
    parser.add_argument("--source-classes", type=int, default=16)
    parser.add_argument("--source-per-class", type=int, default=20)
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="every base's (default: PRETRAIN_EPOCHS)")
    parser.add_argument("--target-classes", type=int, default=8)
    parser.add_argument("--target-per-class", type=int, default=10, help="training images per target class")
    parser.add_argument("--target-test", type=int, default=20, help="test images per target class")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bn-momentum", type=float, default=0.9, help="BatchNormalization's, in every arm")
    parser.add_argument("--root", type=Path, default=None, help="data and runs (kept; default data/bench/transfer)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: one base, three arms, two epochs")
    args = parser.parse_args()
    if args.tiny:
        args.bases, args.size, args.epochs, args.pretrain_epochs = "resnet50", 32, 3, 1
        args.source_classes, args.source_per_class, args.target_classes = 6, 6, 4
        args.target_per_class, args.target_test = 5, 4
    return args


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


def synthetic_split(root, first_class, n_classes, per_train, per_test, seed, size, cache):
    """Classes ``first_class .. first_class + n_classes - 1`` of the synthetic table, decoded at ``size``."""
    from carclf.data import load_stanford_cars
    from carclf.decoded import build_decoded_cache
    from carclf.settings import DecodeSettings
    from carclf.synthetic import make_synthetic

    make_synthetic(
        root,
        n_classes=first_class + n_classes,
        per_class_train=per_train,
        per_class_test=per_test,
        seed=seed,
        size_range=(64, 160),
        progress=False,
    )
    frame = load_stanford_cars(root)
    names = list(frame.attrs["class_names"])
    frame = frame[frame["class_id"] >= first_class].copy()
    frame["class_id"] -= first_class
    frame.attrs["class_names"] = names[first_class:]
    return build_decoded_cache(frame, cache, DecodeSettings(image_size=(size, size), crop="full"), progress=False)


# --------------------------------------------------------------------------- #
# Runs
# --------------------------------------------------------------------------- #


def ema_momentum(epochs, train_images, batch_size):
    """An EMA horizon of a tenth of the run's optimizer steps.

    The recipe's 0.99 averages over about 100 steps: right for Stanford Cars (255 steps an epoch), but
    the proxy's runs take a few dozen steps in all, and Keras's EMA starts from the first step's weights
    with no warm-up, so at 0.99 the averaged model would still be mostly the untrained head.
    """
    steps = epochs * math.ceil(train_images / batch_size)
    return min(0.99, max(0.5, 1 - 10 / steps))


def short_run_builder(name, bn_momentum):
    """The registered builder, its BatchNormalization layers' moving statistics following ``bn_momentum``.

    Keras's 0.99 needs hundreds of steps before the moving mean and variance forget their initial 0 and 1;
    the proxy's runs take a few dozen to a hundred, so at 0.99 a base trained from random weights is
    validated through statistics that are still mostly the initial ones (its validation loss explodes
    while its training accuracy climbs). Every arm gets the same builder.
    """
    import keras

    from carclf.models import model_spec

    builder = model_spec(name).builder

    def build(input_shape, num_classes, hyperparams=None):
        model = builder(input_shape, num_classes, hyperparams=hyperparams)
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
        return model

    build.__qualname__ = f"{builder.__qualname__}[bn_momentum={bn_momentum}]"
    return build


def arm_settings(recipe, epochs, batch_size, seed, changes=None):
    from carclf.settings import profile

    return profile(
        "demo",
        recipe=recipe,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        validation="split",
        validation_fraction=0.2,
        tta=recipe == "modern",
        **{
            "train.head_epochs": max(1, epochs // 6),
            "augment.workers": 2,
            "train.callbacks.checkpoint": None,  # the bench keeps the final weights only
            "train.tensorboard": False,
            "train.plot": False,
            **(changes or {}),
        },
    )


def train_arm(name, arm, run_settings, decoded, store, weights, size, bn_momentum):
    """One arm's run (cached by its stage key); returns (TrainResult, the generators)."""
    from carclf.augment import build_augmented_set
    from carclf.generators import make_generators
    from carclf.train import run_model_pipeline

    augment = run_settings.augment
    augmented = None
    if augment.augmentation == "offline":
        augmented = build_augmented_set(decoded["train"], store.cache, augment, run_settings.seed, progress=False)
    gens = make_generators(
        decoded,
        augment,
        batch_size=run_settings.train.batch_size,
        seed=run_settings.seed,
        validation_fraction=run_settings.evaluation.validation_fraction,
        augmented=augmented,
        cache=store.cache,
        progress=False,
    )
    hyperparams = {**run_settings.hyperparams.as_dict(), "weights": weights}
    result = run_model_pipeline(
        short_run_builder(name, bn_momentum),
        f"{name}-{arm_slug(arm)}",
        hyperparams,
        (size, size, 3),
        decoded["train"].num_classes,
        gens.train,
        gens.test,
        validation_generator=gens.validation,
        settings=run_settings.train,
        store=store,
        seed=run_settings.seed,
    )
    return result, gens


def wall_s(result, t0):
    """The run's own wall time when it was read from the cache, else the seconds since ``t0``."""
    return result.wall_min * 60 if result.loaded else time.perf_counter() - t0


def arm_slug(arm):
    return "".join(c if c.isalnum() else "-" for c in arm.lower()).strip("-").replace("--", "-")


def save_base(name, trained, path, size):
    """The trained model's base in keras.applications' no-top layout (the ImageNet file's)."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from carclf.models import model_spec

    spec = model_spec(name)
    base = spec.base.factory(include_top=False, weights=None, input_shape=(size, size, 3))
    trained_base = keras.Model(trained.inputs, trained.get_layer(spec.transfer_layer).output)
    # in order, as keras.applications loads the file: a second base built in one session has other
    # automatic layer names (EfficientNetB0's "normalization_1")
    weighted = [[layer for layer in model.layers if layer.weights] for model in (base, trained_base)]
    for layer, trained_layer in zip(*weighted, strict=True):
        layer.set_weights(trained_layer.get_weights())
    tmp = Path(f"{path}.tmp")
    with h5py.File(tmp, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)
    os.replace(tmp, path)
    return path


def pretrain(name, args, source, store, weights_dir):
    """The base trained on the source classes; its no-top weights file."""
    # no EMA while pretraining from random weights: the average would lag far behind a base still learning
    plain = {"train.two_phase": False, "train.ema": False}
    epochs = args.pretrain_epochs or PRETRAIN_EPOCHS.get(name, 12)
    settings = arm_settings("modern", epochs, 32, args.seed, plain)
    t0 = time.perf_counter()
    result, _ = train_arm(name, "source", settings, source, store, None, args.size, args.bn_momentum)
    # named by the source run's key, so that the arms (keyed by this path) follow a changed pretraining
    path = weights_dir / f"{name}_{args.size}px_notop_{result.key}.h5"
    if not path.is_file():
        save_base(name, result.load_model(compile=False), path, args.size)
    acc = result.test_metrics.get("accuracy", float("nan"))
    wall = wall_s(result, t0)
    print(f"{name}: pretrained on the source classes for {epochs} epochs, test top-1 {acc:.3f} ({wall:.0f} s)")
    return path


# --------------------------------------------------------------------------- #
# Scoring
# --------------------------------------------------------------------------- #


def correct_on_test(result, gens, tta):
    from carclf.evaluate import labels_in_order, predict_probabilities

    probabilities = np.load(result.test_probabilities_path)
    if tta:
        probabilities = predict_probabilities(result.load_model(compile=False), gens.test, tta=True)
    return probabilities.argmax(axis=1) == labels_in_order(gens.test)


def score(rows):
    """Top-1 with its interval; the difference to the modern recipe (paired bootstrap, McNemar)."""
    from carclf.stats import bootstrap_interval, mcnemar, wilson_interval

    reference = {row["base"]: row["correct"] for row in rows if row["arm"] == "modern"}
    for row in rows:
        correct = row["correct"]
        row["top1"] = float(correct.mean())
        row["top1_ci"] = wilson_interval(int(correct.sum()), correct.size)
        modern = reference[row["base"]]
        diff = correct.astype(float) - modern.astype(float)
        row["delta"] = float(diff.mean())
        row["delta_ci"] = bootstrap_interval(diff, seed=len(row["arm"]))
        row["p_value"] = mcnemar(correct, modern)["p_value"]
    return rows


def print_table(rows, args):
    print(
        f"\ntarget: {args.target_classes} synthetic classes, {args.target_per_class} training images each "
        f"(a fifth held out for validation), {args.target_test} test images each; {args.size} px whole images, "
        f"stretched; {args.epochs} epochs; BatchNormalization momentum {args.bn_momentum}; seed {args.seed}\n"
    )
    print("| base | arm | top-1 (95% CI) | vs modern (95% CI) | McNemar p | wall s |")
    print("| --- | --- | --- | --- | ---: | ---: |")
    for r in rows:
        lo, hi = r["top1_ci"]
        dlo, dhi = r["delta_ci"]
        versus = "" if r["arm"] == "modern" else f"{r['delta']:+.3f} ({dlo:+.3f}, {dhi:+.3f})"
        p = "" if r["arm"] == "modern" else f"{r['p_value']:.3g}"
        top1 = f"{r['top1']:.3f} ({lo:.3f}-{hi:.3f})"
        print(f"| {r['base']} | {r['arm']} | {top1} | {versus} | {p} | {r['wall_s']:.0f} |")


# --------------------------------------------------------------------------- #


def arms(args, name):
    """(arm, recipe, changes, weights from the source?): the three recipes, and the ablations on
    ``--ablate``'s bases."""
    listed = [
        ("scratch", "modern", {"train.two_phase": False}, False),
        ("report", "report", {}, True),
        ("modern", "modern", {}, True),
    ]
    if name in args.ablate.split(",") and not args.tiny:
        listed += [(arm, "modern", changes, True) for arm, _, changes in ABLATIONS]
    return listed


def run_base(name, args, source, target, store, weights_dir):
    weights = pretrain(name, args, source, store, weights_dir)
    rows = []
    train_images = round(args.target_classes * args.target_per_class * 0.8)
    momentum = ema_momentum(args.epochs, train_images, args.batch_size)
    for arm, recipe, changes, pretrained in arms(args, name):
        changes = {"train.ema_momentum": momentum, **changes}
        settings = arm_settings(recipe, args.epochs, args.batch_size, args.seed, changes)
        t0 = time.perf_counter()
        weights_file = str(weights) if pretrained else None
        result, gens = train_arm(name, arm, settings, target, store, weights_file, args.size, args.bn_momentum)
        correct = correct_on_test(result, gens, settings.evaluation.tta)
        wall = wall_s(result, t0)
        rows.append({"base": name, "arm": arm, "correct": correct, "wall_s": wall, "recipe": settings.recipe})
        print(f"{name} {arm}: top-1 {correct.mean():.3f} ({wall:.0f} s, {result.epochs_run} epochs)", flush=True)
        if arm == "modern":  # the same model without test-time augmentation: no second run
            plain = correct_on_test(result, gens, tta=False)
            rows.append({"base": name, "arm": "- flip TTA", "correct": plain, "wall_s": 0.0, "recipe": "custom"})
    return rows


def main():
    args = parse_args()
    from carclf.paths import Paths, Store

    root = args.root or Paths.default().data / "bench" / "transfer"
    store = Store.at(root)
    size, seed = args.size, args.seed
    t0 = time.perf_counter()
    n_source, n_target = args.source_classes, args.target_classes
    # the target's classes come first in the synthetic table, the source's after them: no class is in both
    source = synthetic_split(
        root / "source", n_target, n_source, args.source_per_class, 5, seed + 11, size, store.cache
    )
    target = synthetic_split(
        root / "target", 0, n_target, args.target_per_class, args.target_test, seed + 23, size, store.cache
    )
    print(f"data: {n_source} source classes, {n_target} target classes ({time.perf_counter() - t0:.0f} s)")
    weights_dir = root / "weights"
    weights_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.bases.split(","):
        rows += run_base(name.strip(), args, source, target, store, weights_dir)
    print_table(score(rows), args)
    print(f"\ntotal wall time: {(time.perf_counter() - t0) / 60:.1f} min")
    if args.json:
        plain = [{k: v for k, v in r.items() if k != "correct"} for r in rows]
        args.json.write_text(json.dumps(plain, indent=1))


if __name__ == "__main__":
    main()
