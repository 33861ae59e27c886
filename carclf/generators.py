"""The train and test generators (the report's step 9): batches for ``model.fit``.

An :class:`ImageBatches` is a ``keras.utils.PyDataset``, so it feeds ``fit`` on any Keras backend without
tf.data. It reads uint8 images from a split (no JPEG decoding), shuffles per epoch from ``(seed, epoch)`` so a
resumed run sees the order it would have seen, and keeps the last partial batch.
"""

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import math
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from carclf.augment import AugmentedSet, OnlineAugment, batch_mixer, build_augmented_set, pipeline_for
from carclf.cache import canonical, qualname
from carclf.settings import AugmentSettings, DecodeSettings, check_positive_int
from carclf.splits import ConcatSplit, SplitView, validation_split


class ImageBatches(keras.utils.PyDataset):
    """Batches of ``(images float32 0-255, one-hot labels float32)``.

    Args:
        split: a :class:`carclf.decoded.DecodedSplit` (anything with ``read``,
            ``class_ids``, ``num_classes`` and ``__len__``).
        batch_size: images per batch; the last batch holds the remainder.
        shuffle: a new order each epoch (training); off for evaluation.
        seed: seeds the per-epoch order and the per-batch augmentation.
        augment: optional ``augment(images_uint8, rng) -> images_uint8``,
            applied to each batch (online augmentation).
        mix: optional ``mix(images_float32, labels, rng=rng) -> (images, labels)``
            (CutMix or MixUp), applied after ``augment``. ``rng`` is passed by
            keyword, so ``functools.partial(carclf.augment.cutmix, alpha=1.0)``
            fits.
        **kwargs: passed to ``PyDataset`` (``workers``, ``use_multiprocessing``,
            ``max_queue_size``).
    """

    def __init__(self, split, batch_size=32, shuffle=True, seed=0, augment=None, mix=None, **kwargs):
        super().__init__(**kwargs)
        self.split = split
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        self.mix = mix
        self.epoch = 0
        self._order = split.order(shuffle, seed, 0)

    def set_epoch(self, epoch):
        """Jump to ``epoch``'s order (a resumed run starts where it stopped)."""
        self.epoch = int(epoch)
        self._order = self.split.order(self.shuffle, self.seed, self.epoch)

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def __len__(self):
        return math.ceil(len(self.split) / self.batch_size)

    def batch_indices(self, index):
        """The split's row numbers that make up batch ``index`` of the current epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        return self._order[index * self.batch_size : (index + 1) * self.batch_size]

    def identity(self) -> dict:
        """What identifies this generator's data for a stage key (plain data).

        Its type, number of batches, batch size, shuffling, seed, the augmentation and mixing hooks, and its
        split's rows, image size, classes, a digest of its labels and files, and the decoded caches it reads.
        """
        split = self.split
        digest = hashlib.sha256(np.asarray(split.class_ids, dtype=np.int64).tobytes())
        digest.update("\n".join(map(str, split.paths)).encode())
        return {
            "type": qualname(type(self)),
            "batches": len(self),
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "augment": describe_hook(self.augment),
            "mix": describe_hook(self.mix),
            "split": {
                "name": split.split,
                "rows": len(split),
                "image_size": list(split.image_size),
                "num_classes": split.num_classes,
                "labels": digest.hexdigest()[:16],
                "decoded": [
                    Path(f).parent.name for part in split.parts if (f := getattr(part.images, "filename", None))
                ],
            },
        }

    def __getitem__(self, index):
        rows = self.batch_indices(index)
        labels = np.eye(self.split.num_classes, dtype=np.float32)[self.split.class_ids[rows]]
        # One generator per (seed, epoch, batch): the same batch is augmented the
        # same way whichever worker thread builds it, and after a resume.
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        if self.augment is None:
            images = self.split.read(rows)
        else:
            images = self.augment(self.split.read(rows, dtype=np.uint8), rng).astype(np.float32)
        if self.mix is not None:
            images, labels = self.mix(images, labels, rng=rng)
        return images, labels


def _check_input_shape(input_shape, split, name):
    size = tuple(int(v) for v in split.image_size)
    if input_shape is None:
        return
    shape = tuple(int(v) for v in input_shape)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 3):
        raise ValueError(f"input_shape must be (height, width) or (height, width, 3), got {input_shape!r}")
    if shape[:2] != size:
        raise ValueError(
            f"input_shape {tuple(input_shape)} does not match the {name} images, which are "
            f"{size[0]}x{size[1]}: rebuild the decoded cache with image_size={shape[:2]} "
            f"(build_decoded_cache(..., image_size={shape[:2]})), or pass input_shape={(*size, 3)}"
        )


def _splits(decoded, cache, input_shape, progress):
    if isinstance(decoded, (str, Path)):
        if cache is None:
            raise ValueError("a dataset folder needs cache= (a StageCache) to hold its decoded images")
        from carclf.data import load_stanford_cars
        from carclf.decoded import build_decoded_cache

        size = (224, 224) if input_shape is None else tuple(int(v) for v in input_shape[:2])
        frame = load_stanford_cars(decoded)
        decoded = build_decoded_cache(frame, cache, DecodeSettings(image_size=size), progress=progress)
    if isinstance(decoded, dict):
        missing = [s for s in ("train", "test") if s not in decoded]
        if missing:
            raise ValueError(f"decoded lacks the split(s) {missing}; it has {sorted(decoded)}")
        return decoded["train"], decoded["test"]
    try:
        train, test = decoded
    except (TypeError, ValueError):
        raise TypeError(
            "decoded must be build_decoded_cache's dict, a (train, test) pair of splits, "
            f"or a dataset folder; got {type(decoded).__name__}"
        ) from None
    return train, test


class Generators(NamedTuple):
    """The batches of one run: training, validation (what selects epochs and runs) and test (read once)."""

    train: ImageBatches
    validation: ImageBatches
    test: ImageBatches

    @property
    def protocol(self) -> str:
        """``"split"`` (a validation split of the training set) or ``"test"`` (the report's: the test set)."""
        return "test" if self.validation is self.test else "split"


def make_generators(
    decoded,
    settings: AugmentSettings | None = None,
    *,
    batch_size=32,
    seed=0,
    validation_fraction=None,
    augmented=None,
    cache=None,
    input_shape=None,
    include_originals=True,
    progress=True,
    **pydataset_kwargs,
) -> Generators:
    """The report's ``train_generator`` and ``test_generator``, and the validation batches: a :class:`Generators`.

    Args:
        decoded: ``build_decoded_cache``'s dict (its "train" and "test"), a ``(train, test)`` pair of
            splits, or the dataset's folder (the report's train_dir/test_dir; decoded at ``input_shape`` into
            ``cache``).
        settings: the augmentation (:class:`carclf.settings.AugmentSettings`): "offline" (the report's: the
            originals plus the augmented set's variants, ``augmented``), "online" (the pipeline applied to
            each training batch as it is read) or "none"; CutMix and MixUp (off, as in the report).
        batch_size: images per batch; the last batch of an epoch holds the rest.
        seed: the per-epoch order, the per-batch augmentation/mixing and the validation split.
        validation_fraction: a stratified, seeded share of the training images held out as the validation
            batches (:func:`carclf.splits.validation_split`), their augmented variants left out of training
            too. ``None``: the report's protocol, the test batches are the validation batches.
        augmented: for "offline": the :class:`~carclf.augment.AugmentedSet` (or, without a validation split,
            an already decoded split of it). When None and ``cache`` is given, the set is built here.
        input_shape: (height, width[, 3]) the model takes; checked against the decoded images.
        include_originals: "offline" trains on originals + variants (default) or on the variants only.
        **pydataset_kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` of every generator.
            Online, the training batches are made ahead of ``fit`` by ``settings.workers`` threads (or
            processes, ``settings.executor``); the pixels do not depend on which worker makes a batch.

    Every training row (originals and variants) comes once per epoch, in a new order each epoch; the
    validation and test batches read their rows as they are, in order, never augmented or mixed.
    """
    settings = settings or AugmentSettings()
    train, test = _splits(decoded, cache, input_shape, progress)
    if test.split == "train":
        raise ValueError("the test generator got the training split")
    for split, name in ((train, "decoded training"), (test, "decoded test")):
        _check_input_shape(input_shape, split, name)
    if tuple(train.image_size) != tuple(test.image_size):
        raise ValueError(f"train and test images differ in size: {train.image_size} and {test.image_size}")
    held_out = None
    if validation_fraction is not None:
        class_names = getattr(train, "class_names", None)
        train, held_out = validation_split(train, validation_fraction, seed, class_names=class_names)
    train = _training_rows(train, held_out, settings, seed, augmented, cache, input_shape, include_originals, progress)
    augment = None
    train_kwargs = dict(pydataset_kwargs)
    if settings.augmentation == "online":
        augment = OnlineAugment(pipeline_for(settings.pipeline, train.image_size, settings.crop_scale))
        train_kwargs = {**_online_workers(settings), **train_kwargs}
    mix = batch_mixer(settings.cutmix, settings.mixup)
    train_gen = ImageBatches(train, batch_size, shuffle=True, seed=seed, augment=augment, mix=mix, **train_kwargs)
    test_gen = ImageBatches(test, batch_size, shuffle=False, seed=seed, **pydataset_kwargs)
    if held_out is None:
        return Generators(train_gen, test_gen, test_gen)
    val_gen = ImageBatches(held_out, batch_size, shuffle=False, seed=seed, **pydataset_kwargs)
    return Generators(train_gen, val_gen, test_gen)


def _online_workers(settings: AugmentSettings) -> dict:
    """PyDataset's workers for online augmentation: threads unless processes are asked for (Keras forks the
    process that holds the backend for them); every usable core unless a number is given."""
    from carclf.paths import usable_cpus

    workers = settings.workers or usable_cpus()
    return {"workers": workers, "use_multiprocessing": settings.executor == "process"}


def _training_rows(train, held_out, settings, seed, augmented, cache, input_shape, include_originals, progress):
    """The rows training reads: the training split and, offline, the variants of its images (not of the
    validation images)."""
    if settings.augmentation != "offline":
        if augmented is not None:
            raise ValueError(f"augmented= is used with augmentation='offline' only, not {settings.augmentation!r}")
        return train
    if augmented is None:
        if cache is None:
            raise ValueError(
                "augmentation='offline' needs the augmented set: pass augmented=build_augmented_set(...) "
                "(or cache= to build it here), or choose augmentation='online' or 'none'"
            )
        augmented = build_augmented_set(
            train.parent if held_out is not None else train, cache, settings, seed, progress=progress
        )
    if isinstance(augmented, AugmentedSet):
        variants = augmented.to_split(cache, progress=progress)
        if held_out is not None:  # a validation image's variants must not be trained on
            kept = ~np.isin(augmented.manifest["row"].to_numpy(), held_out.indices)
            variants = SplitView(variants, np.flatnonzero(kept), "augmented")
    elif held_out is not None:
        raise ValueError("a validation split needs the AugmentedSet (its manifest names each variant's source)")
    else:
        variants = augmented
    _check_input_shape(input_shape, variants, "augmented")
    return ConcatSplit([train, variants] if include_originals else [variants])


def describe_hook(obj):
    """A plain-data identity of an augmentation or mixing hook, for stage keys."""
    if obj is None:
        return None
    if isinstance(obj, functools.partial):
        try:
            return {
                "partial": describe_hook(obj.func),
                "args": canonical(list(obj.args)),
                "keywords": canonical(dict(obj.keywords)),
            }
        except TypeError:
            return {"partial": describe_hook(obj.func)}
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj):
        return qualname(obj)
    candidates = [value for getter in ("get_config", "config") if (value := getattr(obj, getter, None)) is not None]
    if dataclasses.is_dataclass(obj):
        candidates.append(lambda: obj)
    if hasattr(obj, "__dict__"):
        candidates.append(lambda: {k: v for k, v in vars(obj).items() if not k.startswith("_")})
    for candidate in candidates:
        try:
            return {"type": qualname(type(obj)), "config": canonical(candidate() if callable(candidate) else candidate)}
        except Exception:
            continue
    return qualname(type(obj))


def describe_generator(generator) -> dict:
    """What identifies a generator's data for a stage key: its ``identity()``, or its type and length."""
    if hasattr(generator, "identity"):
        return generator.identity()
    desc = {"type": qualname(type(generator))}
    with contextlib.suppress(TypeError):
        desc["batches"] = len(generator)
    return desc


__all__ = ["Generators", "ImageBatches", "describe_generator", "describe_hook", "make_generators"]
