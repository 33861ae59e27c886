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


# --------------------------------------------------------------------------- bad input (issue 17)

#: The tiny dataset the bad-input tests damage: 3 classes, 4 training and 2 test images each.
TINY = dict(n_classes=3, per_class_train=4, per_class_test=2, size_range=(64, 96), progress=False, workers=1)


#: The command-line flags that point the demo profile at such a dataset, at model1's smallest useful size.
def tiny_flags(dataset):
    # Two to four training images a class: the default 10% (and the search's 20%) validation split would leave
    # classes without one.
    halves = ["--set", "evaluation.validation_fraction=0.5", "--set", "search.validation_fraction=0.5"]
    return ["--dataset", str(dataset), "--image-size", "32", *halves]


class Ran:
    """What one command returned and printed."""

    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err

    def error_line(self):
        """The one ``carclf:`` line a failed command printed (asserting it is the only one)."""
        lines = [line for line in self.stderr.splitlines() if line.startswith("carclf:")]
        assert len(lines) == 1 and "Traceback" not in self.stderr, self.stderr[-3000:]
        return lines[0]


def run_cli(home, *args):
    """One ``python -m carclf`` command in this process (saves importing TensorFlow again)."""
    import contextlib
    import io

    from carclf import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--root", str(home), *map(str, args)])
    return Ran(code, out.getvalue(), err.getvalue())


def truncate(path, keep=0.5):
    """Cut a file to ``keep`` of its bytes (a copy interrupted halfway)."""
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: int(len(data) * keep)])


def flip_bytes(path, offset, count=16):
    """Damage a file in place, its size unchanged."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        data = handle.read(count)
        handle.seek(offset)
        handle.write(bytes(255 - b for b in data))


def bad_input_corpus(root):
    """A tiny class-folder dataset with one of each kind of bad input; returns ``(root, expected)``,
    ``expected`` being the ``{(kind, file)}`` its validation report must list."""
    import shutil

    from carclf.synthetic import make_synthetic

    root = make_synthetic(root, **TINY)
    train = sorted((root / "car_data" / "car_data" / "train").iterdir())
    files = [sorted(folder.glob("*.jpg")) for folder in train]
    truncate(files[0][0])  # cut off halfway: libjpeg would decode the rest as gray
    data = bytearray(files[0][1].read_bytes())  # markers written into its entropy-coded data, the size unchanged
    data[len(data) // 2 : len(data) // 2 + 40] = b"\xff\xd3" * 20
    files[0][1].write_bytes(bytes(data))
    files[1][0].write_bytes(b"")  # zero bytes
    files[1][1].write_text("not a JPEG at all")
    moved = files[2][0]
    files[2][1].unlink()  # annotated, not on disk
    shutil.copy(moved, train[0] / "99999.jpg")  # on disk, not annotated
    shutil.move(moved, train[1] / moved.name)  # in another class's folder
    lines = (root / "anno_train.csv").read_text().splitlines()
    fields = lines[-1].split(",")
    fields[3] = fields[1]  # x2 = x1: no area
    lines[-1] = ",".join(fields)
    repeated = next(line for line in lines if line.startswith(files[0][2].name + ","))
    lines.append(repeated)  # a repeated row
    (root / "anno_train.csv").write_text("\n".join(lines) + "\n")
    expected = {
        ("unreadable_images", files[0][0].name),
        ("unreadable_images", files[0][1].name),
        ("unreadable_images", files[1][0].name),
        ("unreadable_images", files[1][1].name),
        ("missing_files", files[2][1].name),
        ("unannotated_images", f"{train[0].name}/99999.jpg"),
        ("folder_mismatches", moved.name),
        ("degenerate_boxes", fields[0]),
        ("duplicate_annotations", files[0][2].name),
    }
    return root, expected
