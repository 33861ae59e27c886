"""The report's custom layers: shapes, weights, the computation, serialization, mixed precision."""

import keras
import numpy as np
import pytest

from carclf.layers import AttentionBlock, CustomLayer, ImagePreprocessing, SEBlock


@pytest.fixture
def mixed_precision():
    previous = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _features(shape=(2, 5, 5, 64), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _gate_params(channels, reduction):
    units = channels // reduction
    return channels * units + units + units * channels + channels


@pytest.mark.parametrize(
    "make, reduction",
    [
        (lambda: SEBlock(), 16),
        (lambda: SEBlock(reduction=4), 4),
        (lambda: AttentionBlock(), 8),
        (lambda: AttentionBlock(reduction=32), 32),
        (lambda: CustomLayer("se"), 16),
        (lambda: CustomLayer("attention"), 8),
        (lambda: CustomLayer("attention", reduction=2), 2),
    ],
)
def test_block_keeps_shape_and_holds_the_reports_weights(make, reduction):
    block = make()
    x = _features()
    y = block(x)
    assert tuple(y.shape) == x.shape
    assert block.reduction == reduction
    units = 64 // reduction
    shapes = sorted(tuple(w.shape) for w in block.weights)
    assert shapes == sorted([(64, units), (units,), (units, 64), (64,)])
    assert block.count_params() == _gate_params(64, reduction)
    assert all(w.trainable for w in block.weights)


def test_block_computes_squeeze_excite_rescale():
    block = SEBlock(reduction=8)
    x = _features()
    y = keras.ops.convert_to_numpy(block(x))
    w1, b1 = (keras.ops.convert_to_numpy(w) for w in block.reduce.weights)
    w2, b2 = (keras.ops.convert_to_numpy(w) for w in block.expand.weights)
    squeezed = x.mean(axis=(1, 2))
    gate = 1 / (1 + np.exp(-(np.maximum(squeezed @ w1 + b1, 0) @ w2 + b2)))
    np.testing.assert_allclose(y, x * gate[:, None, None, :], rtol=1e-5, atol=1e-6)


def test_bottleneck_keeps_at_least_one_unit():
    block = SEBlock()
    block(_features((1, 3, 3, 4)))
    assert block.reduce.units == 1


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="block_type"):
        CustomLayer("transformer")
    with pytest.raises(ValueError, match="reduction"):
        SEBlock(reduction=0)
    with pytest.raises(ValueError, match="mode"):
        ImagePreprocessing("zero-one")
    with pytest.raises(ValueError, match="channels"):
        SEBlock()(np.zeros((2, 8, 3), "float32"))


@pytest.mark.parametrize(
    "layer",
    [SEBlock(reduction=4), AttentionBlock(), CustomLayer("se", reduction=2), ImagePreprocessing("torch")],
    ids=lambda layer: type(layer).__name__,
)
def test_layers_serialize_without_custom_objects(layer):
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"].startswith("carclf>")
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()


def test_keras_file_round_trip_without_custom_objects(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = ImagePreprocessing("caffe")(inputs)
    x = keras.layers.Conv2D(32, 3)(x)
    x = AttentionBlock()(x)
    x = SEBlock()(x)
    x = CustomLayer("attention")(x)
    x = CustomLayer("se", reduction=4)(x)
    model = keras.Model(inputs, x)
    path = tmp_path / "blocks.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    images = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(images)), keras.ops.convert_to_numpy(loaded(images)))
    assert [type(layer).__name__ for layer in loaded.layers[1:]] == [
        "ImagePreprocessing",
        "Conv2D",
        "AttentionBlock",
        "SEBlock",
        "CustomLayer",
        "CustomLayer",
    ]
    assert loaded.layers[-1].reduction == 4 and loaded.layers[-1].block_type == "se"


def test_blocks_under_mixed_precision(mixed_precision):
    inputs = keras.Input((6, 6, 3))
    x = ImagePreprocessing("torch")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same")(x)
    for block in (AttentionBlock(), SEBlock(), CustomLayer("attention"), CustomLayer("se")):
        x = block(x)
        assert block.compute_dtype == "float16"
        assert all(w.dtype == "float32" for w in block.weights)
    outputs = keras.layers.Dense(3, activation="softmax", dtype="float32")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, [x, outputs])
    features, probabilities = model(np.full((2, 6, 6, 3), 128.0, "float32"))
    assert features.dtype == "float16"
    assert probabilities.dtype == "float32"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(probabilities)))


@pytest.mark.parametrize("mode", ImagePreprocessing.MODES)
def test_preprocessing_matches_keras_applications(mode):
    images = np.random.default_rng(2).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    expected = keras.applications.imagenet_utils.preprocess_input(images.copy(), mode=mode)
    layer = ImagePreprocessing(mode)
    got = keras.ops.convert_to_numpy(layer(images))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert layer.weights == []


def test_preprocessing_accepts_uint8_pixels():
    images = np.random.default_rng(3).integers(0, 256, (1, 4, 4, 3), dtype="uint8")
    got = keras.ops.convert_to_numpy(ImagePreprocessing("tf")(images))
    np.testing.assert_allclose(got, images / 127.5 - 1, atol=1e-6)
