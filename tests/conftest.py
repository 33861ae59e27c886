"""Shared fixtures."""

from types import SimpleNamespace

import pytest


@pytest.fixture
def fresh_session():
    """Each test starts its Keras graphs anew (the builders make dozens of models)."""
    import keras

    yield
    keras.backend.clear_session()


@pytest.fixture(scope="session")
def synthetic_cars32(tmp_path_factory):
    """The default 10-class synthetic set, decoded once at 32x32 for training tests.

    20 training and 10 test images per class (200 / 100), source images 64 to
    160 pixels wide. Fields: ``root`` (the temporary folder), ``data_root``
    (the dataset), ``frame``, ``cache`` (the StageCache under
    ``root/pickles``), ``decoded`` (``{"train", "test"}`` DecodedSplits),
    ``decoded_key`` (for ``carclf.decoded.open_decoded``) and ``class_names``.
    """
    from carclf.cache import StageCache
    from carclf.data import load_stanford_cars
    from carclf.decoded import STAGE, build_decoded_cache
    from carclf.settings import DecodeSettings
    from carclf.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("synthetic_cars32")
    data_root = make_synthetic(
        root / "cars", n_classes=10, per_class_train=20, per_class_test=10, size_range=(64, 160), progress=False
    )
    frame = load_stanford_cars(data_root)
    cache = StageCache(root / "pickles")
    decoded = build_decoded_cache(frame, cache, DecodeSettings(image_size=(32, 32)), progress=False)
    decoded_key = next(key for stage, key, _ in cache.events if stage == STAGE)
    return SimpleNamespace(
        root=root,
        data_root=data_root,
        frame=frame,
        cache=cache,
        decoded=decoded,
        decoded_key=decoded_key,
        class_names=list(frame.attrs["class_names"]),
    )
