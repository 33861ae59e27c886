"""The eight builders: the report's parameter table, x_trainable, preprocessing, weights, save/load.

Only the count test builds at 224x224; everything else builds at the smallest
size a model accepts, with 5 classes.
"""

import keras
import numpy as np
import pytest

from carclf import models
from carclf.layers import ImagePreprocessing

NUM_CLASSES = 5

#: spec-notes section 2 (the report's table); model1 is carclf's own design.
PARAMETER_TABLE = {
    "model1": (440_228, 439_268),
    "alexnet": (47_605_796, 47_603_044),
    "vgg16": (27_859_652, 27_859_652),
    "resnet50": (27_892_036, 27_838_916),
    "densenet121": (33_224_132, 33_140_484),
    "imagenet": (78_223_684, 78_170_564),
    "efficientnetb0": (37_497_671, 37_455_648),
    "inceptionv3": (24_529_764, 24_495_332),
}

#: What each model must do to its 0-255 input, pinned to keras.applications.
EXPECTED_PREPROCESSING = {
    "model1": lambda x: keras.applications.imagenet_utils.preprocess_input(x, mode="tf"),
    "alexnet": lambda x: keras.applications.imagenet_utils.preprocess_input(x, mode="tf"),
    "vgg16": keras.applications.vgg16.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
    "densenet121": keras.applications.densenet.preprocess_input,
    "imagenet": keras.applications.resnet50.preprocess_input,
    "inceptionv3": keras.applications.inception_v3.preprocess_input,
}

pytestmark = pytest.mark.usefixtures("fresh_session")


def small_shape(name):
    size = models.MIN_INPUT_SIZE[name]
    return (max(size, 32), max(size, 32), 3)


def pixels(shape, n=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype("float32")


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def base_layer_names(model):
    """Layers before the head, input layer excluded (the head starts at head_*)."""
    names = []
    for layer in model.layers[1:]:
        if layer.name.startswith("head_"):
            return names
        names.append(layer.name)
    raise AssertionError("no head found")


def test_registry_lists_the_eight_models_in_the_reports_order():
    assert models.NAMES == (
        "model1",
        "alexnet",
        "vgg16",
        "resnet50",
        "densenet121",
        "imagenet",
        "efficientnetb0",
        "inceptionv3",
    )
    with pytest.raises(models.UnknownModelError, match="unknown model 'mobilenet'; choose one of model1, alexnet"):
        models.build("mobilenet")
    with pytest.raises(ValueError, match=r"unknown model 'resnet' \(did you mean 'resnet50'\?\)"):
        models.check_name("resnet")
    assert models.check_name("vgg16") == "vgg16"


@pytest.mark.parametrize("name", models.NAMES)
def test_parameter_counts_at_224_match_the_report(name):
    model = models.build(name, (224, 224, 3), 196, {"learning_rate": 1e-3})  # unknown keys ignored
    assert (model.count_params(), trainable_params(model)) == PARAMETER_TABLE[name]
    assert model.name == name
    assert model.layers[-1].name == "predictions" and model.layers[-1].dtype_policy.name == "float32"


# ----------------------------------------------------------------------------
# One small build per model, shared by the tests below (pytest groups them).


@pytest.fixture(scope="module", params=models.NAMES)
def small(request):
    name = request.param
    model = models.build(name, small_shape(name), NUM_CLASSES)
    yield name, model
    del model
    keras.backend.clear_session()


def test_forward_pass_at_small_size(small):
    name, model = small
    shape = small_shape(name)
    probabilities = keras.ops.convert_to_numpy(model(pixels(shape), training=False))
    assert probabilities.shape == (2, NUM_CLASSES)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_preprocessing_is_the_bases_own(small):
    name, model = small
    images = pixels(small_shape(name), seed=1)
    preprocessing = [layer for layer in model.layers if isinstance(layer, ImagePreprocessing)]
    if name == "efficientnetb0":
        # keras.applications.EfficientNetB0 takes 0-255 pixels and rescales them itself.
        assert preprocessing == []
        np.testing.assert_array_equal(keras.applications.efficientnet.preprocess_input(images), images)
        first = [type(layer).__name__ for layer in model.layers[1:3]]
        assert first == ["Rescaling", "Normalization"]
        return
    assert [layer.name for layer in preprocessing] == ["preprocessing"]
    layer = preprocessing[0]
    assert layer.mode == models.preprocessing_mode(name)
    assert model.layers[1] is layer  # the first thing applied to the input ...
    for other in model.layers[2:]:  # ... and the only layer that reads the raw input
        assert all(t is not model.input for t in keras.tree.flatten(other.input))
    got = keras.ops.convert_to_numpy(keras.Model(model.input, layer.output)(images))
    expected = EXPECTED_PREPROCESSING[name](images.copy())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_keras_file_round_trip_gives_identical_predictions(small, tmp_path):
    name, model = small
    images = pixels(small_shape(name), seed=2)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects
    for saved, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(saved), keras.ops.convert_to_numpy(restored))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(images, training=False)),
        keras.ops.convert_to_numpy(loaded(images, training=False)),
    )


# ----------------------------------------------------------------------------
# x_trainable


def _vgg16_base():
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    return base, base.get_layer("block5_pool")


