"""bench/train_speed.py, bench/epoch_overhead.py and bench/search_time.py at a tiny scale on the CPU: they run,
print their tables, and (the first two) need no TensorFlow on JAX (the GPU machine has none)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "train_speed.py"
EPOCH_OVERHEAD = SCRIPT.with_name("epoch_overhead.py")

#: Run a script with TensorFlow (and TensorBoard) impossible to import, as on the JAX-only GPU machine:
#: the path finder no longer sees them, so ``import tensorflow`` fails and ``find_spec`` returns None.
WITHOUT_TENSORFLOW = r"""
import runpy, sys
from importlib.machinery import PathFinder

HIDDEN = {"tensorflow", "tensorboard", "tf_keras"}

class NoTensorFlow:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return PathFinder.find_spec(name, path, target)

    @classmethod
    def invalidate_caches(cls):
        PathFinder.invalidate_caches()

sys.meta_path[:] = [NoTensorFlow if finder is PathFinder else finder for finder in sys.meta_path]
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
loaded = sorted(name for name in sys.modules if name.partition(".")[0] in HIDDEN)
assert not loaded, f"imported without TensorFlow installed: {loaded}"
"""


def _run(args, tmp_path, backend=None, prefix=(), script=SCRIPT):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend:
        env["KERAS_BACKEND"] = backend
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, *prefix, str(script), "--tiny", "--root", str(tmp_path / "data"), "--json", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc.stdout, json.loads(out.read_text())


def _check_table(stdout, results, names, backend):
    assert "| model | backend | device | batch | train images/s | step ms | eval images/s |" in stdout
    for name in names:
        row = next(line for line in stdout.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {backend} | CPU, " in row
    assert "projected full run" in stdout and "the report, same models:" in stdout
    assert "input pipeline: ImageBatches delivers" in stdout
    assert results["backend"] == backend and results["policy"] == "float32"
    assert [row["model"] for row in results["rows"]] == names
    for row in results["rows"]:
        assert row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0 and row["projected_min"] > 0
        assert row["batch"] == 8 and row["timed_steps"] >= 1
    assert all(gen["images_per_s"] > 0 and gen["online_images_per_s"] > 0 for gen in results["generator"].values())
    assert "with the modern recipe's online augmentation" in stdout


@pytest.mark.slow
def test_train_speed_tiny_prints_its_table(tmp_path):
    names = ["model1", "vgg16"]
    stdout, results = _run(["--models", ",".join(names)], tmp_path)
    _check_table(stdout, results, names, keras.backend.backend())
    assert results["images"] == 64 and results["size"] == 32  # the smallest size both accept


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed (requirements-dev.txt)")
def test_train_speed_runs_on_jax_without_tensorflow(tmp_path):
    """The GPU machine has JAX and no TensorFlow: nothing on the benchmark's path may need it."""
    stdout, results = _run(["--models", "model1"], tmp_path, backend="jax", prefix=("-c", WITHOUT_TENSORFLOW))
    _check_table(stdout, results, ["model1"], "jax")
    assert results["jit_compile"] is True


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed (requirements-dev.txt)")
def test_epoch_overhead_tiny_runs_on_jax_without_tensorflow_and_shows_less_blocking(tmp_path):
    stdout, results = _run(
        ["--models", "model1,vgg16"],
        tmp_path,
        backend="jax",
        prefix=("-c", WITHOUT_TENSORFLOW),
        script=EPOCH_OVERHEAD,
    )
    assert "| model | params | GPU epoch s | before: blocked s |" in stdout and "largest blocking share after" in stdout
    assert [row["model"] for row in results["models"]] == ["model1", "vgg16"]
    for row in results["models"]:
        before, after = row["before"], row["after"]
        assert after["blocked_s"] + after["copy_s"] < before["blocked_s"], row["model"]
        assert 0 < after["run_bytes"] < before["run_bytes"]  # one model file and a weights-only checkpoint
        assert after["state_bytes"] > 0 and row["share_after"] < row["share_before"]
        projected = row["projected"]  # the same path on an H100: fixed costs measured here, bytes at its rates
        assert projected["fixed"]["device"] > 0 and projected["fixed"]["host"] > 0
        assert projected["blocked_s"] > 0 and projected["copy_s"] > 0 and 0 < projected["share"] < row["share_before"]
        tensors, sizes = projected["tensors"], projected["bytes"]  # the state: the weights and the optimizer's
        assert tensors["state"] > tensors["weights"] > 0 and sizes["state"] > sizes["weights"] > 0
    assert len(results["steps"]) == 3 and all(ms > 0 for _, ms in results["steps"])


SEARCH_TIME = SCRIPT.with_name("search_time.py")


@pytest.mark.slow
def test_search_time_tiny_times_one_trial_and_projects_the_search(tmp_path):
    """One model1 trial through run_search on 12 images of 4 classes at 32 px: the table, the two headline
    lines, and positive figures in the JSON."""
    out = tmp_path / "search_time.json"
    args = ["--models", "model1", "--classes", "4", "--per-class", "6", "--subsample", "12"]
    args += ["--image-size", "32", "--input-size", "32", "--hyperband-studies", "3"]
    proc = subprocess.run(
        [sys.executable, str(SEARCH_TIME), *args, "--root", str(tmp_path / "data"), "--json", str(out)],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    assert "| model | CPU train images/s | CPU eval images/s | measured trial wall s (12 images, 2 epochs) |" in (
        proc.stdout
    )
    assert any(line.startswith("| model1 | ") for line in proc.stdout.splitlines())
    assert "trial wall on this CPU" in proc.stdout and "on one H100 (a projection" in proc.stdout
    results = json.loads(out.read_text())
    assert results["subsample_rows"] == 12 and results["input_size"] == 32 and results["epochs"] == 2
    assert (results["full_train"], results["full_val"]) == (3258, 814)  # 0.5 of 8,144, a fifth held out
    assert 1 < results["hyperband"]["epochs_per_trial"] <= 5 and results["hyperband_asymptotic"] == pytest.approx(2.6)
    (row,) = results["rows"]
    assert row["model"] == "model1" and row["trial_state"] == "complete" and row["epochs"] == 2
    assert (row["train_images"], row["val_images"]) == (8, 4)
    for key in ("trial_wall_s", "fixed_s", "train_images_per_s", "eval_images_per_s", "steady_epoch_s"):
        assert row[key] > 0, key
    for key in ("full_trial_1_epoch_min", "full_trial_min", "search_hyperband_min", "search_no_pruning_min"):
        assert row[key] > 0, key
    assert row["search_hyperband_min"] < row["search_no_pruning_min"]
    assert 0 < row["h100_search_hyperband_min"] < row["h100_search_no_pruning_min"] < row["search_no_pruning_min"]
    assert results["speedup"] > 1 and results["totals"]["h100_search_hyperband_min"] > 0
