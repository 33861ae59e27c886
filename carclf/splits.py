"""Splits of the image set, all read the same way: the :class:`Split` protocol and its four kinds.

- :class:`DecodedSplit`: one split of the decoded cache (memory-mapped uint8 images and their labels);
- :class:`SplitView`: some rows of a split, optionally resized as they are read (:func:`validation_split`,
  :func:`subsample_split`);
- :class:`ConcatSplit`: several splits read as one (the originals, then their augmented variants).

Generators, the search and the keys of training stages read splits only through the protocol.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from carclf.settings import SettingsError, check_positive_int

log = logging.getLogger("carclf.splits")

__all__ = [
    "ConcatSplit",
    "DecodedSplit",
    "Split",
    "SplitView",
    "epoch_order",
    "stratified_rows",
    "subsample_split",
    "validation_split",
]


@runtime_checkable
class Split(Protocol):
    """What every split offers: its rows' labels and files, and their images as arrays."""

    split: str  # "train", "test", "augmented", "search-train", ...
    num_classes: int
    class_ids: np.ndarray  # (N,) int64
    paths: Sequence[str]  # the file of each row

    def __len__(self) -> int: ...

    @property
    def image_size(self) -> tuple[int, int]: ...

    @property
    def parts(self) -> list[DecodedSplit]:
        """The decoded splits the rows are read from (their folders name the decoded cache)."""
        ...

    def order(self, shuffle: bool = True, seed: int = 0, epoch: int = 0) -> np.ndarray: ...

    def read(self, indices, dtype=np.float32) -> np.ndarray: ...


def epoch_order(n, shuffle=True, seed=0, epoch=0) -> np.ndarray:
    """The row order of one epoch: a permutation from Generator((seed, epoch)), or 0..n-1 unshuffled.

    Derived from (seed, epoch) alone, so a resumed run replays the order it would have had.
    """
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


