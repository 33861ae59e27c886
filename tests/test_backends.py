"""The backend-portable subset: every test here runs under TensorFlow and under JAX.

All of them are marked ``backend``. ``make test`` runs the whole suite on the
default backend (TensorFlow), then this subset again with
``KERAS_BACKEND=jax pytest -q -m backend``:

- every custom layer (``SEBlock``, ``AttentionBlock``, ``CustomLayer``,
  ``ImagePreprocessing``) against a NumPy reference, called eagerly and in a
  compiled ``predict``, trained in a compiled step, and under mixed precision;
- a forward pass of all eight builders at their smallest input size;
- ``run_model_pipeline`` on model1: a fit interrupted mid-epoch by an
  exception, resumed by a second call, and compared with an uninterrupted run;
- ``.keras`` files saved under one backend and loaded under the other, both
  ways (the other backend runs in a subprocess: this file is also a script,
  ``python tests/test_backends.py save|load FOLDER``): weights, predictions
  and optimizer state, float32 and mixed_float16 as a GPU run saves them.
  One pass covers both ways, so the JAX pass leaves this test out;
- ``carclf.train.load_model`` keeping a mixed-precision
  model's optimizer state, on any backend.
"""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from _helpers import model1_run

from carclf import models
from carclf.cache import load_pickle
from carclf.device import configure, precision_policy
from carclf.generators import ImageBatches
from carclf.layers import AttentionBlock, CustomLayer, ImagePreprocessing, SEBlock
from carclf.metrics import report_metrics
from carclf.train import load_model, make_optimizer, optimizer_settings

pytestmark = [pytest.mark.backend, pytest.mark.usefixtures("fresh_session")]

BACKEND = keras.backend.backend()
OTHER = "jax" if BACKEND == "tensorflow" else "tensorflow"


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


# --------------------------------------------------------------------------- #
# Custom layers
# --------------------------------------------------------------------------- #


def _gate_reference(block, x):
    """Squeeze (mean over H, W), excite (relu, sigmoid), rescale, from the block's own weights."""
    w1, b1 = (_numpy(w) for w in block.reduce.weights)
    w2, b2 = (_numpy(w) for w in block.expand.weights)
    gate = 1 / (1 + np.exp(-(np.maximum(x.mean(axis=(1, 2)) @ w1 + b1, 0) @ w2 + b2)))
    return x * gate[:, None, None, :]


def _preprocessing_reference(mode, x):
    if mode == "tf":
        return x / 127.5 - 1
    if mode == "caffe":
        return x[..., ::-1] - np.array([103.939, 116.779, 123.68])
    return (x / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])


LAYERS = {
    "SEBlock": (lambda: SEBlock(reduction=4), "gate"),
    "AttentionBlock": (lambda: AttentionBlock(), "gate"),
    "CustomLayer-se": (lambda: CustomLayer("se"), "gate"),
    "CustomLayer-attention": (lambda: CustomLayer("attention", reduction=2), "gate"),
    "ImagePreprocessing-caffe": (lambda: ImagePreprocessing("caffe"), "caffe"),
    "ImagePreprocessing-torch": (lambda: ImagePreprocessing("torch"), "torch"),
    "ImagePreprocessing-tf": (lambda: ImagePreprocessing("tf"), "tf"),
}


@pytest.mark.parametrize("key", list(LAYERS))
def test_custom_layer_matches_the_numpy_reference_eager_and_compiled(key):
    make, kind = LAYERS[key]
    layer = make()
    rng = np.random.default_rng(0)
    if kind == "gate":
        x = rng.normal(size=(3, 5, 5, 32)).astype("float32")
    else:
        x = rng.uniform(0, 255, (3, 6, 6, 3)).astype("float32")
    eager = _numpy(layer(x))
    if kind == "gate":
        gate = layer.block if isinstance(layer, CustomLayer) else layer
        expected = _gate_reference(gate, x)
    else:
        expected = _preprocessing_reference(kind, x)
    np.testing.assert_allclose(eager, expected, rtol=1e-5, atol=1e-4)
    # the same layer inside a model, through the backend's compiled predict (jax.jit / tf.function)
    inputs = keras.Input(x.shape[1:])
    compiled = keras.Model(inputs, layer(inputs)).predict(x, verbose=0)
    np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-5)
    # and its config rebuilds it (no custom_objects: registered under "carclf")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()


