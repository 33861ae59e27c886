"""The train and test generators (the report's step 9): batches for ``model.fit``.

A :class:`ImageBatches` is a ``keras.utils.PyDataset``, so it feeds ``fit`` on
any Keras backend without tf.data. It reads uint8 images from a decoded cache
split (no JPEG decoding), shuffles per epoch from ``(seed, epoch)`` so a resumed
run sees the same order it would have seen, and keeps the last partial batch.
"""

import math

import keras
import numpy as np


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
        mix: optional ``mix(images_float32, labels, rng) -> (images, labels)``
            (CutMix or MixUp), applied after ``augment``.
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
        return self._order[index * self.batch_size:(index + 1) * self.batch_size]

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
            images, labels = self.mix(images, labels, rng)
        return images, labels