class DecodedSplit:
    """One split of the decoded cache: read-only uint8 images and their labels."""

    def __init__(self, images, class_ids, paths, split, num_classes):
        self.images = images
        self.class_ids = np.asarray(class_ids, dtype=np.int64)
        self.paths = list(paths)
        self.split = split
        self.num_classes = int(num_classes)
        if len(self.images) != len(self.class_ids) or len(self.paths) != len(self.class_ids):
            raise ValueError(f"split {split}: {len(images)} images, {len(class_ids)} labels, {len(paths)} paths")

    def __len__(self):
        return len(self.class_ids)

    def __repr__(self):
        return f"DecodedSplit({self.split!r}, images={self.images.shape}, num_classes={self.num_classes})"

    @property
    def image_size(self):
        return tuple(self.images.shape[1:3])

    @property
    def parts(self):
        return [self]

    def one_hot(self, dtype=np.float32) -> np.ndarray:
        """(N, num_classes) one-hot labels."""
        return np.eye(self.num_classes, dtype=dtype)[self.class_ids]

    def order(self, shuffle=True, seed=0, epoch=0) -> np.ndarray:
        """The row order of one epoch (see :func:`epoch_order`)."""
        return epoch_order(len(self), shuffle, seed, epoch)

    def read(self, indices, dtype=np.float32) -> np.ndarray:
        """Images at ``indices`` (in that order) as ``dtype``, read in sorted order."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.images.shape[1:]), dtype=dtype)
        if len(indices) and np.all(indices[1:] == indices[:-1] + 1):
            out[...] = self.images[indices[0] : indices[-1] + 1]  # one contiguous slice
            return out
        by_position = np.argsort(indices, kind="stable")
        out[by_position] = self.images[indices[by_position]]
        return out

    def batches(self, batch_size, shuffle=True, seed=0, epoch=0):
        """Yield ``(x, y)``: x float32 (B, H, W, 3) in 0-255, y one-hot float32; every row once per epoch."""
        batch_size = check_positive_int("batch_size", batch_size)
        eye = np.eye(self.num_classes, dtype=np.float32)
        order = self.order(shuffle, seed, epoch)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.read(idx), eye[self.class_ids[idx]]


class SplitView:
    """Some rows of a split, read as a split of their own; ``image_size`` resizes each image as it is read."""

    def __init__(self, parent: Split, indices, split="train", image_size=None):
        self.parent = parent
        self.indices = np.sort(np.asarray(indices, dtype=np.int64))  # sorted: memmap reads in file order
        if self.indices.size and (self.indices[0] < 0 or self.indices[-1] >= len(parent)):
            raise IndexError(f"rows out of range for a split of {len(parent)} rows")
        self.split = split
        self.num_classes = int(parent.num_classes)
        self.class_ids = np.asarray(parent.class_ids, dtype=np.int64)[self.indices]
        parent_paths = list(parent.paths)
        self.paths = [parent_paths[i] for i in self.indices] if parent_paths else []
        self._resize = None
        if image_size is not None:
            height, width = (int(v) for v in image_size)
            if height <= 0 or width <= 0:
                raise ValueError(f"image_size must be positive, got {image_size!r}")
            if (height, width) != tuple(parent.image_size):
                self._resize = (height, width)

    def __len__(self):
        return len(self.indices)

    def __repr__(self):
        return f"SplitView({self.split!r}, {len(self)} of {len(self.parent)} rows, image_size={self.image_size})"

    @property
    def image_size(self):
        return self._resize or tuple(self.parent.image_size)

    @property
    def parts(self):
        return self.parent.parts

    def order(self, shuffle=True, seed=0, epoch=0) -> np.ndarray:
        """The row order of one epoch (see :func:`epoch_order`)."""
        return epoch_order(len(self), shuffle, seed, epoch)

    def read(self, indices, dtype=np.float32) -> np.ndarray:
        """Images at ``indices`` (rows of this view, in that order) as ``dtype``."""
        rows = self.indices[np.asarray(indices, dtype=np.int64)]
        if self._resize is None:
            return self.parent.read(rows, dtype=dtype)
        import cv2

        height, width = self._resize
        source = self.parent.read(rows, dtype=np.uint8)
        smaller = height * width <= source.shape[1] * source.shape[2]
        interpolation = cv2.INTER_AREA if smaller else cv2.INTER_LINEAR
        out = np.empty((len(rows), height, width, source.shape[3]), dtype=dtype)
        for i, image in enumerate(source):
            out[i] = cv2.resize(image, (width, height), interpolation=interpolation).reshape(height, width, -1)
        return out


class ConcatSplit:
    """Several splits read as one (the originals, then the augmented variants), rows numbered in that order."""

    def __init__(self, parts, split="train"):
        self._parts = [p for p in parts if len(p)]
        if not self._parts:
            raise ValueError("ConcatSplit needs at least one non-empty split")
        first = self._parts[0]
        for part in self._parts[1:]:
            if part.num_classes != first.num_classes:
                raise ValueError(f"splits disagree on num_classes: {first.num_classes} and {part.num_classes}")
            if tuple(part.image_size) != tuple(first.image_size):
                raise ValueError(f"splits disagree on image size: {first.image_size} and {part.image_size}")
        self.split = split
        self.num_classes = first.num_classes
        self.class_ids = np.concatenate([np.asarray(p.class_ids, dtype=np.int64) for p in self._parts])
        self.paths = [path for p in self._parts for path in p.paths]
        self.starts = np.cumsum([0] + [len(p) for p in self._parts])

    def __len__(self):
        return int(self.starts[-1])

    def __repr__(self):
        return f"ConcatSplit({self.split!r}, {' + '.join(str(len(p)) for p in self._parts)} rows)"

    @property
    def image_size(self):
        return tuple(self._parts[0].image_size)

    @property
    def parts(self):
        return [decoded for part in self._parts for decoded in part.parts]

    def order(self, shuffle=True, seed=0, epoch=0) -> np.ndarray:
        """The row order of one epoch (see :func:`epoch_order`)."""
        return epoch_order(len(self), shuffle, seed, epoch)

    def read(self, indices, dtype=np.float32) -> np.ndarray:
        """Images at ``indices`` (in that order) as ``dtype``."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)} rows")
        out = np.empty((len(indices), *self.image_size, 3), dtype=dtype)
        which = np.searchsorted(self.starts, indices, side="right") - 1
        for k, part in enumerate(self._parts):
            mask = which == k
            if mask.any():
                out[mask] = part.read(indices[mask] - self.starts[k], dtype=dtype)
        return out