def _all_blocks_model(size=8, classes=3):
    inputs = keras.Input((size, size, 3))
    x = ImagePreprocessing("torch")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same")(x)
    for block in (AttentionBlock(), SEBlock(), CustomLayer("attention"), CustomLayer("se")):
        x = block(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def test_custom_layers_train_in_the_compiled_step():
    keras.utils.set_random_seed(0)
    model = _all_blocks_model()
    model.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy", jit_compile=configure().jit_compile)
    before = {w.path: _numpy(w).copy() for w in model.trainable_weights}
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (8, 8, 8, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 8)]
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert math.isfinite(history.history["loss"][-1])
    changed = {w.path for w in model.trainable_weights if not np.array_equal(before[w.path], _numpy(w))}
    # every block learns (a bottleneck unit may sit in ReLU's flat part, so: some weight of each), and the
    # gradient reaches the convolution below the four blocks
    for layer in model.layers:
        if isinstance(layer, (AttentionBlock, SEBlock, CustomLayer)):
            assert {w.path for w in layer.trainable_weights} & changed, f"{layer.name} did not train"
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.kernel.path in changed


def test_custom_layers_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _all_blocks_model()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    blocks = [layer for layer in model.layers if isinstance(layer, (AttentionBlock, SEBlock, CustomLayer))]
    assert len(blocks) == 4
    assert all(layer.compute_dtype == "float16" for layer in blocks)
    assert all(w.dtype == "float32" for layer in blocks for w in layer.weights)
    probabilities = model.predict(np.full((2, 8, 8, 3), 128.0, "float32"), verbose=0)
    assert probabilities.dtype == np.float32 and np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-3)


# --------------------------------------------------------------------------- #
# The eight builders
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", models.NAMES)
def test_builder_forward_pass_at_its_smallest_size(name):
    size = models.MIN_INPUT_SIZE[name]
    model = models.build(name, (size, size, 3), 5)
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    probabilities = model.predict(x, verbose=0)  # compiled: jax.jit / tf.function
    assert probabilities.shape == (2, 5) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------- #
# run_model_pipeline: fit, interrupted, resumed
# --------------------------------------------------------------------------- #

#: Two epochs of model1 with a decaying learning rate (its scale is a constant of the compiled step).
RESUME = {"hyperparams": {"learning_rate": 1e-3, "dropout": 0.2, "decay": 0.01}, "epochs": 2, "batch_size": 32}


