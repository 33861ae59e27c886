import numpy as np
import pytest

from carclf.decoded import DecodedSplit
from carclf.generators import ImageBatches


@pytest.fixture
def split():
    n, size = 23, 4
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, size, size, 3), np.uint8)
    class_ids = np.arange(n) % 5
    return DecodedSplit(images, class_ids, [f"{i}.jpg" for i in range(n)], "train", 5)


def _epoch(gen):
    xs, ys = zip(*(gen[i] for i in range(len(gen))))
    return np.concatenate(xs), np.concatenate(ys)


def test_every_image_once_per_epoch_with_its_label(split):
    gen = ImageBatches(split, batch_size=5, shuffle=True, seed=3)
    assert len(gen) == 5
    assert len(gen[4][0]) == 3  # the last partial batch is kept
    x, y = _epoch(gen)
    ids = x[:, 0, 0, 0].astype(int)  # each image is filled with its row number
    assert sorted(ids) == list(range(23))
    assert x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_array_equal(y.argmax(1), split.class_ids[ids])
    np.testing.assert_array_equal(y.sum(1), 1)


def test_order_changes_per_epoch_and_replays_after_resume(split):
    gen = ImageBatches(split, batch_size=5, seed=3)
    first = _epoch(gen)[0][:, 0, 0, 0]
    gen.on_epoch_end()
    second = _epoch(gen)[0][:, 0, 0, 0]
    assert not np.array_equal(first, second)
    resumed = ImageBatches(split, batch_size=5, seed=3)
    resumed.set_epoch(1)
    np.testing.assert_array_equal(_epoch(resumed)[0][:, 0, 0, 0], second)


def test_unshuffled_order_is_the_split_order(split):
    x, _ = _epoch(ImageBatches(split, batch_size=4, shuffle=False))
    np.testing.assert_array_equal(x[:, 0, 0, 0], np.arange(23))


def test_augment_gets_uint8_and_a_per_batch_seed(split):
    seen = []

    def augment(images, rng):
        seen.append(images.dtype)
        return 255 - images

    gen = ImageBatches(split, batch_size=5, shuffle=False, augment=augment)
    x, _ = gen[0]
    assert seen == [np.uint8]
    np.testing.assert_array_equal(x[:, 0, 0, 0], 255 - np.arange(5))
