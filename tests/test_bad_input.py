"""Bad input never trains silently and never ends in a traceback (issue 17): the command line on each case.

Each test asserts the exit status, the one ``carclf:`` line (or the listing) and that no bad image reached
the arrays a model trains on. The tests that train share one tiny run (model1, 32x32, one epoch).
"""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _helpers import TINY, bad_input_corpus, run_cli, tiny_flags, truncate

from carclf.synthetic import make_synthetic


def decoded_paths(home, dataset, split="train"):
    """The files of the decoded arrays the models of this workspace train on (or are tested on)."""
    from carclf import workflow

    ws = workflow.Workspace.open("demo", root=home, dataset=str(dataset), image_size=32)
    return {Path(p).name for p in workflow.decode_images(ws)[split].paths}


# --------------------------------------------------------------------------- the dataset


def test_a_bad_input_corpus_goes_through_prepare_in_one_go(tmp_path):
    root, expected = bad_input_corpus(tmp_path / "cars")
    home = tmp_path / "home"
    ran = run_cli(home, "prepare", *tiny_flags(root))
    assert ran.returncode == 0, ran.stderr
    listing = pd.read_csv(home / "reports" / "validation.csv")
    assert list(listing.columns) == ["kind", "split", "file", "detail"]
    assert expected <= set(zip(listing["kind"], listing["file"]))
    assert "unreadable images: 4" in ran.stdout and "missing files: 1" in ran.stdout
    assert f"listed file by file in {home / 'reports' / 'validation.csv'}" in ran.stdout
    unreadable = {file for kind, file in expected if kind in ("unreadable_images", "missing_files")}
    assert not unreadable & decoded_paths(home, root)  # nothing to train on from a bad file
    log = (home / "logs" / "carclf.log").read_text()
    assert all(f" {file}: " in log for _, file in expected if "/" not in file)  # each problem, file by file

    strict = run_cli(home, "prepare", "--strict", *tiny_flags(root))
    assert strict.returncode == 2
    line = strict.error_line()
    assert "--strict" in line and "4 unreadable images" in line and str(home / "reports" / "validation.csv") in line


def test_a_truncated_jpeg_is_listed_and_left_out_never_decoded_as_gray(tmp_path):
    root = make_synthetic(tmp_path / "cars", **TINY)
    victim = sorted((root / "car_data" / "car_data" / "train").glob("*/*.jpg"))[0]
    truncate(victim)
    home = tmp_path / "home"
    ran = run_cli(home, "prepare", *tiny_flags(root))
    assert ran.returncode == 0, ran.stderr
    assert "unreadable images: 1" in ran.stdout and "status: problems found" in ran.stdout
    listing = pd.read_csv(home / "reports" / "validation.csv")
    row = listing[listing["file"] == victim.name].iloc[0]
    assert row["kind"] == "unreadable_images" and "truncated" in row["detail"] and "left out" in row["detail"]
    assert victim.name not in decoded_paths(home, root)


def test_names_csv_one_line_short_stops_prepare_and_train(tmp_path):
    root = make_synthetic(tmp_path / "cars", **TINY)
    names = (root / "names.csv").read_text().splitlines()
    (root / "names.csv").write_text("\n".join(names[:1] + names[2:]) + "\n")  # line 2 lost
    home = tmp_path / "home"
    for command in (["prepare"], ["train", "--model", "model1"]):
        ran = run_cli(home, *command, *tiny_flags(root))
        assert ran.returncode == 2, (command, ran.stderr)
        line = ran.error_line()
        assert f"{root / 'names.csv'} names 2 classes but anno_" in line
        assert "line 2" in line and "restore the missing lines of names.csv" in line
    assert not list(home.glob("models/*/*"))  # nothing trained


# --------------------------------------------------------------------------- the command line's numbers