class Interrupted(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    """Raise :class:`Interrupted` at the end of batch ``batch`` of epoch ``epoch`` (0-based): mid-epoch."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise Interrupted(f"interrupted at epoch {self.epoch}, batch {batch}")


def _model1_run(decoded, home, extra_callbacks=()):
    train = ImageBatches(decoded["train"], RESUME["batch_size"], shuffle=True, seed=0)
    test = ImageBatches(decoded["test"], 50, shuffle=False)
    return model1_run(
        train,
        test,
        home,
        RESUME["hyperparams"],
        RESUME["epochs"],
        plot=False,
        tensorboard=False,
        extra_callbacks=extra_callbacks,
    )


@pytest.mark.slow
def test_model1_fit_interrupted_mid_epoch_resumes_without_gap_or_repeat(synthetic_cars32, tmp_path):
    decoded = synthetic_cars32.decoded
    with pytest.raises(Interrupted):
        _model1_run(decoded, tmp_path / "interrupted", [InterruptAt(1, 2)])
    (state_path,) = (tmp_path / "interrupted" / "models" / "model1").glob("*/resume/state.pkl")
    state = load_pickle(state_path)
    assert state["epoch"] == 0 and len(state["history"]["loss"]) == 1

    resumed = _model1_run(decoded, tmp_path / "interrupted")
    straight = _model1_run(decoded, tmp_path / "straight")
    assert resumed.key == straight.key and not resumed.loaded
    assert resumed.resumed_from_epoch == 1 and straight.resumed_from_epoch is None
    assert resumed.epochs_run == straight.epochs_run == 2
    # no gap, no repeat: epoch 1 is the interrupted run's, epoch 2 the resumed one's
    for key, values in state["history"].items():
        assert resumed.history[key][:1] == values
    assert pd.read_csv(resumed.history_path)["epoch"].tolist() == [1, 2]
    batches = math.ceil(len(decoded["train"]) / RESUME["batch_size"])
    lr, decay = RESUME["hyperparams"]["learning_rate"], RESUME["hyperparams"]["decay"]
    expected_lr = [lr / (1 + decay * batches * (epoch + 1)) for epoch in range(2)]
    np.testing.assert_allclose(resumed.history["learning_rate"], expected_lr, rtol=1e-5)
    # weights, optimizer state, seeds and data order restored: the same curves as without the interruption
    np.testing.assert_allclose(resumed.history["loss"], straight.history["loss"], rtol=1e-4)
    np.testing.assert_allclose(resumed.history["val_loss"], straight.history["val_loss"], rtol=1e-4)
    assert resumed.test_metrics["loss"] == pytest.approx(straight.test_metrics["loss"], rel=1e-4)
    assert not state_path.parent.exists()
    assert resumed.policy == "float32" and resumed.jit_compile is (BACKEND == "jax")


# --------------------------------------------------------------------------- #
# .keras files across backends
# --------------------------------------------------------------------------- #

#: What crosses, by file name: (builder, size, compiled, dtype policy). model1 trained one epoch with
#: the pipeline's optimizer (decay schedule), loss and metrics, so that the optimizer state travels
#: too, in float32 and as a GPU run saves it (mixed_float16: the optimizer is a LossScaleOptimizer);
#: VGG16 with the attention, SE and custom blocks and caffe preprocessing (weights only).
CROSS = {
    "model1": ("model1", 32, True, "float32"),
    "model1-mixed": ("model1", 16, True, "mixed_float16"),
    "vgg16": ("vgg16", 32, False, "float32"),
}
CLASSES = 5


def _inputs(size):
    return np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype("float32")


def save_models(folder):
    """Build, (train,) save each model of CROSS under the current backend, with its weights and predictions."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key, (name, size, compiled, policy) in CROSS.items():
        keras.utils.set_random_seed(0)
        with precision_policy(policy):
            model = models.build(name, (size, size, 3), CLASSES)
            if compiled:
                optimizer, _ = make_optimizer(optimizer_settings({"decay": 0.01}))
                model.compile(
                    optimizer, "categorical_crossentropy", metrics=report_metrics(), jit_compile=configure().jit_compile
                )
                rng = np.random.default_rng(1)
                x = rng.uniform(0, 255, (8, size, size, 3)).astype("float32")
                y = np.eye(CLASSES, dtype="float32")[rng.integers(0, CLASSES, 8)]
                model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        model.save(folder / f"{key}.keras")
        _record(model, folder / f"{key}.saved", size)
        keras.backend.clear_session()
    (folder / "saved_by").write_text(keras.backend.backend())


def load_models(folder):
    """Load each model of CROSS under the current backend; record its weights and predictions."""
    folder = Path(folder)
    for key, (_, size, _, policy) in CROSS.items():
        # Under its own policy: Keras does not restore a functional model's dtype policy, and compiling
        # it under float32 would drop the LossScaleOptimizer and its state
        # (see test_load_model_keeps_a_mixed_precision_optimizer).
        with precision_policy(policy):
            model = load_model(folder / f"{key}.keras")
        assert model.get_layer("preprocessing").dtype_policy.name == policy
        _record(model, folder / f"{key}.loaded", size)
        keras.backend.clear_session()
    (folder / "loaded_by").write_text(keras.backend.backend())


def _record(model, stem, size):
    np.savez(f"{stem}.weights.npz", *[_numpy(w) for w in model.weights])
    np.save(f"{stem}.predictions.npy", model.predict(_inputs(size), verbose=0))
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        np.savez(f"{stem}.optimizer.npz", *[_numpy(v) for v in optimizer.variables])
        np.save(f"{stem}.iterations.npy", _numpy(optimizer.iterations))


def _in_other_backend(mode, folder):
    if importlib.util.find_spec(OTHER) is None:
        pytest.skip(f"the {OTHER} backend is not installed (requirements-dev.txt installs JAX)")
    env = {**os.environ, "KERAS_BACKEND": OTHER, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, __file__, mode, str(folder)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def _npz(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


# Both directions run in one pass, so the JAX pass of `make test` leaves this test out (-m "not both_ways"):
# there it would repeat the same two crossings.
@pytest.mark.slow
@pytest.mark.both_ways
@pytest.mark.parametrize("direction", ["saved-here", "saved-in-other"])
def test_keras_file_saved_under_one_backend_loads_under_the_other(direction, tmp_path):
    if direction == "saved-here":
        save_models(tmp_path)
        _in_other_backend("load", tmp_path)
        expected = (BACKEND, OTHER)
    else:
        _in_other_backend("save", tmp_path)
        load_models(tmp_path)
        expected = (OTHER, BACKEND)
    assert ((tmp_path / "saved_by").read_text(), (tmp_path / "loaded_by").read_text()) == expected
    for key, (_, _, compiled, policy) in CROSS.items():
        saved, loaded = tmp_path / f"{key}.saved", tmp_path / f"{key}.loaded"
        for a, b in zip(_npz(f"{saved}.weights.npz"), _npz(f"{loaded}.weights.npz"), strict=True):
            np.testing.assert_array_equal(a, b)
        tolerance = {"rtol": 1e-4, "atol": 1e-5} if policy == "float32" else {"rtol": 1e-2, "atol": 2e-3}
        np.testing.assert_allclose(
            np.load(f"{loaded}.predictions.npy"), np.load(f"{saved}.predictions.npy"), **tolerance
        )
        if compiled:  # the optimizer state travels too (iterations, moments, loss scale)
            iterations = int(np.load(f"{saved}.iterations.npy"))
            assert int(np.load(f"{loaded}.iterations.npy")) == iterations
            if policy == "float32":
                assert iterations == 2  # 8 images in batches of 4
            for a, b in zip(_npz(f"{saved}.optimizer.npz"), _npz(f"{loaded}.optimizer.npz"), strict=True):
                np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer:UserWarning")
def test_load_model_keeps_a_mixed_precision_optimizer(tmp_path):
    with precision_policy("mixed_float16"):
        model = models.build("model1", (16, 16, 3), CLASSES)
        optimizer, _ = make_optimizer(optimizer_settings({}))
        model.compile(optimizer, "categorical_crossentropy")
    x = np.random.default_rng(1).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    model.fit(x, np.eye(CLASSES, dtype="float32")[np.arange(8) % CLASSES], batch_size=4, verbose=0)
    model.save(tmp_path / "mixed.keras")
    loaded = load_model(tmp_path / "mixed.keras")
    assert type(loaded.optimizer) is type(model.optimizer)  # LossScaleOptimizer
    assert int(_numpy(loaded.optimizer.iterations)) == int(_numpy(model.optimizer.iterations))


if __name__ == "__main__":
    {"save": save_models, "load": load_models}[sys.argv[1]](sys.argv[2])
