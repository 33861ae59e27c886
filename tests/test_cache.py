"""The stage cache: atomic writes, keys, loading, dependants, resumable units."""

import importlib.util
import json
import logging
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _helpers import flip_bytes, kill, wait_for  # noqa: E402

from carclf.cache import (
    DamagedFileError,
    NotComputedError,
    StageCache,
    StageResult,
    atomic_open,
    atomic_pickle,
    atomic_write,
    config_hash,
    load_pickle,
)

HELPER = Path(__file__).with_name("_kill_helpers.py")
_spec = importlib.util.spec_from_file_location("_kill_helpers", HELPER)
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


def temp_files(folder):
    return sorted(p for p in Path(folder).rglob("*") if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- #
# atomic writes
# --------------------------------------------------------------------------- #


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "new" / "folder" / "a.bin"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    atomic_pickle(tmp_path / "b.pkl", {"x": (1, 2)})
    assert target.read_bytes() == b"two"
    assert load_pickle(tmp_path / "b.pkl") == {"x": (1, 2)}
    assert temp_files(tmp_path) == []


class _Bomb:
    def __reduce__(self):
        raise RuntimeError("disk on fire")


def test_writer_raising_after_partial_write_keeps_old_file(tmp_path):
    target = tmp_path / "result.pkl"
    atomic_pickle(target, {"version": 1})
    before = target.read_bytes()

    with pytest.raises(RuntimeError, match="half"), atomic_open(target) as handle:
        handle.write(b"\x80half a pickle")
        raise RuntimeError("crashed after half")
    # a pickle that fails after streaming megabytes into the temp file
    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_pickle(target, [b"x" * 3_000_000, _Bomb()])

    assert target.read_bytes() == before
    assert temp_files(tmp_path) == []


def test_killed_during_large_writes_leaves_a_whole_file(tmp_path):
    target = tmp_path / "big.bin"
    size = 4 * 1024 * 1024
    proc = subprocess.Popen([sys.executable, str(HELPER), "atomic", str(target), str(size)], stderr=subprocess.PIPE)
    try:
        wait_for(target.exists, proc, what="the first write")
        time.sleep(0.3)  # several rewrites in flight
    finally:
        kill(proc)
    data = target.read_bytes()
    assert len(data) == size
    assert data == data[:1] * size  # one write's bytes, never a mix


# --------------------------------------------------------------------------- #
# config_hash
# --------------------------------------------------------------------------- #


def test_config_hash_is_stable_and_canonical():
    a = {"image_size": (224, 224), "model": {"name": "vgg16", "lr": 1e-3}, "root": Path("/data/cars")}
    b = {"root": "/data/cars", "model": {"lr": 0.001, "name": "vgg16"}, "image_size": [224, 224]}
    c = {
        "root": Path("/data/cars"),
        "model": {"lr": np.float64(1e-3), "name": "vgg16"},
        "image_size": np.array([224, 224]),
    }
    assert config_hash(a) == config_hash(b) == config_hash(c)
    assert len(config_hash(a)) == 16 and int(config_hash(a), 16) >= 0
    assert config_hash({"n": np.int64(3)}) == config_hash({"n": 3})
    # a hard-coded digest: the hash must not change between runs or machines
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": (1, 2), "a": 1}) == "8baa73198470c7bb"
    # different values, or int vs float vs bool, are different configs
    assert len({config_hash(v) for v in ({"n": 1}, {"n": 1.0}, {"n": True}, {"n": "1"}, {"n": 2})}) == 5


def test_config_hash_rejects_unhashable_values_naming_the_key():
    with pytest.raises(TypeError, match="optimizer"):
        config_hash({"model": {"optimizer": object()}})
    with pytest.raises(TypeError, match="callback"):
        config_hash({"callback": lambda: None})


# --------------------------------------------------------------------------- #
# run
# --------------------------------------------------------------------------- #


def test_run_computes_once_then_loads(tmp_path):
    cache = StageCache(tmp_path / "pickles")
    calls = []

    def compute():
        calls.append(1)
        return {"table": np.arange(5)}

    first = cache.run("split", {"seed": 0}, compute)
    second = cache.run("split", {"seed": 0}, compute)

    assert len(calls) == 1
    assert isinstance(first, StageResult)
    assert (first.loaded, second.loaded) == (False, True)
    assert first.key == second.key
    assert first.path == second.path == tmp_path / "pickles" / "split" / f"{first.key}.pkl"
    np.testing.assert_array_equal(second.value["table"], np.arange(5))
    assert cache.events == [("split", first.key, "computed"), ("split", first.key, "loaded")]

    meta = json.loads((tmp_path / "pickles" / "split" / f"{first.key}.json").read_text())
    assert meta["stage"] == "split" and meta["config"] == {"seed": 0} and meta["deps"] == []
    assert meta["written"]

    # a new StageCache over the same folder (a restarted kernel) loads too
    again = StageCache(tmp_path / "pickles").run("split", {"seed": 0}, compute)
    assert again.loaded and len(calls) == 1


def test_only_cached_loads_but_refuses_to_compute_the_named_stages(tmp_path):
    cache = StageCache(tmp_path / "pickles")
    trained = cache.run("train-vgg16", {"epochs": 1}, lambda: "weights")
    with cache.only_cached("search", "train-"):
        assert cache.run("train-vgg16", {"epochs": 1}, lambda: "again").value == "weights"
        with pytest.raises(NotComputedError, match="stage train-resnet50 has no stored result") as missing:
            cache.run("train-resnet50", {"epochs": 1}, lambda: pytest.fail("computed"))
        assert missing.value.path == cache.path("train-resnet50", missing.value.key)
        with pytest.raises(NotComputedError):
            cache.run_units("search", {"n": 2}, [0, 1], lambda unit: pytest.fail("computed"))
        assert cache.run("search-skopt", {"n": 2}, lambda: "other stages compute").loaded is False
    assert cache.run("train-resnet50", {"epochs": 1}, lambda: "trained").value == "trained"  # allowed again
    assert not cache.parts_dir("search", cache.key("search", {"n": 2})).exists()
    assert trained.key != missing.value.key


def _chain(cache, cfg_a, cfg_b, cfg_c, calls):
    def compute(name, value):
        def run():
            calls.append(name)
            return value

        return run

    a = cache.run("A", cfg_a, compute("A", cfg_a["n"]))
    b = cache.run("B", cfg_b, compute("B", a.value * cfg_b["k"]), deps=[a])
    c = cache.run("C", cfg_c, compute("C", cfg_c["m"]))
    return a, b, c


def test_config_change_recomputes_the_stage_and_its_dependants_only(tmp_path):
    cache = StageCache(tmp_path)
    calls = []

    a, b, c = _chain(cache, {"n": 2}, {"k": 10}, {"m": 7}, calls)
    assert calls == ["A", "B", "C"] and b.value == 20

    calls.clear()
    _chain(cache, {"n": 2}, {"k": 10}, {"m": 7}, calls)
    assert calls == []

    calls.clear()  # upstream A changed: A and B recompute, C does not
    a2, b2, c2 = _chain(cache, {"n": 3}, {"k": 10}, {"m": 7}, calls)
    assert calls == ["A", "B"] and b2.value == 30
    assert b2.key != b.key and c2.key == c.key and c2.loaded

    calls.clear()  # downstream B changed: only B recomputes
    _, b3, _ = _chain(cache, {"n": 3}, {"k": 5}, {"m": 7}, calls)
    assert calls == ["B"] and b3.value == 15

    calls.clear()  # the old results are still there
    _chain(cache, {"n": 2}, {"k": 10}, {"m": 7}, calls)
    assert calls == []
    assert [e[2] for e in cache.events[-3:]] == ["loaded"] * 3


def test_truncated_pickle_is_recomputed_with_a_warning(tmp_path, caplog):
    cache = StageCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return list(range(1000))

    path = cache.run("features", {"v": 1}, compute).path
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a disk-full truncation

    with caplog.at_level(logging.WARNING, logger="carclf.cache"):
        result = cache.run("features", {"v": 1}, compute)
    assert not result.loaded and result.value == list(range(1000)) and len(calls) == 2
    assert any(str(path) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert cache.run("features", {"v": 1}, compute).loaded and len(calls) == 2


def test_stage_names_are_checked(tmp_path):
    cache = StageCache(tmp_path)
    for bad in ("../up", "a/b", "", ".hidden"):
        with pytest.raises(ValueError):
            cache.key(bad, {})


def test_status_and_invalidate(tmp_path):
    cache = StageCache(tmp_path)
    a = cache.run("A", {"n": 1}, lambda: 1)
    cache.run("A", {"n": 2}, lambda: 2)
    b = cache.run("B", {}, lambda: "b", deps=[a])
    (cache.artifact_dir("B", b.key) / "big.npy").write_bytes(b"\0" * 1000)

    status = cache.status()
    assert sorted(status["stage"]) == ["A", "A", "B"]
    assert list(status.columns[:4]) == ["stage", "key", "size", "written"]
    assert status.loc[status["stage"] == "B", "size"].item() > 1000
    assert status["complete"].all()

    assert cache.invalidate("A") == 2
    assert sorted(cache.status()["stage"]) == ["B"]
    assert not cache.run("A", {"n": 1}, lambda: 1).loaded
    cache.invalidate()
    assert cache.status().empty and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- #
# run_units
# --------------------------------------------------------------------------- #


def test_run_units_resumes_after_an_exception(tmp_path):
    cache = StageCache(tmp_path)
    units = ["trial/0", "trial/1", "../trial 2", 3]  # unsafe ids are sanitised
    calls, failing = [], ["../trial 2"]

    def compute(unit):
        calls.append(unit)
        if unit in failing:
            failing.remove(unit)
            raise RuntimeError("out of memory")
        return str(unit).upper()

    with pytest.raises(RuntimeError):
        cache.run_units("search", {"n": 4}, units, compute, progress=False)
    parts = cache.parts_dir("search", cache.key("search", {"n": 4}))
    assert len(list(parts.glob("*.pkl"))) == 2 and all(p.parent == parts for p in parts.rglob("*"))

    calls.clear()
    result = cache.run_units("search", {"n": 4}, units, compute, combine=lambda d: list(d.values()), progress=False)
    assert calls == ["../trial 2", 3]
    assert result.value == ["TRIAL/0", "TRIAL/1", "../TRIAL 2", "3"]
    assert not parts.exists()
    assert cache.run_units("search", {"n": 4}, units, compute, progress=False).loaded
    assert [e[2] for e in cache.events] == ["computed", "loaded"]


def test_run_units_resumes_after_sigkill(tmp_path):
    n = 12
    root = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(HELPER), "units", str(root), str(n), "0.1"], stderr=subprocess.PIPE)
    cache = StageCache(root)
    parts = cache.parts_dir("squares", cache.key("squares", dict(helpers.UNITS_CONFIG, n=n)))
    try:
        wait_for(lambda: len(list(parts.glob("*.pkl"))) >= 3, proc, what="3 units")
    finally:
        kill(proc)
    done = {int(p.stem) for p in parts.glob("*.pkl")}
    assert 3 <= len(done) < n, "the subprocess finished before it was killed"
    assert not list(root.glob("squares/*.pkl"))

    calls = []

    def compute(unit):
        calls.append(unit)
        return helpers.square(unit)

    resumed = helpers.units_stage(cache, n, compute)
    assert calls == [u for u in range(n) if u not in done]
    assert not resumed.loaded and not parts.exists()
    assert cache.events == [("squares", resumed.key, "computed")]

    fresh = helpers.units_stage(StageCache(tmp_path / "fresh"), n, helpers.square)
    assert resumed.value == fresh.value
    assert list(resumed.value) == list(range(n))
    assert resumed.key == fresh.key


