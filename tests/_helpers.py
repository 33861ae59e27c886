"""What several test modules share: killing a subprocess part-way, and a model1 training run.

Not a test module (pytest collects ``test_*.py`` only); tests/ is on ``sys.path`` under pytest and for the
helper scripts run as subprocesses.
"""

import os
import signal
import time


def wait_for(condition, proc, timeout=60.0, what="condition"):
    """Poll ``condition()`` until it holds; fail if the subprocess ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"subprocess ended (rc {proc.returncode}) before {what}: {proc.stderr.read()!r}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def kill(proc):
    """SIGKILL ``proc`` and wait for it; it must die of the signal, not finish on its own."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def model1_run(train, test, home, hyperparams, epochs, accum_steps=None, *, seed=0, timer=False, **settings):
    """``run_model_pipeline`` for model1 on 32x32 images under the carclf root ``home``.

    ``settings`` are ``TrainSettings`` fields (verbose off unless given); ``extra_callbacks`` and
    ``validation_generator`` go to the pipeline.
    """
    from carclf.models import create_model1_model
    from carclf.paths import Store
    from carclf.settings import TrainSettings
    from carclf.train import run_model_pipeline

    extra = settings.pop("extra_callbacks", ())
    validation = settings.pop("validation_generator", None)
    return run_model_pipeline(
        create_model1_model,
        "model1",
        hyperparams,
        (32, 32, 3),
        train.split.num_classes,
        train,
        test,
        epochs,
        accum_steps,
        validation_generator=validation,
        settings=TrainSettings(**{"verbose": 0, **settings}),
        store=Store.at(home, timer=timer),
        seed=seed,
        extra_callbacks=extra,
    )
