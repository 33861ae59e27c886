"""``python -m carclf`` as a user runs it: the stages, the notebook end to end, the errors."""

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from carclf.models import NAMES


def _run(tmp_path, *args, timeout=300):
    env = {**os.environ, "CARCLF_HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "carclf", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_prepare_runs_then_loads_from_the_cache(tmp_path):
    first = _run(tmp_path, "prepare")
    assert first.returncode == 0, first.stderr
    assert "dataset: 10 classes, 160 train and 80 test images" in first.stdout
    assert "decoded train: (160, 80, 80, 3) uint8" in first.stdout
    assert "stage cache: 0 of 2 stages served" in first.stdout
    assert (tmp_path / "logs" / "carclf.log").read_text().count("computing stage decoded") == 1

    second = _run(tmp_path, "prepare")
    assert second.returncode == 0, second.stderr
    assert "stage cache: 2 of 2 stages served" in second.stdout


def test_a_missing_dataset_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-folder"
    for command in (["prepare", "--profile", "full", "--dataset", str(missing)],
                    ["run", "--profile", "full", "--dataset", str(missing)]):
        result = _run(tmp_path, *command)
        assert result.returncode == 2
        assert str(missing) in result.stderr
        assert "names.csv" in result.stderr  # says what the folder should hold


def _outputs(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    text = []
    for cell in cells:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", out
            text.append(out.get("text", "") if isinstance(out.get("text"), str) else "".join(out.get("text", [])))
            text.append("".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


@pytest.mark.slow
def test_the_demo_notebook_runs_end_to_end_then_from_the_cache(tmp_path):
    start = time.perf_counter()
    first = _run(tmp_path, "demo", timeout=1500)
    first_s = time.perf_counter() - start
    assert first.returncode == 0, first.stderr[-3000:]
    executed = tmp_path / "reports" / "stanford_cars_demo.ipynb"
    assert executed.is_file() and executed.with_suffix(".html").is_file()
    text = _outputs(executed)
    for name in NAMES:
        for label in ("default", "optimal"):
            assert (tmp_path / "reports" / f"history_{name}_{label}.png").is_file()
    for plot in ("comparison.png", "timings.png", "confusion_best.png", "search_convergence.png",
                 "augment_grid.png"):
        assert (tmp_path / "reports" / plot).is_file(), plot
    assert "stage cache: 0 of" in text  # the first run computed everything
    table = pd.read_csv(tmp_path / "reports" / "comparison.csv")
    assert sorted(table["model"].unique()) == sorted(NAMES)
    assert len(table) == 2 * len(NAMES) and set(table["hyperparams"]) == {"default", "optimal"}
    assert table["accuracy"].between(0, 1).all()

    start = time.perf_counter()
    second = _run(tmp_path, "demo", timeout=1500)
    second_s = time.perf_counter() - start
    assert second.returncode == 0, second.stderr[-3000:]
    text = _outputs(executed)
    served = [line for line in text.splitlines() if line.startswith("stage cache:")]
    assert served, text[-2000:]
    done, total = (int(v) for v in served[-1].split()[2:5:2])
    assert done == total > 0, served  # every stage loaded, none recomputed
    assert second_s < first_s / 2, (first_s, second_s)
