"""The training run that tests/test_train.py kills in a subprocess and resumes.

    python tests/_train_helpers.py PICKLES DECODED_KEY HOME KILL_EPOCH KILL_BATCH [plateau|modern]

runs :func:`plateau_run` (or :func:`modern_run`) and SIGKILLs itself at batch KILL_BATCH of epoch
KILL_EPOCH (0-based), i.e. mid-epoch, after the previous epochs' state was saved; with KILL_EPOCH
``write``, while the background writer writes state number KILL_BATCH. Not a test module (pytest
collects ``test_*.py`` only).
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: A run in which val_loss never "improves" after the first epoch (min_delta is
#: huge), so EarlyStopping (patience 5) stops after epoch 6 and
#: ReduceLROnPlateau (patience 2) cuts the learning rate after epochs 3 and 5:
#: both depend only on their counters, which a resume must carry over. The
#: learning rate also decays (``decay``) with the optimizer's iterations.
PLATEAU = {
    "hyperparams": {"learning_rate": 1e-3, "dropout": 0.2, "decay": 0.01},
    "epochs": 10,
    "accum_steps": 1,
    "callbacks_config": {"early_stopping": {"min_delta": 10.0}, "reduce_lr": {"min_delta": 10.0}},
    "batch_size": 32,
    "seed": 0,
}
EXPECTED_EPOCHS = 6
EXPECTED_LR_FACTORS = [1, 1, 1, 0.2, 0.2, 0.04]


def generators(decoded):
    from carclf.generators import ImageBatches

    train = ImageBatches(decoded["train"], PLATEAU["batch_size"], shuffle=True, seed=PLATEAU["seed"])
    test = ImageBatches(decoded["test"], 64, shuffle=False)
    return train, test


def plateau_run(decoded, home, extra_callbacks=()):
    """Train model1 on the 32x32 synthetic set under ``home`` (a carclf Paths root)."""
    from _helpers import model1_run

    train, test = generators(decoded)
    return model1_run(
        train,
        test,
        home,
        PLATEAU["hyperparams"],
        PLATEAU["epochs"],
        PLATEAU["accum_steps"],
        seed=PLATEAU["seed"],
        callbacks=PLATEAU["callbacks_config"],
        plot=False,
        state_interval=0,  # a state after every epoch: the kill tests resume from the one before the kill
        extra_callbacks=extra_callbacks,
    )


#: The modern recipe's parts on model1: two phases, AdamW, warmup + cosine, label smoothing, EMA, online
#: random-resized crops made by two worker threads. Every one of them carries state a resume must restore.
MODERN_EPOCHS = 4


def modern_run(decoded, home, extra_callbacks=()):
    from _helpers import model1_run

    from carclf.generators import make_generators
    from carclf.settings import AugmentSettings, CallbackSettings

    augment = AugmentSettings(augmentation="online", pipeline="modern", workers=2)
    gens = make_generators(decoded, augment, batch_size=32, seed=0, progress=False)
    return model1_run(
        gens.train,
        gens.test,
        home,
        {"learning_rate": 3e-3, "optimizer_type": "AdamW", "weight_decay": 0.05},
        MODERN_EPOCHS,
        seed=0,
        two_phase=True,
        head_epochs=1,
        schedule="warmup_cosine",
        label_smoothing=0.1,
        ema=True,
        ema_momentum=0.9,
        callbacks=CallbackSettings(early_stopping=None, reduce_lr=None),
        plot=False,
        state_interval=0,
        extra_callbacks=extra_callbacks,
    )


def saved_epoch(home):
    """The epoch of the resume state under ``home`` (None while there is none)."""
    from pathlib import Path

    from carclf.cache import load_pickle

    paths = list(Path(home).glob("models/*/*/resume/state.pkl"))
    return load_pickle(paths[0])["epoch"] if paths else None


def kill_at(epoch, batch, home):
    """SIGKILL at ``batch`` of ``epoch``, once the background writer has put the previous epoch's state on
    disk (it writes while the next epoch trains)."""
    import time

    import keras

    class KillMidEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            self.epoch = e

        def on_train_batch_end(self, b, logs=None):
            if self.epoch == epoch and b == batch:
                deadline = time.monotonic() + 60
                while saved_epoch(home) != epoch - 1 and time.monotonic() < deadline:
                    time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGKILL)

    return KillMidEpoch()


def kill_in_write(n):
    """SIGKILL the process in the middle of writing the ``n``-th resume state (1-based): the arrays are
    already in the temporary file, its end is not."""
    import carclf.train.resume as resume

    real, calls = resume.atomic_pickle, []

    class KillWhenPickled:
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGKILL)

    def killing(path, state):
        calls.append(path)
        if len(calls) == n:
            state = {**state, "zz_kill": KillWhenPickled()}  # pickled last, after the variables
        return real(path, state)

    resume.atomic_pickle = killing


def main(pickles, decoded_key, home, kill_epoch, kill_batch, run="plateau"):
    """``kill_epoch`` ``write``: killed while writing state number ``kill_batch`` instead."""
    from carclf.cache import StageCache
    from carclf.decoded import open_decoded

    decoded = open_decoded(StageCache(pickles), decoded_key)
    train = {"plateau": plateau_run, "modern": modern_run}[run]
    if kill_epoch == "write":
        kill_in_write(int(kill_batch))
        train(decoded, home)
    else:
        train(decoded, home, extra_callbacks=[kill_at(int(kill_epoch), int(kill_batch), home)])
    raise SystemExit("the run finished without being killed")


if __name__ == "__main__":
    main(*sys.argv[1:7])
