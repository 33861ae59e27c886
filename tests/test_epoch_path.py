"""What the training loop waits for at every step and every epoch's end (issue 18): the background writer
of the resume state, the interval between states, the checkpoint kept on the host, and callbacks that do
not make Keras read each step's values."""

import threading
import time

import keras
import numpy as np
import pytest
from _helpers import model1_run
from keras.src.callbacks.callback_list import CallbackList
from keras.src.utils.python_utils import is_default

from carclf.cache import load_pickle
from carclf.generators import ImageBatches
from carclf.settings import CallbackSettings
from carclf.train.callbacks import NonFiniteLossError, create_callbacks
from carclf.train.resume import ResumableState
from carclf.train.writer import BackgroundWriter

pytestmark = pytest.mark.usefixtures("fresh_session")


# --------------------------------------------------------------------------- the writer


def test_the_newest_state_wins_when_writes_queue():
    """While one state is written, a newer one replaces the older one still waiting: the last submitted is
    the last written, and at most one waits."""
    written, release = [], threading.Event()

    def slow_write(job):
        if job == "epoch 1":
            release.wait(10)
        written.append(job)

    writer = BackgroundWriter(slow_write)
    writer.submit("epoch 1")
    time.sleep(0.2)  # epoch 1 is being written
    writer.submit("epoch 2")
    writer.submit("epoch 3")  # epoch 2 had not started: dropped
    release.set()
    writer.flush()
    assert written == ["epoch 1", "epoch 3"] and writer.dropped == 1 and writer.written == 2
    writer.submit("epoch 4")  # the thread stopped or waits: a new submit is written all the same
    writer.flush()
    assert written[-1] == "epoch 4"


def test_a_failed_background_write_is_raised_in_the_training_thread():
    def failing(job):
        raise OSError(28, "No space left on device")

    writer = BackgroundWriter(failing)
    writer.submit("state")
    with pytest.raises(OSError, match="No space left"):
        writer.flush()
    writer.flush()  # raised once


def test_submit_returns_before_the_write_ends():
    release = threading.Event()
    writer = BackgroundWriter(lambda job: release.wait(10))
    t0 = time.perf_counter()
    writer.submit("state")
    assert time.perf_counter() - t0 < 0.5
    release.set()
    writer.flush()


# --------------------------------------------------------------------------- the state's interval


class _Recorder:
    """A writer that keeps the states it is handed."""

    def __init__(self):
        self.states = []

    def submit(self, job):
        self.states.append(job[1])

    @property
    def epochs(self):
        return [state["epoch"] for state in self.states]


def _state_callback(tmp_path, interval, end=5):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    recorder = _Recorder()
    callbacks = create_callbacks("m", settings=CallbackSettings(early_stopping=None, reduce_lr=None))
    saver = ResumableState(
        tmp_path / "state.pkl",
        key="k",
        phase={"index": 0, "end": end},
        callbacks=callbacks,
        schedule=None,
        train_generator=None,
        history={},
        writer=recorder,
        interval=interval,
    )
    saver.set_model(model)
    model.optimizer.build(model.trainable_variables)
    return saver, recorder


@pytest.mark.parametrize(("interval", "expected"), [(0, [0, 1, 2, 3, 4]), (3600, [0, 4])])
def test_the_state_is_taken_at_most_every_interval_and_at_the_phase_end(tmp_path, interval, expected):
    saver, recorder = _state_callback(tmp_path, interval)
    for epoch in range(5):
        saver.on_epoch_end(epoch, {"loss": 1.0})
    assert recorder.epochs == expected


def test_an_early_stop_takes_the_state_whatever_the_interval(tmp_path):
    saver, recorder = _state_callback(tmp_path, 3600)
    saver.on_epoch_end(0, {"loss": 1.0})
    saver.model.stop_training = True
    saver.on_epoch_end(1, {"loss": 1.0})
    assert recorder.epochs == [0, 1]


def test_the_state_holds_copies_not_views_of_the_variables(tmp_path):
    saver, recorder = _state_callback(tmp_path, 0)
    kernel = saver.model.layers[0].kernel
    saver.on_epoch_end(0, {"loss": 1.0})
    before = recorder.states[0]["model_variables"][0].copy()
    kernel.assign(kernel + 1.0)
    np.testing.assert_array_equal(recorder.states[0]["model_variables"][0], before)


# --------------------------------------------------------------------------- a whole run


def _run(decoded, home, **settings):
    train = ImageBatches(decoded["train"], 32, shuffle=True, seed=0)
    test = ImageBatches(decoded["test"], 64, shuffle=False)
    return model1_run(train, test, home, {"learning_rate": 1e-3}, 3, plot=False, tensorboard=False, **settings)


@pytest.mark.backend
def test_a_finished_run_keeps_one_model_file_the_best_weights_and_no_optimizer_state(synthetic_cars32, tmp_path):
    result = _run(synthetic_cars32.decoded, tmp_path, state_interval=3600)
    run_dir = result.model_path.parent
    assert [p.name for p in run_dir.glob("*.keras")] == [result.model_path.name]
    assert not (run_dir / "resume").exists() and not list(run_dir.rglob("*.pkl"))
    best = run_dir / "best.weights.h5"
    assert best.is_file()
    # the checkpoint holds the best epoch's weights (by val_top3_accuracy), not the last epoch's
    model = result.load_model(best=True)
    assert len(model.get_weights()) == len(result.load_model().get_weights())


@pytest.mark.backend
def test_a_blocking_writer_and_a_background_one_train_the_same_run(synthetic_cars32, tmp_path):
    background = _run(synthetic_cars32.decoded, tmp_path / "bg", state_interval=0)
    blocking = _run(synthetic_cars32.decoded, tmp_path / "sync", state_interval=0, background_state=False)
    assert background.key == blocking.key  # how the state is written is not part of what is computed
    np.testing.assert_allclose(background.history["loss"], blocking.history["loss"], rtol=1e-5)


