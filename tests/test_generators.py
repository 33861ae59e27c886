import numpy as np
import pytest

from carclf.generators import ImageBatches
from carclf.splits import DecodedSplit


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


# --------------------------------------------------------------------------- #
# make_generators: the report's train and test generators
# --------------------------------------------------------------------------- #

import cv2  # noqa: E402

from carclf.augment import build_augmented_set  # noqa: E402
from carclf.cache import StageCache  # noqa: E402
from carclf.generators import make_generators  # noqa: E402
from carclf.settings import AugmentSettings  # noqa: E402
from carclf.splits import ConcatSplit  # noqa: E402


def _generators(decoded, *, batch_size=32, seed=0, augmented=None, input_shape=None, **augment):
    """make_generators with the augmentation settings named as keywords: the report's (train, test) pair."""
    gens = make_generators(
        decoded,
        AugmentSettings(**augment),
        batch_size=batch_size,
        seed=seed,
        augmented=augmented,
        input_shape=input_shape,
    )
    return gens.train, gens.test


def photo_split(n, name, seed, n_classes=4, size=(16, 20)):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 4, 5, 3), dtype=np.uint8)
    images = np.stack([cv2.resize(im, size[::-1], interpolation=cv2.INTER_CUBIC) for im in small])
    return DecodedSplit(images, np.arange(n) % n_classes, [f"/{name}/{i:05d}.jpg" for i in range(n)], name, n_classes)


@pytest.fixture
def decoded():
    return {"train": photo_split(11, "train", 1), "test": photo_split(7, "test", 2)}


@pytest.fixture
def augmented(decoded, tmp_path):
    built = build_augmented_set(
        decoded["train"],
        StageCache(tmp_path / "pickles"),
        AugmentSettings(n_variants=2),
        out_dir=tmp_path / "augmented",
        workers=1,
        progress=False,
    )
    return built


def keyed(images, labels):
    """Counter of (image bytes, class) over a set of rows."""
    from collections import Counter

    return Counter((im.astype(np.uint8).tobytes(), int(c)) for im, c in zip(images, labels))


def test_offline_train_generator_gives_originals_and_variants_once_per_epoch(decoded, augmented):
    train_gen, _ = _generators(decoded, batch_size=4, input_shape=(16, 20, 3), augmented=augmented, seed=5)
    variants = augmented.to_split(progress=False)
    assert len(train_gen.split) == 11 + 22 and len(train_gen) == 9
    expected = keyed(decoded["train"].images, decoded["train"].class_ids) + keyed(variants.images, variants.class_ids)
    for epoch in range(2):
        x, y = _epoch(train_gen)
        assert len(x) == 33 and x.dtype == np.float32
        np.testing.assert_array_equal(y.sum(1), 1)
        assert keyed(x, y.argmax(1)) == expected  # every row once, with its own label
        train_gen.on_epoch_end()
    np.testing.assert_array_equal(variants.class_ids, np.repeat(decoded["train"].class_ids, 2))


def test_test_generator_is_never_augmented_mixed_or_shuffled(decoded, augmented):
    for kwargs in ({"augmented": augmented, "cutmix": True}, {"augmentation": "online", "mixup": True}):
        train_gen, test_gen = _generators(decoded, batch_size=3, **kwargs)
        assert test_gen.augment is None and test_gen.mix is None and not test_gen.shuffle
        x, y = _epoch(test_gen)
        np.testing.assert_array_equal(x, decoded["test"].images.astype(np.float32))
        np.testing.assert_array_equal(y, decoded["test"].one_hot())
        _, y_train = train_gen[0]
        np.testing.assert_allclose(y_train.sum(1), 1, atol=1e-6)
        assert train_gen.mix is not None


def test_online_mode_augments_every_batch_and_keeps_labels(decoded):
    train_gen, _ = _generators(decoded, batch_size=4, augmentation="online", seed=2)
    assert train_gen.augment is not None and len(train_gen.split) == 11
    rows = np.concatenate([train_gen.batch_indices(i) for i in range(len(train_gen))])
    assert sorted(rows) == list(range(11))
    x, y = _epoch(train_gen)
    np.testing.assert_array_equal(y.argmax(1), decoded["train"].class_ids[rows])
    assert not np.array_equal(x, decoded["train"].images[rows].astype(np.float32))
    np.testing.assert_array_equal(train_gen[1][0], train_gen[1][0])  # the same batch, the same augmentation


def test_plain_mode_and_mixing_switches(decoded):
    train_gen, _ = _generators(decoded, batch_size=4, augmentation="none", cutmix=0.5)
    assert train_gen.augment is None and train_gen.mix.cutmix_alpha == 0.5
    x, y = train_gen[0]
    np.testing.assert_allclose(y.sum(1), 1, atol=1e-6)


def test_inputs_are_checked(decoded, augmented):
    with pytest.raises(ValueError, match="does not match.*16x20.*image_size=\\(224, 224\\)"):
        _generators(decoded, input_shape=(224, 224, 3), augmentation="none")
    with pytest.raises(ValueError, match="needs the augmented set"):
        _generators(decoded)
    with pytest.raises(ValueError, match="augmentation must be"):
        _generators(decoded, augmentation="sometimes")
    with pytest.raises(ValueError, match="with augmentation=.offline. only"):
        _generators(decoded, augmentation="online", augmented=augmented)


def test_concat_split_reads_rows_across_parts(split):
    other = DecodedSplit(split.images[:4] + 100, split.class_ids[:4], split.paths[:4], "augmented", 5)
    both = ConcatSplit([split, other])
    assert len(both) == 27 and both.image_size == (4, 4)
    rows = np.array([26, 0, 23, 5, 24])
    np.testing.assert_array_equal(both.read(rows, np.uint8)[:, 0, 0, 0], [103, 0, 100, 5, 101])
    with pytest.raises(IndexError):
        both.read([27])


def test_generators_feed_model_fit(decoded, augmented):
    import keras

    train_gen, test_gen = _generators(decoded, batch_size=8, input_shape=(16, 20, 3), augmented=augmented, mixup=True)
    model = keras.Sequential(
        [
            keras.Input((16, 20, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(train_gen, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert len(model.evaluate(test_gen, verbose=0)) == 2