def test_a_pickle_damaged_in_place_is_recomputed_naming_it(tmp_path, caplog):
    cache = StageCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"weights": list(range(1000))}

    path = cache.run("features", {"v": 1}, compute).path
    size = path.stat().st_size
    flip_bytes(path, size // 2)  # same size: unpickling alone might not notice
    with caplog.at_level(logging.WARNING, logger="carclf.cache"):
        result = cache.run("features", {"v": 1}, compute)
    assert not result.loaded and len(calls) == 2 and path.stat().st_size == size
    assert any(str(path) in r.getMessage() and "does not match the checksum" in r.getMessage() for r in caplog.records)
    with pytest.raises(DamagedFileError, match="no checksum"):
        path.write_bytes(pickle.dumps({"a plain": "pickle"}))
        load_pickle(path)


def test_a_damaged_unit_is_the_only_one_recomputed(tmp_path):
    cache = StageCache(tmp_path)
    done = []

    def unit(u):
        done.append(u)
        if u == 3 and len(done) == 4:
            raise RuntimeError("stop after three units")
        return u * u

    with pytest.raises(RuntimeError):
        cache.run_units("squares", {"n": 5}, range(5), unit)
    parts = sorted(cache.parts_dir("squares", cache.key("squares", {"n": 5})).glob("*.pkl"))
    flip_bytes(parts[1], parts[1].stat().st_size // 2, 2)
    done.clear()
    assert cache.run_units("squares", {"n": 5}, range(5), unit).value == {u: u * u for u in range(5)}
    assert done == [1, 3, 4]  # the damaged unit and the unfinished ones


LOCKED_STAGE = """
import sys, time
from carclf.cache import StageCache
from carclf.runlog import setup_logging
setup_logging(sys.argv[2])
def compute():
    open(sys.argv[3], "a").write("computed\\n")
    time.sleep(3)
    return 42
print(StageCache(sys.argv[1]).run("slow", {"v": 1}, compute).loaded)
"""


def test_a_second_process_waits_for_the_first_and_loads_its_result(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(LOCKED_STAGE)
    calls = tmp_path / "calls.txt"
    args = [sys.executable, str(script), str(tmp_path / "pickles"), str(tmp_path / "logs"), str(calls)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    while not calls.exists():
        time.sleep(0.05)
    second = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    outs = [proc.communicate(timeout=60)[0].strip() for proc in (first, second)]
    assert outs == ["False", "True"] and calls.read_text() == "computed\n"
    assert "is being computed by another process; waiting for it" in (tmp_path / "logs" / "carclf.log").read_text()