# --------------------------------------------------------------------------- no per-step reads


@pytest.mark.backend
def test_the_default_callbacks_let_keras_dispatch_batch_hooks_without_waiting(tmp_path):
    """No default callback has a batch hook that is not safe to run behind the training loop, so on a
    backend that allows it (JAX) Keras does not read every step's logs in the training thread."""
    callbacks = create_callbacks(
        "m", checkpoint_path=tmp_path / "best.weights.h5", tensorboard_dir=tmp_path / "tb", ema=True
    ).as_list()
    for cb in callbacks:
        assert getattr(cb, "async_safe", False) or is_default(cb.on_train_batch_end), type(cb).__name__
    listed = CallbackList(callbacks, add_history=True, add_progbar=False)
    assert listed._async_train is keras.src.backend.IS_THREAD_SAFE


class _NaNFrom(keras.utils.PyDataset):
    """Batches whose images turn NaN from batch ``bad`` on; counts the batches read."""

    def __init__(self, bad, n=40):
        super().__init__()
        self.bad, self.n = bad, n
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(8, 4)).astype("float32")
        self.y = keras.utils.to_categorical(rng.integers(0, 2, 8), 2)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = self.x * (np.nan if i >= self.bad else 1.0)
        return x, self.y


class _Steps(keras.callbacks.Callback):
    async_safe = True

    def __init__(self):
        super().__init__()
        self.begun = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.begun += 1


@pytest.mark.backend
@pytest.mark.parametrize("every", [1, 5])
def test_the_non_finite_loss_stop_stops_within_k_steps(every):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    callbacks = create_callbacks("m", settings=CallbackSettings(early_stopping=None, reduce_lr=None), check_every=every)
    steps = _Steps()
    bad = 7  # 0-based: the 8th step is the first with a NaN loss
    with pytest.raises(NonFiniteLossError, match="the training loss became nan at epoch 1"):
        model.fit(_NaNFrom(bad), epochs=1, callbacks=[steps, *callbacks.as_list()], verbose=0, shuffle=False)
    # the check reads every `every` steps; where batch hooks run behind the loop, one more step may start
    slack = 1 if keras.src.backend.IS_THREAD_SAFE else 0
    assert bad + 1 <= steps.begun <= bad + every + slack


def test_the_best_weights_travel_in_the_resume_state_and_land_in_the_checkpoint(synthetic_cars32, tmp_path):
    """While the run can resume, the best epoch's weights live in the state; best.weights.h5 is written
    from them when the run finishes."""
    seen = []

    class ReadState(keras.callbacks.Callback):  # runs after the state is written (a blocking writer here)
        def on_epoch_end(self, epoch, logs=None):
            (path,) = tmp_path.glob("models/model1/*/resume/state.pkl")
            seen.append(load_pickle(path)["callbacks"]["checkpoint"])

    result = _run(
        synthetic_cars32.decoded, tmp_path, state_interval=0, background_state=False, extra_callbacks=[ReadState()]
    )
    assert len(seen) == 3 and all(s["best_weights"] is not None for s in seen)
    best = result.load_model(best=True).get_weights()
    for saved, loaded in zip(seen[-1]["best_weights"], best):
        np.testing.assert_array_equal(saved, loaded)
    if seen[-1]["best_epoch"] != 2:  # an earlier epoch was best: the checkpoint is not the final model
        final = result.load_model().get_weights()
        assert any(not np.array_equal(a, b) for a, b in zip(best, final))


def test_a_resumed_state_puts_the_best_weights_back_into_the_checkpoint(tmp_path):
    settings = CallbackSettings(early_stopping=None, reduce_lr=None)
    saver, recorder = _state_callback(tmp_path, 0)
    saver.callbacks = create_callbacks("m", settings=settings, checkpoint_path=tmp_path / "b.weights.h5")
    saver.callbacks.checkpoint.set_model(saver.model)
    saver.callbacks.checkpoint.on_epoch_end(0, {"val_top3_accuracy": 0.5})
    saver.on_epoch_end(0, {"loss": 1.0})

    again, _ = _state_callback(tmp_path, 0)
    again.callbacks = create_callbacks("m", settings=settings, checkpoint_path=tmp_path / "b.weights.h5")
    again.resume(again.model, recorder.states[0])
    restored = again.callbacks.checkpoint
    assert restored.best == 0.5 and restored.best_epoch == 0
    for a, b in zip(restored.best_weights, saver.model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.backend
def test_the_device_copies_of_the_best_weights_do_not_follow_the_training(tmp_path):
    """Early stopping keeps the best epoch's weights where they live; the next steps' updates must not reach
    them (TensorFlow copies a variable's buffer on write while a read of it is held; JAX arrays are
    immutable, and the copy is a buffer of its own, safe from donation)."""
    saver, _ = _state_callback(tmp_path, 0)
    es = create_callbacks("m", settings=CallbackSettings(reduce_lr=None)).early_stopping
    es.set_model(saver.model)
    es.on_train_begin()
    es.on_epoch_end(0, {"val_loss": 1.0})
    kept = [keras.ops.convert_to_numpy(w).copy() for w in es.best_weights]
    kernel = saver.model.layers[0].kernel
    kernel.assign(kernel + 1.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(es.best_weights[0]), kept[0])
    es.on_epoch_end(1, {"val_loss": 2.0})  # no improvement: the copy stays the first epoch's
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(es.best_weights[0]), kept[0])
    es.on_epoch_end(2, {"val_loss": 0.5})
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(es.best_weights[0]), kept[0] + 1.0)
