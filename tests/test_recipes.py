"""The fine-tuning recipes: the report's kept exactly, the modern one's parts each doing what it says, and
local pretrained weights for every base (issue 14)."""

import math
import subprocess
import sys
from pathlib import Path

import _train_helpers as helpers
import h5py
import keras
import numpy as np
import pytest
from _helpers import model1_run

from carclf import models
from carclf import settings as S
from carclf import train as T
from carclf.augment import OnlineAugment, pipeline_for
from carclf.generators import ImageBatches, make_generators
from carclf.settings import AugmentSettings, SettingsError, TrainSettings

pytestmark = pytest.mark.usefixtures("fresh_session")


# --------------------------------------------------------------------------- #
# The recipes as settings
# --------------------------------------------------------------------------- #


def test_report_recipe_is_the_reports_settings():
    report = S.profile("full", recipe="report")
    assert report.recipe == "report"
    hp, train = report.hyperparams, report.train
    assert (hp.head, hp.gates, hp.optimizer_type, hp.learning_rate, hp.decay) == ("report", True, "Adam", 1e-4, 1e-6)
    assert (train.two_phase, train.schedule, train.label_smoothing, train.ema, train.epochs) == (
        False,
        "report",
        0.0,
        False,
        22,
    )
    assert report.augment.augmentation == "offline" and report.augment.pipeline == "report"
    callbacks = T.create_callbacks("m", settings=train.callbacks, checkpoint_path="best.weights.h5")
    assert callbacks.early_stopping.monitor == callbacks.reduce_lr.monitor == "val_loss"
    assert callbacks.checkpoint.monitor == "val_top3_accuracy" and callbacks.ema is None
    assert T.make_loss(train.label_smoothing) == "categorical_crossentropy"


def test_full_profile_runs_the_modern_recipe_and_a_changed_part_is_custom():
    full = S.profile("full")
    assert full.recipe == "modern"
    assert (full.hyperparams.head, full.hyperparams.optimizer_type, full.train.schedule) == (
        "gap",
        "AdamW",
        "warmup_cosine",
    )
    assert full.train.two_phase and full.train.ema and full.train.label_smoothing == 0.1
    assert full.augment.augmentation == "online" and full.augment.pipeline == "modern"
    assert full.evaluation.tta and full.train.callbacks.reduce_lr is None
    assert S.profile("full", ema=False).recipe == "custom"
    assert S.profile("full", **{"hyperparams.learning_rate": 3e-4}).recipe == "modern"  # a default, not a part
    assert S.profile("demo", recipe="modern").recipe == "modern"


def test_a_schedule_and_a_plateau_callback_cannot_both_set_the_rate():
    with pytest.raises(SettingsError, match="reduce_lr=None"):
        S.profile("full", **{"train.callbacks.reduce_lr": S.ReduceLRSettings()})


def test_the_modern_head_pools_every_base():
    report = models.build("vgg16", (32, 32, 3), 5, {"head": "report"})
    modern = models.build("vgg16", (32, 32, 3), 5, {"head": "gap", "gates": False, "fc_layers": ()})
    names = [layer.name for layer in modern.layers if layer.name.startswith("head_")]
    assert names == ["head_avg_pool", "head_top_dropout"]
    assert "head_flatten" in [layer.name for layer in report.layers]
    gated = models.build("vgg16", (32, 32, 3), 5, {"head": "gap", "gates": True, "fc_layers": ()})
    assert {"head_attention", "head_se"} <= {layer.name for layer in gated.layers}
    assert modern.count_params() < report.count_params()


# --------------------------------------------------------------------------- #
# The modern recipe's parts
# --------------------------------------------------------------------------- #


@pytest.mark.backend
def test_warmup_then_cosine_per_step():
    optimizer, schedule = T.make_optimizer(
        T.optimizer_settings({"optimizer_type": "AdamW", "learning_rate": 0.1}),
        train=TrainSettings(schedule="warmup_cosine", warmup=0.25, callbacks=S.CallbackSettings(reduce_lr=None)),
        steps=8,
    )
    assert schedule is None and isinstance(optimizer, keras.optimizers.AdamW)
    got = []
    for step in range(9):
        optimizer.iterations.assign(step)
        got.append(T.current_lr(optimizer))
    expected = [0.1 * s / 2 if s < 2 else 0.05 * (1 + math.cos(math.pi * (s - 2) / 6)) for s in range(9)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.backend
def test_adamw_decays_weights_but_not_biases():
    optimizer, _ = T.make_optimizer(T.optimizer_settings({"optimizer_type": "AdamW", "learning_rate": 0.1}))
    assert optimizer.weight_decay == pytest.approx(0.004)  # Keras's default when none is given
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    bias = keras.Variable(np.ones(2, "float32"), name="bias")
    optimizer.apply([np.zeros((2, 2), "float32"), np.zeros(2, "float32")], [kernel, bias])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), 1 - 0.1 * 0.004, rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bias), 1.0)