@pytest.mark.parametrize(
    "args, says",
    [
        (["prepare", "--image-size", "0"], "image_size must be an integer >= 16 (the smallest input any model of"),
        (["prepare", "--image-size", "-5"], "got -5: give --image-size 16 or more"),
        (["train", "--epochs", "0"], "argument --epochs: 0 is out of range: it must be an integer >= 1"),
        (["train", "--epochs", "-1"], "argument --epochs: -1 is out of range"),
        (["search", "--trials", "0"], "argument --trials: 0 is out of range: it must be an integer >= 1"),
        (["search", "--trials", "-2"], "argument --trials: -2 is out of range"),
        (["predict", "--top", "0", "x.jpg"], "argument --top: 0 is out of range: it must be an integer >= 1"),
        (["train", "--model", "alexnet", "--image-size", "50"], ">= 67 (the smallest input alexnet accepts), got 50"),
        (["train", "--image-size", "40"], ">= 75 (inceptionv3's minimum, the largest of model1, alexnet"),
        (["prepare", "--image-size", "8"], ">= 16 (the smallest input any model of profile 'demo' accepts)"),
    ],
)
def test_numbers_out_of_range_are_one_line_naming_the_argument(tmp_path, args, says):
    ran = run_cli(tmp_path, *args)
    assert ran.returncode == 2
    assert says in ran.error_line()
    assert not (tmp_path / "models").exists()  # refused before anything ran


@pytest.mark.parametrize(
    "args, says",
    [
        (["search", "--model", "resnet5"], "search model 'resnet5' must be one of model1, "),
        (["search", "--model", "resnet5"], "(did you mean 'resnet50'?)"),
        (["search", "--model", "vgg16"], "models ['vgg16'] are not searched in profile 'demo' (searched: model1)"),
        (["search", "--model", "vgg16"], "set search.models to search them (with search.per_model=True)"),
    ],
)
def test_a_search_of_a_model_the_profile_does_not_search_is_one_line(tmp_path, args, says):
    ran = run_cli(tmp_path, *args)
    assert ran.returncode == 2, ran.stderr
    assert says in ran.error_line()
    assert not list(tmp_path.glob("pickles/*search*")) and not list(tmp_path.glob("data/*"))  # refused first


def test_the_minimum_sizes_the_parser_knows_are_the_registry_s():
    from carclf import models
    from carclf.settings import MIN_INPUT_SIZES

    assert MIN_INPUT_SIZES == models.MIN_INPUT_SIZE


# --------------------------------------------------------------------------- a full disk


def fake_statvfs(monkeypatch, free, under):
    """``os.statvfs`` says only ``free`` bytes are left under the folder ``under`` (the real value elsewhere)."""
    real = os.statvfs

    class Full:
        def __init__(self, stat):
            self.f_frsize, self.f_bavail = 1, free
            self.f_blocks, self.f_bsize = stat.f_blocks, stat.f_bsize

    def statvfs(path):
        stat = real(path)
        return Full(stat) if str(Path(path).resolve()).startswith(str(Path(under).resolve())) else stat

    monkeypatch.setattr(os, "statvfs", statvfs)


def test_a_full_disk_before_decoding_is_a_sentence(tmp_path, monkeypatch):
    root = make_synthetic(tmp_path / "cars", **TINY)
    home = tmp_path / "home"
    (home / "pickles").mkdir(parents=True)
    fake_statvfs(monkeypatch, 1000, home / "pickles")
    ran = run_cli(home, "prepare", *tiny_flags(root))
    assert ran.returncode == 2
    line = ran.error_line()
    assert f"not enough disk space in {home / 'pickles' / 'decoded'}" in line
    assert "the decoded train images (12, 32, 32, 3) need 36.9 KB, 1.0 KB free" in line
    assert "make clean-results" in line and "superseded checkpoints" in line
    assert not list(home.glob("pickles/decoded/*/*.npy"))  # nothing half-written


def test_enospc_anywhere_is_a_sentence(tmp_path, monkeypatch):
    from carclf.cache import store

    root = make_synthetic(tmp_path / "cars", **TINY)
    home = tmp_path / "home"

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(store, "atomic_pickle", full)
    ran = run_cli(home, "prepare", *tiny_flags(root))
    assert ran.returncode == 2
    line = ran.error_line()
    assert "the disk is full while writing" in line and str(home / "pickles" / "dataset") in line
    assert "make clean-results" in line


def test_a_full_disk_before_augmenting_is_a_sentence(tmp_path, monkeypatch):
    root = make_synthetic(tmp_path / "cars", **TINY)
    home = tmp_path / "home"
    assert run_cli(home, "prepare", *tiny_flags(root)).returncode == 0
    fake_statvfs(monkeypatch, 1000, home / "data")
    ran = run_cli(home, "augment", *tiny_flags(root))
    assert ran.returncode == 2
    line = ran.error_line()
    assert "not enough disk space in" in line and str(home / "data" / "augmented") in line
    assert "12 augmented images need" in line and "make clean-results" in line
    assert not list(home.glob("data/augmented/*/*.jpg"))


