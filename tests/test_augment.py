"""Augmentation: the report's pipeline, the offline set (seeded, parallel, resumable), online mode,
CutMix, MixUp, the grid."""

import filecmp
import functools
import importlib.util
import pickle
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
from _helpers import kill, wait_for

from carclf import augment
from carclf.augment import (
    REPORT_1_3,
    REPORT_PIPELINE,
    BatchMixer,
    OnlineAugment,
    augment_image,
    batch_mixer,
    build_augmented_set,
    build_pipeline,
    cutmix,
    mixup,
    read_manifest,
    seed_pipeline,
)
from carclf.cache import StageCache
from carclf.report import plot_augmentations
from carclf.splits import DecodedSplit

HELPER = Path(__file__).with_name("_augment_kill.py")
_spec = importlib.util.spec_from_file_location("_augment_kill", HELPER)
helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helper)


def smooth_images(n, height=40, width=48, seed=0):
    """Photo-like uint8 RGB images: upsampled noise, so every image and variant differs."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, height // 4, width // 4, 3), dtype=np.uint8)
    return np.stack([cv2.resize(im, (width, height), interpolation=cv2.INTER_CUBIC) for im in small])


@pytest.fixture
def source_npy(tmp_path):
    path = tmp_path / "train.npy"
    np.save(path, smooth_images(10))
    return path


# --------------------------------------------------------------------------- #
# The pipeline
# --------------------------------------------------------------------------- #


def test_pipeline_has_the_reports_transforms_in_order_with_their_parameters():
    transforms = build_pipeline().transforms
    assert [type(t).__name__ for t in transforms] == [
        "HorizontalFlip", "RandomBrightnessContrast", "Rotate", "Affine", "GaussianBlur", "HueSaturationValue",
        "GridDistortion",
    ]  # fmt: skip
    assert [t.p for t in transforms] == [0.5, 0.2, 0.5, 0.2, 0.6, 0.3, 0.2]
    flip, bc, rotate, affine, blur, hsv, grid = transforms
    assert bc.brightness_limit == (-0.2, 0.2) and bc.contrast_limit == (-0.2, 0.2)
    assert rotate.limit == (-12, 12)
    # ShiftScaleRotate(shift_limit=0.05, scale_limit=0.05, rotate_limit=4): one scale for both axes, as in 1.3
    assert affine.translate_percent == {"x": (-0.05, 0.05), "y": (-0.05, 0.05)}
    assert affine.scale == {"x": (0.95, 1.05), "y": (0.95, 1.05)} and affine.keep_ratio
    assert affine.rotate == (-4, 4) and affine.shear == {"x": (0, 0), "y": (0, 0)}
    assert blur.blur_limit == (3, 5) and blur.sigma_limit == (0.8, 1.1)
    assert (hsv.hue_shift_limit, hsv.sat_shift_limit, hsv.val_shift_limit) == ((-10, 10), (-20, 20), (-10, 10))
    assert grid.num_steps == 5 and grid.distort_limit == (-0.2, 0.2) and not grid.normalized
    for geometric in (rotate, affine, grid):  # 1.3's border, not 2.x's black padding
        assert geometric.border_mode == cv2.BORDER_REFLECT_101
    assert len(REPORT_1_3) == len(REPORT_PIPELINE)
    assert A.__version__ == "2.0.8"


def test_no_deprecation_or_argument_warnings():
    image = smooth_images(1, 64, 64)[0]
    forced = tuple((name, {**kwargs, "p": 1.0}) for name, kwargs in REPORT_PIPELINE)  # every transform runs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for declaration in (REPORT_PIPELINE, forced):
            pipeline = build_pipeline(declaration)
            for seed in range(5):
                out = seed_pipeline(pipeline, seed)(image=image)["image"]
                assert out.shape == image.shape and out.dtype == np.uint8


def test_per_image_seeds_make_the_transforms_independent():
    # Compose(seed=...) / set_random_seed give each transform the same draws, which
    # nests them; one shared generator per image must not.
    image = smooth_images(1, 24, 24)[0]
    pipeline = A.Compose(build_pipeline().transforms, save_applied_params=True)
    n = 400
    combos, counts = Counter(), Counter()
    for row in range(n):
        applied = frozenset(name for name, _ in seed_pipeline(pipeline, 3, row, 0)(image=image)["applied_transforms"])
        combos[applied] += 1
        counts.update(applied)
    for name, kwargs in REPORT_PIPELINE:
        assert abs(counts[name] / n - kwargs["p"]) < 0.08, (name, counts[name] / n)
    assert len(combos) > 30
    assert any("Affine" in c and "HorizontalFlip" not in c for c in combos)


def test_augment_image_depends_on_seed_row_and_variant_only():
    image = smooth_images(1)[0]
    a = augment_image(image, seed=1, row=4, variant=0)
    np.testing.assert_array_equal(a, augment_image(image, seed=1, row=4, variant=0))
    others = [augment_image(image, 2, 4, 0), augment_image(image, 1, 5, 0), augment_image(image, 1, 4, 1)]
    assert sum(not np.array_equal(a, o) for o in others) >= 2  # a few seeds may draw no transform at all


def test_online_augment_is_seeded_per_batch_and_picklable():
    batch = smooth_images(6)
    online = OnlineAugment()
    first = online(batch, np.random.default_rng([0, 0, 3, 1]))
    assert first.dtype == np.uint8 and first.shape == batch.shape
    np.testing.assert_array_equal(first, pickle.loads(pickle.dumps(online))(batch, np.random.default_rng([0, 0, 3, 1])))
    assert not np.array_equal(first, online(batch, np.random.default_rng([0, 1, 3, 1])))
    assert not np.array_equal(first, batch)
    with pytest.raises(ValueError, match="uint8"):
        online(batch.astype(np.float32), np.random.default_rng(0))


# --------------------------------------------------------------------------- #
# The offline set
# --------------------------------------------------------------------------- #


def tree(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def test_offline_set_same_seed_same_files_whatever_the_workers(source_npy, tmp_path):
    serial = helper.build(source_npy, tmp_path / "serial")
    assert not serial.loaded and serial.written == 20 and len(serial) == 20
    manifest = read_manifest(serial.folder)
    assert list(manifest.columns[:5]) == ["file", "source", "row", "variant", "class_id"]
    assert manifest["file"].tolist()[:3] == ["00001_0.jpg", "00001_1.jpg", "00002_0.jpg"]
    assert manifest["source"].iloc[2] == "/cars/train/00002.jpg" and manifest["class_id"].iloc[2] == 1
    assert Path(serial.folder).parent == tmp_path / "serial" / "augmented"

    # 2 spawned worker processes write byte-identical files
    parallel = helper.build(source_npy, tmp_path / "parallel", workers=2, executor="process", chunk_size=3)
    assert parallel.key == serial.key and parallel.written == 20
    assert tree(parallel.folder) == tree(serial.folder)
    for name in tree(serial.folder):
        assert filecmp.cmp(serial.folder / name, parallel.folder / name, shallow=False), name

    # each file is augment_image(crop, seed, row, variant), encoded (PNG: exactly)
    lossless = helper.build(source_npy, tmp_path / "png", image_format="png")
    crops = np.load(source_npy)
    for row, variant, path in lossless.manifest[["row", "variant", "path"]].itertuples(index=False):
        expected = augment_image(crops[row], helper.SETTINGS["seed"], row, variant)
        np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB), expected)

    other = helper.build(source_npy, tmp_path / "other", seed=8)
    assert other.key != serial.key
    differ = sum(not filecmp.cmp(serial.folder / n, other.folder / n, shallow=False) for n in manifest["file"])
    assert differ >= 15


def test_rerun_loads_and_rewrites_only_missing_files(source_npy, tmp_path):
    first = helper.build(source_npy, tmp_path)
    again = helper.build(source_npy, tmp_path)
    assert again.loaded and again.written == 0 and again.folder == first.folder
    (first.folder / first.manifest["file"].iloc[3]).unlink()
    repaired = helper.build(source_npy, tmp_path)
    assert not repaired.loaded and repaired.written == 1
    assert len(list(first.folder.glob("*.jpg"))) == 20


def test_offline_set_resumes_after_sigkill(source_npy, tmp_path):
    root = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(HELPER), str(source_npy), str(root), "0.05"], stderr=subprocess.PIPE)
    parts = lambda: list(root.glob("pickles/augmented/*.parts/*.pkl"))  # noqa: E731
    try:
        wait_for(parts, proc, what="a finished chunk")
        time.sleep(0.12)  # into the next chunk, between files
    finally:
        kill(proc)
    folder = next((root / "augmented").iterdir())
    assert not (folder / "manifest.csv").exists(), "the run finished before it was killed"
    kept = sorted(folder.glob("[!.]*.jpg"))
    assert 8 <= len(kept) < 20  # the first chunk (4 rows x 2 variants) and maybe more
    for path in kept:  # every file that has its name is whole
        assert cv2.imread(str(path)) is not None, path

    resumed = helper.build(source_npy, root)
    assert not resumed.loaded and resumed.written == 20 - len(kept)  # finished files are kept
    fresh = helper.build(source_npy, tmp_path / "fresh")
    assert tree(resumed.folder) == tree(fresh.folder)  # no temp file left behind
    for name in tree(fresh.folder):
        assert filecmp.cmp(resumed.folder / name, fresh.folder / name, shallow=False), name
    assert not list(root.rglob("*.parts")) and not list(root.rglob(".*.tmp"))


def test_to_split_reads_the_manifest_in_order(source_npy, tmp_path):
    built = helper.build(source_npy, tmp_path)
    split = built.to_split(progress=False)
    assert isinstance(split, DecodedSplit) and split.split == "augmented"
    assert split.images.shape == (20, 40, 48, 3) and split.num_classes == 3
    np.testing.assert_array_equal(split.class_ids, np.repeat(np.arange(10) % 3, 2))
    path = built.manifest["path"].iloc[5]
    np.testing.assert_array_equal(split.images[5], cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB))


def test_only_the_training_split_is_augmented(source_npy, tmp_path):
    images = np.load(source_npy)
    test = DecodedSplit(images, np.zeros(len(images), int), [f"{i}.jpg" for i in range(len(images))], "test", 3)
    with pytest.raises(ValueError, match="test set never is"):
        build_augmented_set(test, StageCache(tmp_path), out_dir=tmp_path / "a", progress=False)
    train = DecodedSplit(images, np.zeros(len(images), int), [f"{i}.jpg" for i in range(len(images))], "train", 3)
    built = build_augmented_set(
        {"train": train, "test": test}, StageCache(tmp_path), out_dir=tmp_path / "a", workers=1, progress=False
    )
    assert len(built) == len(images) and set(built.manifest["source"]) == {f"{i}.jpg" for i in range(len(images))}


# --------------------------------------------------------------------------- #
# CutMix and MixUp
# --------------------------------------------------------------------------- #


def tagged_batch(n=8, height=12, width=10):
    """Image i is filled with i + 1; its label is class i."""
    images = (np.arange(n, dtype=np.float32) + 1)[:, None, None, None] * np.ones((1, height, width, 3), np.float32)
    return images, np.eye(n, dtype=np.float32)


@pytest.mark.parametrize("alpha", [0.4, 1.0, 3.0])
def test_cutmix_labels_are_the_pasted_area_exactly(alpha):
    images, labels = tagged_batch()
    pasted_any = False
    for seed in range(20):
        before = images.copy()
        out, y = cutmix(images, labels, alpha, np.random.default_rng(seed))
        np.testing.assert_array_equal(images, before)  # inputs untouched
        assert out.dtype == np.float32 and y.dtype == np.float32
        np.testing.assert_allclose(y.sum(1), 1, atol=1e-6)
        for i in range(len(images)):
            values = out[i, :, :, 0]
            area = np.array([(values == k + 1).mean() for k in range(len(images))])
            np.testing.assert_allclose(y[i], area, atol=1e-6)
            pasted_any |= area[i] < 1
        changed = (out != images).any(axis=(0, 3))  # one box, the same in every image
        if changed.any():
            ys, xs = np.nonzero(changed)
            assert changed[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()
    assert pasted_any


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_weights_are_lambda(alpha):
    images, labels = tagged_batch()
    for seed in range(10):
        out, y = mixup(images, labels, alpha, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)  # the draws mixup makes: the permutation, then lambda
        perm, lam = rng.permutation(len(images)), rng.beta(alpha, alpha)
        expected = lam * labels + (1 - lam) * labels[perm]
        np.testing.assert_allclose(y, expected, atol=1e-6)
        np.testing.assert_allclose(y.sum(1), 1, atol=1e-6)
        np.testing.assert_allclose(out[:, 0, 0, 0], lam * (np.arange(8) + 1) + (1 - lam) * (perm + 1), rtol=1e-6)
        for i in np.nonzero(perm != np.arange(8))[0]:
            assert y[i, i] == pytest.approx(lam, abs=1e-6)


def test_mixers_are_off_by_default_and_fit_the_generator_hook():
    assert batch_mixer() is None
    assert batch_mixer(cutmix=True) == BatchMixer(cutmix_alpha=1.0)
    assert batch_mixer(mixup=0.4) == BatchMixer(mixup_alpha=0.4)
    with pytest.raises(ValueError, match="alpha"):
        batch_mixer(cutmix=-1)
    images, labels = tagged_batch()
    both = batch_mixer(cutmix=True, mixup=True)
    for hook in (both, functools.partial(cutmix, alpha=1.0), functools.partial(mixup, alpha=0.2)):
        out, y = hook(images, labels, rng=np.random.default_rng(1))
        assert out.shape == images.shape and np.allclose(y.sum(1), 1)


# --------------------------------------------------------------------------- #
# The grid
# --------------------------------------------------------------------------- #


def test_plot_shows_originals_beside_the_offline_variants():
    import matplotlib

    matplotlib.use("Agg")
    images = smooth_images(3)
    figure = plot_augmentations(images, n_variants=2, seed=5, class_names=["a", "b", "c"], rows=[7, 8, 9])
    axes = figure.axes
    assert len(axes) == 3 * 3
    np.testing.assert_array_equal(axes[0].images[0].get_array(), images[0])
    np.testing.assert_array_equal(axes[4].images[0].get_array(), augment_image(images[1], 5, 8, 0))
    assert axes[3].get_title() == "b"
    figure.canvas.draw()
    assert augment.STAGE == "augmented"