@pytest.mark.parametrize(
    "x_trainable, n_trainable",
    [("all", 18), ("none", 0), ("partial", 4), (3, 3), ("7", 7), (100, 18)],
)
def test_x_trainable_selects_the_trailing_base_layers(x_trainable, n_trainable):
    base, transfer = _vgg16_base()
    model, n_layers, n_frozen = models.finetune_vgg16(base, transfer, x_trainable=x_trainable, num_classes=NUM_CLASSES)
    names = base_layer_names(model)
    assert len(names) == 18  # 13 convolutions, 5 poolings
    trainable = [n for n in names if model.get_layer(n).trainable]
    assert trainable == (names[len(names) - n_trainable :] if n_trainable else [])
    assert all(layer.trainable for layer in model.layers if layer.name.startswith("head_"))
    assert (n_layers, n_frozen) == (len(model.layers), 18 - n_trainable)
    assert models.layer_counts(model) == (n_layers, n_frozen)


def test_x_trainable_none_trains_only_the_head():
    model = models.build("vgg16", (32, 32, 3), NUM_CLASSES, {"x_trainable": "none"})
    head = [layer for layer in model.layers if layer.name.startswith("head_") or layer.name == "predictions"]
    assert trainable_params(model) == sum(layer.count_params() for layer in head)


def test_batch_normalization_trains_only_with_all():
    model = models.build("resnet50", (32, 32, 3), NUM_CLASSES, {"x_trainable": "partial"})
    tail = base_layer_names(model)[-4:]
    assert tail == ["conv5_block3_3_conv", "conv5_block3_3_bn", "conv5_block3_add", "conv5_block3_out"]
    assert [model.get_layer(n).trainable for n in tail] == [True, False, True, True]
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(layer.trainable for layer in bns)
    keras.backend.clear_session()
    model = models.build("resnet50", (32, 32, 3), NUM_CLASSES, {"x_trainable": "all"})
    assert all(layer.trainable for layer in model.layers)


@pytest.mark.parametrize("bad", ["some", -1, True, 2.5, None])
def test_x_trainable_rejects_other_values(bad):
    with pytest.raises(ValueError, match="x_trainable"):
        models.set_trainable([], bad)


# ----------------------------------------------------------------------------
# Sizes, weights, mixed precision, model1


@pytest.mark.parametrize("name, size", [("inceptionv3", 74), ("alexnet", 66), ("vgg16", 31), ("model1", 15)])
def test_too_small_inputs_name_the_minimum(name, size):
    minimum = models.MIN_INPUT_SIZE[name]
    with pytest.raises(ValueError, match=f"at least {minimum}x{minimum}"):
        models.build(name, (size, size, 3), NUM_CLASSES)


def test_failed_download_says_where_to_put_the_file(monkeypatch):
    from keras.src.utils import file_utils

    def offline(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(models.PretrainedWeightsError) as caught:
        models.build("vgg16", (32, 32, 3), NUM_CLASSES, {"weights": "imagenet"})
    message = str(caught.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "models" in message and "URL fetch failure" in message


def test_local_base_weights_file_is_loaded(tmp_path):
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    base.save_weights(path)
    model = models.build("vgg16", (32, 32, 3), NUM_CLASSES, {"weights": str(path)})
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.get_layer("block5_conv3").kernel),
        keras.ops.convert_to_numpy(base.get_layer("block5_conv3").kernel),
    )
    with pytest.raises(FileNotFoundError):
        models.build("vgg16", (32, 32, 3), NUM_CLASSES, {"weights": str(tmp_path / "missing.h5")})


def test_local_imagenet_file_gives_efficientnet_the_imagenet_normalization(tmp_path):
    # The ImageNet file stores the standard deviations as the variance.
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    base = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    norm = next(layer for layer in base.layers if isinstance(layer, keras.layers.Normalization))
    norm.adapt_mean.assign(mean)
    norm.adapt_variance.assign(std)
    path = tmp_path / "efficientnetb0_notop.h5"
    keras.saving.save_model(base, path)  # the legacy .h5 layout of the downloaded files
    keras.backend.clear_session()
    model = models.build("efficientnetb0", (32, 32, 3), NUM_CLASSES, {"weights": str(path)})
    norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    images = pixels((32, 32, 3))
    got = keras.ops.convert_to_numpy(keras.Model(model.input, norm.output)(images))
    np.testing.assert_allclose(got, (images / 255 - mean) / std, rtol=1e-5, atol=1e-5)


def test_new_weights_load_a_fine_tuned_model(tmp_path):
    first = models.build("model1", (32, 32, 3), NUM_CLASSES)
    path = tmp_path / "model1.weights.h5"
    first.save_weights(path)
    second = models.build("model1", (32, 32, 3), NUM_CLASSES, {"new_weights": str(path)})
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    with pytest.raises(FileNotFoundError):
        models.build("model1", (32, 32, 3), NUM_CLASSES, {"new_weights": str(tmp_path / "none.weights.h5")})


def test_builder_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.build("vgg16", (32, 32, 3), NUM_CLASSES)
        probabilities = model(pixels((32, 32, 3)), training=False)
        assert model.get_layer("head_custom_se").compute_dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert probabilities.dtype == "float32"
    probabilities = keras.ops.convert_to_numpy(probabilities)
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-3)


def test_model1_learns_a_small_task_quickly():
    rng = np.random.default_rng(0)
    n, size, classes = 60, 32, 3
    labels = np.arange(n) % classes
    images = rng.uniform(0, 80, (n, size, size, 3)).astype("float32")
    for index, label in enumerate(labels):  # a bright square in one of three places
        row, col = [(4, 4), (4, 20), (20, 12)][label]
        images[index, row : row + 8, col : col + 8, :] += 170
    keras.utils.set_random_seed(0)
    model = models.build("model1", (size, size, 3), classes, {"dropout": 0.2})
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(images, labels, batch_size=20, epochs=8, verbose=0)
    assert history.history["accuracy"][-1] >= 0.9
