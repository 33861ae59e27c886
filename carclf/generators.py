"""The train and test generators (the report's step 9): batches for ``model.fit``.

A :class:`ImageBatches` is a ``keras.utils.PyDataset``, so it feeds ``fit`` on
any Keras backend without tf.data. It reads uint8 images from a decoded cache
split (no JPEG decoding), shuffles per epoch from ``(seed, epoch)`` so a resumed
run sees the same order it would have seen, and keeps the last partial batch.

:func:`make_generators` builds the report's ``train_generator`` and
``test_generator`` pair: the training one over the originals plus the offline
augmented set (:class:`ConcatSplit`), or with the pipeline applied per batch,
or plain, with CutMix/MixUp if switched on; the test one never augmented, never
mixed, never shuffled.
"""

import math
from pathlib import Path

import keras
import numpy as np

from carclf.augment import REPORT_PIPELINE, AugmentedSet, OnlineAugment, batch_mixer, build_augmented_set
from carclf.decoded import epoch_order

#: The ``augmentation`` modes of :func:`make_generators`.
AUGMENTATION_MODES = ("offline", "online", "none")


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
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.split = split
        self.batch_size = int(batch_size)
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


class ConcatSplit:
    """Several splits read as one (the originals, then the augmented variants), rows numbered in that order.

    Has what :class:`ImageBatches` reads: ``read``, ``order``, ``class_ids``,
    ``num_classes``, ``paths``, ``image_size`` and ``len``.
    """

    def __init__(self, parts, split="train"):
        self.parts = [p for p in parts if len(p)]
        if not self.parts:
            raise ValueError("ConcatSplit needs at least one non-empty split")
        first = self.parts[0]
        for part in self.parts[1:]:
            if part.num_classes != first.num_classes:
                raise ValueError(f"splits disagree on num_classes: {first.num_classes} and {part.num_classes}")
            if tuple(part.images.shape[1:]) != tuple(first.images.shape[1:]):
                raise ValueError(
                    f"splits disagree on image shape: {first.images.shape[1:]} and {part.images.shape[1:]}"
                )
        self.split = split
        self.num_classes = first.num_classes
        self.class_ids = np.concatenate([np.asarray(p.class_ids, dtype=np.int64) for p in self.parts])
        self.paths = [path for p in self.parts for path in p.paths]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self):
        return int(self.starts[-1])

    def __repr__(self):
        return f"ConcatSplit({self.split!r}, {' + '.join(str(len(p)) for p in self.parts)} rows)"

    @property
    def image_size(self):
        return tuple(self.parts[0].images.shape[1:3])

    def order(self, shuffle=True, seed=0, epoch=0) -> np.ndarray:
        """The row order of one epoch (see :func:`carclf.decoded.epoch_order`)."""
        return epoch_order(len(self), shuffle, seed, epoch)

    def read(self, indices, dtype=np.float32) -> np.ndarray:
        """Images at ``indices`` (in that order) as ``dtype``."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)} rows")
        out = np.empty((len(indices), *self.parts[0].images.shape[1:]), dtype=dtype)
        which = np.searchsorted(self.starts, indices, side="right") - 1
        for k, part in enumerate(self.parts):
            mask = which == k
            if mask.any():
                out[mask] = part.read(indices[mask] - self.starts[k], dtype=dtype)
        return out


def _check_input_shape(input_shape, split, name):
    size = tuple(int(v) for v in split.images.shape[1:3])
    if input_shape is None:
        return
    shape = tuple(int(v) for v in input_shape)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != split.images.shape[3]):
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
        decoded = build_decoded_cache(load_stanford_cars(decoded), cache, image_size=size, progress=progress)
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


def make_generators(
    decoded,
    batch_size=32,
    input_shape=None,
    augmentation="offline",
    augmented=None,
    cutmix=False,
    mixup=False,
    seed=0,
    cache=None,
    pipeline=REPORT_PIPELINE,
    include_originals=True,
    progress=True,
    **pydataset_kwargs,
):
    """The report's ``train_generator`` and ``test_generator``: ``(train_gen, test_gen)``.

    Args:
        decoded: ``build_decoded_cache``'s dict (its "train" and "test"), a
            ``(train, test)`` pair of splits, or the dataset's folder (the
            report's train_dir/test_dir; decoded at ``input_shape`` into ``cache``).
        batch_size: images per batch; the last batch of an epoch holds the rest.
        input_shape: (height, width[, 3]) the model takes; checked against the
            decoded images (a clear error when they differ). None: not checked.
        augmentation: "offline" (default, as the report: the originals plus the
            augmented set's variants, ``augmented``), "online" (``pipeline``
            applied to each training batch as it is read) or "none".
        augmented: for "offline": the :class:`~carclf.augment.AugmentedSet`
            (decoded through its cache, or ``cache``) or an already decoded
            split of it. When None and ``cache`` is given, the set is built
            with :func:`~carclf.augment.build_augmented_set`'s defaults.
        cutmix, mixup: off by default as in the report; True (default alpha) or
            an alpha switches one on; both on: one of the two per batch.
        seed: the per-epoch order and the per-batch augmentation/mixing.
        include_originals: "offline" trains on originals + variants (default)
            or on the variants only.
        **pydataset_kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size``.

    Every training row (originals and variants) comes once per epoch, in a
    new order each epoch; the test generator reads the test split as it is,
    in order.
    """
    if augmentation not in AUGMENTATION_MODES:
        raise ValueError(f"augmentation must be one of {AUGMENTATION_MODES}, got {augmentation!r}")
    train, test = _splits(decoded, cache, input_shape, progress)
    if getattr(test, "split", "test") == "train":
        raise ValueError("the test generator got the training split")
    _check_input_shape(input_shape, train, "decoded training")
    _check_input_shape(input_shape, test, "decoded test")
    if tuple(train.images.shape[1:]) != tuple(test.images.shape[1:]):
        raise ValueError(f"train and test images differ in shape: {train.images.shape[1:]} and {test.images.shape[1:]}")

    augment = None
    if augmentation == "offline":
        if augmented is None:
            if cache is None:
                raise ValueError(
                    "augmentation='offline' needs the augmented set: pass augmented=build_augmented_set(...) "
                    "(or cache= to build it here), or choose augmentation='online' or 'none'"
                )
            augmented = build_augmented_set(train, cache, progress=progress)
        variants = augmented.to_split(cache, progress=progress) if isinstance(augmented, AugmentedSet) else augmented
        _check_input_shape(input_shape, variants, "augmented")
        train = ConcatSplit([train, variants] if include_originals else [variants])
    elif augmented is not None:
        raise ValueError(f"augmented= is used with augmentation='offline' only, not {augmentation!r}")
    if augmentation == "online":
        augment = OnlineAugment(pipeline)

    train_gen = ImageBatches(
        train,
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        augment=augment,
        mix=batch_mixer(cutmix, mixup),
        **pydataset_kwargs,
    )
    test_gen = ImageBatches(test, batch_size=batch_size, shuffle=False, seed=seed, **pydataset_kwargs)
    return train_gen, test_gen


__all__ = ["AUGMENTATION_MODES", "ConcatSplit", "ImageBatches", "make_generators"]