@pytest.mark.backend
def test_label_smoothing_moves_the_targets_towards_uniform():
    y = np.array([[1.0, 0.0, 0.0, 0.0]], "float32")
    p = np.array([[0.7, 0.1, 0.1, 0.1]], "float32")
    smoothed = y * 0.9 + 0.1 / 4
    loss = T.make_loss(0.1)
    expected = -(smoothed * np.log(p)).sum()
    assert float(keras.ops.convert_to_numpy(loss(y, p))) == pytest.approx(expected, rel=1e-5)
    assert expected > -np.log(0.7)  # more than the plain cross-entropy of a right answer


def _runs(data, home, epochs=3, **settings):
    train = ImageBatches(data.decoded["train"], 32, shuffle=True, seed=0)
    test = ImageBatches(data.decoded["test"], 100, shuffle=False)
    return model1_run(train, test, home, {"learning_rate": 3e-3}, epochs, plot=False, **settings)


class _Capture(keras.callbacks.Callback):
    """Extra callbacks run after the averaged weights are swapped out: these are the trained ones."""

    def __init__(self):
        super().__init__()
        self.raw, self.average, self.bn = [], None, []

    def on_epoch_end(self, epoch, logs=None):
        self.raw = [keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables]
        average = getattr(self.model.optimizer, "_model_variables_moving_average", [])
        self.average = [keras.ops.convert_to_numpy(v) for v in average]
        bn = [layer for layer in self.model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        self.bn.append([keras.ops.convert_to_numpy(w) for layer in bn for w in layer.weights])


@pytest.mark.backend
def test_ema_weights_are_validated_and_saved(synthetic_cars32, tmp_path):
    capture = _Capture()
    run = _runs(synthetic_cars32, tmp_path, ema=True, ema_momentum=0.9, extra_callbacks=[capture])
    saved = run.load_model(compile=False)
    for raw, average, kept in zip(capture.raw, capture.average, saved.trainable_variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(kept), average, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(r, a) for r, a in zip(capture.raw, capture.average))
    saved.compile(loss="categorical_crossentropy")
    test = ImageBatches(synthetic_cars32.decoded["test"], 100, shuffle=False)
    loss = saved.evaluate(test, verbose=0)  # the last epoch was validated with the averaged weights
    assert loss == pytest.approx(run.history["val_loss"][-1], rel=1e-4)


@pytest.mark.backend
def test_batch_normalization_runs_in_inference_mode_while_fine_tuning(synthetic_cars32, tmp_path):
    capture = _Capture()
    run = _runs(
        synthetic_cars32, tmp_path, two_phase=True, head_epochs=1, extra_callbacks=[capture], label_smoothing=0.1
    )
    assert run.history["phase"] == [0.0, 1.0, 1.0]
    after_head, after_finetune = capture.bn[0], capture.bn[-1]
    for a, b in zip(after_head, after_finetune):  # gamma, beta and the moving statistics: all unchanged
        np.testing.assert_array_equal(a, b)
    model = run.load_model()
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.trainable for layer in convs)
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)