def stratified_rows(class_ids, take: Callable[[int], int], rng) -> np.ndarray:
    """Sorted rows with ``take(n)`` rows drawn at random from each class of ``n`` rows."""
    class_ids = np.asarray(class_ids, dtype=np.int64)
    picked = []
    for cls in np.unique(class_ids):
        rows = np.flatnonzero(class_ids == cls)
        n = take(len(rows))
        if n:
            picked.append(rng.permutation(rows)[:n])
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


def validation_split(split: Split, fraction: float = 0.1, seed: int = 0, image_size=None, class_names=None):
    """``(train, validation)`` views of a *training* split, stratified by class and seeded.

    Each class of ``n`` rows gives ``round(fraction * n)`` of them to the validation view (never all); the
    rest stay for training. A class with a single row stays in training, with a warning. A fraction outside
    (0, 0.5], or one that leaves a class without a validation row, is a :class:`SettingsError` that says the
    smallest fraction that works. ``image_size`` resizes the images as they are read. The search and the
    training's validation split both come from here.
    """
    if not 0 < float(fraction) <= 0.5:
        raise SettingsError(f"validation_fraction must be a number in (0, 0.5], got {fraction!r}")
    if split.split == "test":
        raise ValueError("validation_split takes the training split; the test set selects nothing")
    class_ids = np.asarray(split.class_ids, dtype=np.int64)
    counts = np.bincount(class_ids, minlength=split.num_classes)
    _check_fraction(fraction, counts, class_names)

    def take(n):
        return 0 if n < 2 else min(n - 1, math.floor(fraction * n + 0.5))

    val_rows = stratified_rows(class_ids, take, np.random.default_rng([int(seed), 0x5EA5C4]))
    train_rows = np.setdiff1d(np.arange(len(split)), val_rows)
    return SplitView(split, train_rows, "train", image_size), SplitView(split, val_rows, "validation", image_size)


def _check_fraction(fraction, counts, class_names):
    present = np.flatnonzero(counts)
    single = [c for c in present if counts[c] == 1]
    if single:
        shown = ", ".join(repr(class_names[c]) if class_names else str(c) for c in single[:5])
        log.warning(
            "%d classes have a single training image (%s%s): they stay in training, with no validation image",
            len(single),
            shown,
            ", ..." if len(single) > 5 else "",
        )
    several = [c for c in present if counts[c] >= 2]
    if not several:
        raise SettingsError("no class has two training images: nothing to carve a validation split from")
    short = [c for c in several if math.floor(fraction * counts[c] + 0.5) < 1]
    if short:
        fewest = int(min(counts[c] for c in several))
        smallest = math.ceil(0.5 / fewest * 1000) / 1000
        name = repr(class_names[short[0]]) if class_names else f"class {short[0]}"
        raise SettingsError(
            f"validation_fraction {fraction} gives {name} ({counts[short[0]]} training images) no validation "
            f"image; the smallest fraction that holds one image of every class is {smallest}"
        )


def subsample_split(split: Split, size, seed: int = 0) -> SplitView:
    """A stratified, seeded subset of ``split``: ``size`` a fraction in (0, 1] or a number of rows.

    Every class keeps ``ceil(fraction * n)`` of its ``n`` rows (at least one).
    """
    n_rows = len(split)
    if isinstance(size, bool) or not isinstance(size, (int, float, np.integer, np.floating)):
        raise TypeError(f"subsample must be a fraction or a number of rows, got {size!r}")
    if isinstance(size, (int, np.integer)) and size >= 1:
        fraction = min(1.0, int(size) / n_rows)
    elif 0 < float(size) <= 1:
        fraction = float(size)
    else:
        raise ValueError(f"subsample must be a fraction in (0, 1] or a positive number of rows, got {size!r}")
    rows = stratified_rows(
        split.class_ids, lambda n: max(1, math.ceil(fraction * n)), np.random.default_rng([int(seed), 0x5AB5])
    )
    return SplitView(split, rows, split.split)