def test_memory_mapped_arrays_get_their_space_before_they_are_mapped(tmp_path, monkeypatch):
    from carclf.cache import DiskFullError
    from carclf.memmaps import create_npy

    create_npy(tmp_path / "x.npy", (64, 32, 32, 3))
    st = os.stat(tmp_path / "x.npy")
    assert st.st_blocks * 512 >= 64 * 32 * 32 * 3  # allocated, not sparse: writing it cannot SIGBUS

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(DiskFullError, match="not enough disk space"):
        create_npy(tmp_path / "y.npy", (64, 32, 32, 3))
    assert not list(tmp_path.glob("*y.npy*"))


# --------------------------------------------------------------------------- what was trained


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One workspace on the tiny set with model1 trained (default hyperparameters, one epoch, 32x32)."""
    base = tmp_path_factory.mktemp("trained")
    root, _ = bad_input_corpus(base / "cars")
    home = base / "home"
    ran = run_cli(home, "train", "--model", "model1", "--hyperparams", "default", *tiny_flags(root))
    assert ran.returncode == 0, ran.stderr[-3000:]
    return home, root


def run_config(home):
    (note,) = [json.loads(p.read_text()) for p in (home / "pickles" / "train-model1").glob("*.json")]
    return note


@pytest.mark.slow
def test_nothing_is_trained_on_a_bad_image(trained):
    home, root = trained
    config = run_config(home)["config"]
    good_train = len(decoded_paths(home, root))
    held_out = config["validation"]["split"]["rows"]
    assert good_train == 12 - 4 - 1 and 0 < held_out < good_train
    # the originals that decoded less the validation images, then one augmented variant of each: the four bad
    # files are in neither, and no variant of a validation image is trained on
    assert config["train"]["split"]["rows"] == 2 * (good_train - held_out)


@pytest.mark.slow
def test_a_truncated_model_file_is_trained_again_and_never_a_traceback(trained, tmp_path):
    home, root = trained
    (model_file,) = home.glob("models/model1/*/model1.keras")
    saved = tmp_path / "model1.keras"
    shutil.copy(model_file, saved)
    try:
        truncate(model_file)
        # evaluate reads the test probabilities stored with the run; predict needs the model itself
        evaluated = run_cli(home, "evaluate", "--model", "model1", *tiny_flags(root))
        assert evaluated.returncode == 0, evaluated.stderr[-2000:]
        image = next(root.glob("car_data/car_data/test/*/*.jpg"))
        ran = run_cli(home, "predict", image, "--model", "model1", *tiny_flags(root))
        assert ran.returncode == 2, ran.stderr[-2000:]
        line = ran.error_line()
        assert str(model_file) in line and "not a whole .keras file" in line and "train the run again" in line
        again = run_cli(home, "train", "--model", "model1", "--hyperparams", "default", *tiny_flags(root))
        assert again.returncode == 0, again.stderr[-2000:]
        assert "has lost its model file" in (home / "logs" / "carclf.log").read_text()
        assert run_cli(home, "evaluate", "--model", "model1", *tiny_flags(root)).returncode == 0
    finally:
        shutil.copy(saved, model_file)


@pytest.mark.slow
def test_a_zero_byte_augmented_image_is_written_again(trained):
    home, root = trained
    (folder,) = (home / "data" / "augmented").iterdir()
    manifest = pd.read_csv(folder / "manifest.csv")
    victim = folder / manifest["file"].iloc[0]
    victim.write_bytes(b"")
    for decoded in (home / "pickles" / "decoded").glob("*.json"):  # the variants' decoded copy is gone
        if "augmented" in decoded.read_text():
            key = decoded.stem
            shutil.rmtree(home / "pickles" / "decoded" / key)
            decoded.unlink()
            (home / "pickles" / "decoded" / f"{key}.pkl").unlink()
    ran = run_cli(home, "augment", *tiny_flags(root))
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert victim.stat().st_size > 0
    from carclf.cache import file_sha256

    assert file_sha256(victim) == manifest["sha256"].iloc[0]  # the same pixels as before
    assert f"augmented image {victim} is missing or damaged" in (home / "logs" / "carclf.log").read_text()


@pytest.mark.slow
def test_a_torn_last_line_of_the_timings_does_not_stop_a_command(trained):
    home, root = trained
    timings = home / "logs" / "timings.csv"
    timings.write_bytes(timings.read_bytes() + b"model1,default,0.3")
    ran = run_cli(home, "report", *tiny_flags(root))
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "execution time" in ran.stdout
    assert "1 damaged line(s) left out" in (home / "logs" / "carclf.log").read_text()


@pytest.mark.slow
def test_runs_trained_with_other_epochs_are_found_and_named(trained):
    home, root = trained
    ran = run_cli(home, "report", *tiny_flags(root), "--profile", "demo")
    assert ran.returncode == 0
    # the demo trains one epoch: the run of the current settings is the one trained above
    assert "model1" in ran.stdout and "not trained yet: model1 (optimal)" in ran.stdout
    longer = run_cli(home, "train", "--model", "model1", "--hyperparams", "default", "--epochs", "2", *tiny_flags(root))
    assert longer.returncode == 0, longer.stderr[-2000:]
    for command in (["report"], ["evaluate"]):
        ran = run_cli(home, *command, *tiny_flags(root))
        assert ran.returncode == 0, ran.stderr[-2000:]
        assert "model1 (default): using the run of the current settings" in ran.stdout
        assert "1 other stored run(s)" in ran.stdout
    elsewhere = tmp = home.parent / "elsewhere"
    shutil.copytree(home, tmp)
    for run in (tmp / "pickles" / "train-model1").glob("*.json"):
        if json.loads(run.read_text())["config"]["epochs"] == 1:  # only the 2-epoch run stays
            for stale in run.parent.glob(f"{run.stem}*"):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    for command in (["report"], ["evaluate"], ["predict", next(root.glob("car_data/car_data/test/*/*.jpg"))]):
        ran = run_cli(elsewhere, *command, *tiny_flags(root))
        assert ran.returncode == 0, ran.stderr[-2000:]
        said = ran.stdout + ran.stderr
        assert "model1 (default): no run of the current settings; using run" in said and "(2 epochs, 32x32" in said


@pytest.mark.slow
def test_predict_turns_a_photo_upright_by_its_exif_orientation(trained, tmp_path):
    from PIL import Image

    home, root = trained
    photo = Image.open(next(root.glob("car_data/car_data/test/*/*.jpg"))).convert("RGB")
    photo.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": stored turned the other way
    photo.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.png", exif=exif)
    photo.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png")
    answers = {}
    for name in ("upright", "phone", "sideways"):
        ran = run_cli(home, "predict", "--json", "--top", "3", tmp_path / f"{name}.png", *tiny_flags(root))
        assert ran.returncode == 0, ran.stderr[-2000:]
        answers[name] = [entry["probability"] for entry in json.loads(ran.stdout).popitem()[1]]
    np.testing.assert_allclose(answers["phone"], answers["upright"], rtol=1e-5)
    assert not np.allclose(answers["sideways"], answers["upright"], rtol=1e-5)  # orientation matters to the model


@pytest.mark.slow
def test_a_full_disk_at_the_checkpoint_is_a_sentence(trained, monkeypatch):
    home, root = trained
    fake_statvfs(monkeypatch, 1000, home / "models")
    ran = run_cli(home, "train", "--model", "model1", "--hyperparams", "default", "--epochs", "3", *tiny_flags(root))
    assert ran.returncode == 2
    line = ran.error_line()
    assert "not enough disk space in" in line and str(home / "models" / "model1") in line
    assert "the weights file best.weights.h5 need" in line and "superseded checkpoints" in line


@pytest.mark.slow
def test_two_train_processes_one_trains_the_other_waits_and_loads(tmp_path):
    root = make_synthetic(tmp_path / "cars", **TINY)
    home = tmp_path / "home"
    command = [sys.executable, "-m", "carclf", "--root", str(home), "train", "--model", "model1"]
    command += ["--hyperparams", "default", *tiny_flags(root)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _, err in outs]
    loaded = sorted(line.split()[-1] for out, _ in outs for line in out.splitlines() if line.startswith("model1 "))
    assert loaded == ["False", "True"]  # one trained, the other loaded its result
    log = (home / "logs" / "carclf.log").read_text()
    assert log.count("computing stage train-model1 ") == 1
    assert "is being computed by another process; waiting for it" in log
    assert len(list(home.glob("models/model1/*/model1.keras"))) == 1