def test_learning_rate_history_follows_the_schedule(synthetic_cars32, tmp_path):
    run = _runs(
        synthetic_cars32,
        tmp_path,
        epochs=4,
        schedule="warmup_cosine",
        warmup=0.25,
        callbacks=S.CallbackSettings(reduce_lr=None),
    )
    steps = 4 * len(ImageBatches(synthetic_cars32.decoded["train"], 32))
    schedule = T.warmup_cosine(3e-3, steps, 0.25)
    per_epoch = steps // 4
    expected = [float(keras.ops.convert_to_numpy(schedule(per_epoch * (e + 1)))) for e in range(run.epochs_run)]
    np.testing.assert_allclose(run.history["learning_rate"], expected, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_a_killed_modern_run_resumes_to_the_same_model(synthetic_cars32, tmp_path):
    """Killed mid-way through the fine-tuning phase, with the EMA swapped out, the warmup and cosine part
    way and two augmentation workers running ahead, the resumed run ends with the straight run's weights."""
    helper = Path(__file__).with_name("_train_helpers.py")
    killed = tmp_path / "killed"
    args = [str(synthetic_cars32.cache.root), synthetic_cars32.decoded_key, str(killed), "2", "2", "modern"]
    proc = subprocess.run([sys.executable, str(helper), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]
    resumed = helpers.modern_run(synthetic_cars32.decoded, killed)
    straight = helpers.modern_run(synthetic_cars32.decoded, tmp_path / "straight")
    assert resumed.resumed_from_epoch == 2 and straight.resumed_from_epoch is None
    assert resumed.history["phase"] == straight.history["phase"] == [0.0, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(resumed.history["learning_rate"], straight.history["learning_rate"], rtol=1e-6)
    np.testing.assert_allclose(resumed.history["val_loss"], straight.history["val_loss"], rtol=1e-3)
    for a, b in zip(resumed.load_model(compile=False).weights, straight.load_model(compile=False).weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-3, atol=1e-5)


# --------------------------------------------------------------------------- #
# Online augmentation in workers
# --------------------------------------------------------------------------- #


def _epoch_through_keras(generator):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(generator, shuffle=False)
    adapter.on_epoch_begin()
    batches = [np.asarray(x) for x, _ in adapter.get_numpy_iterator()]
    adapter.on_epoch_end()
    return batches


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_augmentation_workers_give_the_same_pixels_as_one(synthetic_cars32, executor):
    decoded = synthetic_cars32.decoded
    one = AugmentSettings(augmentation="online", pipeline="modern", workers=1)
    many = AugmentSettings(augmentation="online", pipeline="modern", workers=2, executor=executor)
    alone = make_generators(decoded, one, batch_size=16, seed=3, progress=False).train
    together = make_generators(decoded, many, batch_size=16, seed=3, progress=False).train
    assert (alone.workers, together.workers, together.use_multiprocessing) == (1, 2, executor == "process")
    first, second = _epoch_through_keras(alone), _epoch_through_keras(together)
    assert len(first) == len(second) == len(alone)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    plain = make_generators(decoded, AugmentSettings(augmentation="none"), batch_size=16, seed=3).train
    assert not np.array_equal(first[0], plain[0][0])  # the crops and transforms did change the pixels


def test_modern_pipeline_crops_then_runs_the_reports_transforms():
    declaration = pipeline_for("modern", (40, 48))
    assert declaration[0][0] == "RandomResizedCrop" and declaration[0][1]["size"] == (40, 48)
    assert declaration[1:] == pipeline_for("report", (40, 48))
    images = np.random.default_rng(0).integers(0, 256, (4, 40, 48, 3), dtype=np.uint8)
    out = OnlineAugment(declaration)(images, np.random.default_rng(1))
    assert out.shape == images.shape and out.dtype == np.uint8


# --------------------------------------------------------------------------- #
# Local pretrained weights for every base
# --------------------------------------------------------------------------- #

PRETRAINED = [name for name in models.list_models() if models.model_spec(name).base is not None]


def _save_no_top(base, path):
    """The layout of the file keras.applications downloads (``*_notop.h5``): Keras 2's weights groups."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)


def _shape(name):
    size = max(models.MIN_INPUT_SIZE[name], 32)
    return (size, size, 3)


@pytest.mark.slow
@pytest.mark.parametrize("name", PRETRAINED)
def test_no_top_weights_file_loads_into_every_base(name, tmp_path):
    spec, shape = models.model_spec(name), _shape(name)
    keras.utils.set_random_seed(1)
    source = spec.base.factory(include_top=False, weights=None, input_shape=shape)
    path = tmp_path / spec.base.weights_file
    _save_no_top(source, path)
    images = np.random.default_rng(0).uniform(0, 255, (2, *shape)).astype("float32")
    model = models.build(name, shape, 5, {"weights": str(path)})
    transfer = model.get_layer(spec.transfer_layer)
    got = keras.ops.convert_to_numpy(keras.Model(model.input, transfer.output)(images))
    preprocess = keras.Model(model.input, model.get_layer("preprocessing").output) if spec.preprocessing else None
    inputs = keras.ops.convert_to_numpy(preprocess(images)) if preprocess is not None else images
    if name == "efficientnetb0":  # its Rescaling and Normalization are inside the base: the raw pixels go in
        inputs = images
    want = keras.ops.convert_to_numpy(keras.Model(source.input, source.get_layer(spec.transfer_layer).output)(inputs))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_file_of_another_base_is_a_one_line_error(tmp_path):
    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "resnet50_notop.h5"
    _save_no_top(source, path)
    with pytest.raises(models.PretrainedWeightsError) as caught:
        models.build("vgg16", (32, 32, 3), 5, {"weights": str(path)})
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "'block1_conv1'" in message and "(3, 3, 3, 64)" in message  # the first layer that does not fit
    assert models.model_spec("vgg16").base.weights_url in message
    with pytest.raises(FileNotFoundError, match="missing.h5: no such weights file"):
        models.build("vgg16", (32, 32, 3), 5, {"weights": str(tmp_path / "missing.h5")})
