"""``python -m carclf`` as a user runs it: the demo end to end, served from the cache the second time."""

import os
import subprocess
import sys


def _run(tmp_path, *args):
    env = {**os.environ, "CARCLF_HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "carclf", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_demo_runs_end_to_end_then_from_the_cache(tmp_path):
    first = _run(tmp_path, "demo")
    assert first.returncode == 0, first.stderr
    assert "dataset: 10 classes, 240 train and 120 test images" in first.stdout
    assert "decoded train: (240, 80, 80, 3) uint8" in first.stdout
    assert "stage cache: 0 of 2 stages served" in first.stdout
    assert (tmp_path / "logs" / "carclf.log").read_text().count("computing stage decoded") == 1

    second = _run(tmp_path, "demo")
    assert second.returncode == 0, second.stderr
    assert "stage cache: 2 of 2 stages served" in second.stdout


def test_a_missing_dataset_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-folder"
    result = _run(tmp_path, "prepare", "--profile", "full", "--dataset", str(missing))
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "names.csv" in result.stderr  # says what the folder should hold
