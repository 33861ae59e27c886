"""carclf.synthetic: layout, determinism, resumability, the real set's quirks, learnability."""

import subprocess
import sys

import cv2
import numpy as np
import pytest

from carclf.data import labels, load_stanford_cars
from carclf.synthetic import MAX_CLASSES, RAM_CV, class_table, make_synthetic

TINY = dict(n_classes=4, per_class_train=3, per_class_test=2, size_range=(64, 128), progress=False, workers=2)


def contents(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", ["class-folder", "devkit"])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, layout):
    a = contents(make_synthetic(tmp_path / "a", layout=layout, **TINY))
    b = contents(
        make_synthetic(tmp_path / "b", layout=layout, workers=1, **{k: v for k, v in TINY.items() if k != "workers"})
    )
    c = contents(make_synthetic(tmp_path / "c", layout=layout, **{**TINY, "seed": 1}))
    assert a == b
    images_a, images_c = ({v for k, v in x.items() if k.endswith(".jpg")} for x in (a, c))
    assert len(images_a) == 20 and not images_a & images_c
    annotations = [k for k in a if "anno" in k]
    assert len(annotations) == 2 and all(a[k] != c[k] for k in annotations)


def test_layout_on_disk(tmp_path):
    root = make_synthetic(tmp_path / "k", **TINY)
    assert (root / "names.csv").read_text().splitlines()[-1] == RAM_CV
    first = (root / "anno_train.csv").read_text().splitlines()[0].split(",")
    assert first[0] == "00001.jpg" and len(first) == 6 and all(v.lstrip("-").isdigit() for v in first[1:])
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert any(p.startswith("car_data/car_data/train/Ram C-V Cargo Van Minivan 2012/") for p in images)
    assert {p.rsplit("/", 1)[1] for p in images if "/test/" in p} == {f"{i:05d}.jpg" for i in range(1, 9)}

    from scipy.io import loadmat

    dev = make_synthetic(tmp_path / "d", layout="devkit", **TINY)
    record = loadmat(dev / "devkit" / "cars_train_annos.mat")["annotations"][0, 0]
    assert str(record["fname"][0]) == "00001.jpg" and record["class"].shape == (1, 1)
    assert [str(c[0]) for c in loadmat(dev / "devkit" / "cars_meta.mat")["class_names"][0]][-1] == RAM_CV
    assert sorted(p.name for p in (dev / "cars_test").iterdir()) == [f"{i:05d}.jpg" for i in range(1, 9)]


def test_interrupted_run_resumes(tmp_path):
    root = make_synthetic(tmp_path / "r", **TINY)
    before = contents(root)
    victim = next(root.rglob("00003.jpg"))
    victim.unlink()
    (root / "anno_train.csv").unlink()
    (victim.parent / ".00009.jpg.123.456.tmp").write_bytes(b"half an image")  # left by a killed run
    make_synthetic(root, **TINY)
    after = {k: v for k, v in contents(root).items() if not k.endswith(".tmp")}
    assert after == before
    assert len(load_stanford_cars(root)) == 4 * 5


def test_refuses_to_mix_sets_or_overwrite_a_dataset(tmp_path):
    root = make_synthetic(tmp_path / "m", **TINY)
    with pytest.raises(ValueError, match="another folder"):
        make_synthetic(root, **{**TINY, "seed": 3})
    (root / ".carclf-synthetic.json").unlink()  # now it looks like someone else's dataset
    with pytest.raises(ValueError, match="did not write"):
        make_synthetic(root, **TINY)


def test_quirks_of_the_real_set(tmp_path):
    root = make_synthetic(
        tmp_path / "q", n_classes=10, per_class_train=10, per_class_test=10, size_range=(64, 128), progress=False
    )
    frame = load_stanford_cars(root)
    report = frame.attrs["report"]
    assert report.ok and len(frame) == 200
    assert (frame["mode"] == "L").sum() >= 3  # grayscale JPEGs
    assert cv2.imread(frame.loc[frame["mode"] == "L", "path"].iloc[0], cv2.IMREAD_UNCHANGED).ndim == 2
    assert len(report.clipped_boxes) >= 2  # boxes past the border, as annotated
    touching = (
        (frame["x1"] == 0) | (frame["y1"] == 0) | (frame["x2"] == frame["width"]) | (frame["y2"] == frame["height"])
    )
    assert 0.03 <= touching.mean() <= 0.15
    assert frame["width"].nunique() > 30 and frame["width"].between(64, 128).all()
    aspect = frame["height"] / frame["width"]
    assert aspect.between(0.45, 1.02).all() and aspect.std() > 0.1


def test_class_table_names_and_attributes_are_distinct():
    table = class_table(196)
    names = [c.name for c in table]
    assert len(set(names)) == 196 and names[173] == RAM_CV
    assert all(len(n.split()) >= 4 and n.split()[-1].isdigit() for n in names)
    for n in (1, 10, MAX_CLASSES):
        table = class_table(n)
        assert len({c.name for c in table}) == n
        assert len({(c.family.name, c.colour[0], c.wheel, c.height, c.stripe, c.pillars) for c in table}) == n
    assert class_table(10)[9].name == RAM_CV
    with pytest.raises(ValueError):
        class_table(MAX_CLASSES + 1)


def test_box_crops_are_learnable_without_a_network(tmp_path):
    from sklearn.neighbors import NearestCentroid

    root = make_synthetic(tmp_path / "l", size_range=(64, 200), progress=False)  # the default 10-class set
    frame = load_stanford_cars(root)

    def thumbnails(part):
        crops = [cv2.imread(r.path, cv2.IMREAD_COLOR)[r.y1 : r.y2, r.x1 : r.x2] for r in part.itertuples()]
        return np.array([cv2.resize(c, (16, 16), interpolation=cv2.INTER_AREA).ravel() for c in crops], np.float32)

    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    model = NearestCentroid().fit(thumbnails(train), labels(train)[0])
    assert model.score(thumbnails(test), labels(test)[0]) > 0.6  # chance is 0.1


def test_no_tensorflow_import():
    code = "import sys, carclf.synthetic, carclf.data; assert not {'tensorflow', 'keras'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
