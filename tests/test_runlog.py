import logging
import time

import pytest

from carclf.runlog import StageTimer, setup_logging


def test_setup_logging_writes_file_once_per_message(tmp_path):
    setup_logging(tmp_path)
    setup_logging(tmp_path)  # a re-run notebook cell must not duplicate handlers
    logging.getLogger("carclf.test").info("hello %s", "there")
    for handler in logging.getLogger("carclf").handlers:
        handler.flush()
    text = (tmp_path / "carclf.log").read_text()
    assert text.count("hello there") == 1


def _busy(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_stage_timer_records_wall_and_cpu(tmp_path):
    timer = StageTimer(tmp_path / "timings.csv")
    with timer.stage("augmentation"):
        _busy(0.3)
    with timer.stage("model1", group="default"):
        time.sleep(0.2)
    with timer.stage("model1", group="optimal"):
        _busy(0.1)
    records = timer.records()
    assert list(records["stage"]) == ["augmentation", "model1", "model1"]
    aug = records.iloc[0]
    assert aug["cpu_min"] * 60 == pytest.approx(0.3, abs=0.1)
    assert aug["wall_min"] * 60 >= 0.29
    slept = records.iloc[1]
    assert slept["wall_min"] * 60 >= 0.19
    assert slept["cpu_min"] * 60 < 0.1  # sleeping costs no CPU

    table = timer.table()
    assert list(table.index) == ["augmentation", "model1", "Total (hours)"]
    assert list(table.columns) == [
        ("default", "wall_min"),
        ("default", "cpu_min"),
        ("optimal", "wall_min"),
        ("optimal", "cpu_min"),
    ]
    assert table.loc["Total (hours)", ("default", "wall_min")] == pytest.approx(
        (records.iloc[0]["wall_min"] + records.iloc[1]["wall_min"]) / 60
    )


def test_failed_stage_is_recorded_and_left_out_of_table(tmp_path):
    timer = StageTimer(tmp_path / "timings.csv")
    with pytest.raises(RuntimeError), timer.stage("search"):
        raise RuntimeError("boom")
    assert list(timer.records()["status"]) == ["failed"]
    assert timer.table().empty
    # A new timer on the same file (a kernel restart) sees the earlier rows.
    with StageTimer(tmp_path / "timings.csv").stage("search"):
        pass
    assert list(timer.records()["status"]) == ["failed", "ok"]


def test_a_stage_that_only_loaded_keeps_the_minutes_of_the_run_that_computed_it(tmp_path):
    timer = StageTimer(tmp_path / "timings.csv")
    with timer.stage("decode images"):
        time.sleep(0.3)
    with timer.stage("decode images") as run:
        run.status = "cached"
    with pytest.raises(LookupError), timer.stage("decode images") as run:
        run.status = "missing"
        raise LookupError("not stored")
    assert list(timer.records()["status"]) == ["ok", "cached", "missing"]
    assert timer.table().loc["decode images", ("default", "wall_min")] >= 0.3 / 60


def test_a_torn_last_line_is_left_out_and_the_next_row_starts_a_line(tmp_path, caplog):
    timer = StageTimer(tmp_path / "timings.csv")
    with timer.stage("load dataset"):
        pass
    with open(timer.path, "a") as fh:
        fh.write("decode images,default,0.0")  # a kill in the middle of a write
    with caplog.at_level("WARNING", logger="carclf.timer"):
        assert list(timer.records()["stage"]) == ["load dataset"]
    assert "1 damaged line(s) left out" in caplog.text and str(timer.path) in caplog.text
    with timer.stage("decode images"):
        pass
    assert list(timer.records()["stage"]) == ["load dataset", "decode images"]
    assert list(timer.table().index) == ["load dataset", "decode images", "Total (hours)"]
