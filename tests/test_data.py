"""carclf.data on tiny synthetic sets in both layouts, and on each kind of damage."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from carclf.data import (
    DatasetError,
    ValidationReport,
    class_names,
    dataset_fingerprint,
    detect_layout,
    folder_name,
    labels,
    load_stanford_cars,
)
from carclf.synthetic import RAM_CV, make_synthetic

N_CLASSES = 5
SMALL = dict(n_classes=N_CLASSES, per_class_train=3, per_class_test=3, size_range=(64, 160), progress=False, workers=2)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    base = tmp_path_factory.mktemp("cars")
    return {layout: make_synthetic(base / layout, layout=layout, **SMALL) for layout in ("class-folder", "devkit")}


@pytest.fixture
def kaggle(pristine, tmp_path):
    """A copy of the class-folder set that a test may damage."""
    return shutil.copytree(pristine["class-folder"], tmp_path / "kaggle")


@pytest.fixture
def devkit(pristine, tmp_path):
    return shutil.copytree(pristine["devkit"], tmp_path / "devkit")


def rewrite_line(path, number, change):
    lines = path.read_text().splitlines()
    lines[number - 1] = change(lines[number - 1])
    path.write_text("\n".join(lines) + "\n")


def set_fields(**values):
    order = ["filename", "x1", "y1", "x2", "y2", "class_id"]

    def change(line):
        fields = line.split(",")
        for key, value in values.items():
            fields[order.index(key)] = str(value)
        return ",".join(fields)

    return change


def image_of(frame, split="train", row=0):
    return frame[frame["split"] == split].iloc[row]


# --------------------------------------------------------------------------- the good case


def test_both_layouts_load_with_ids_and_names(pristine):
    frames = {layout: load_stanford_cars(root) for layout, root in pristine.items()}
    for layout, frame in frames.items():
        assert detect_layout(pristine[layout]) == layout
        assert frame.attrs["report"].ok
        assert len(frame) == N_CLASSES * 6
        assert frame["split"].tolist() == ["train"] * 15 + ["test"] * 15
        assert frame.groupby("split")["filename"].apply(lambda s: s.is_monotonic_increasing).all()
        assert frame["class_id"].between(0, N_CLASSES - 1).all()
        names = frame.attrs["class_names"]
        assert len(names) == N_CLASSES and RAM_CV in names
        assert (frame["class_name"] == [names[i] for i in frame["class_id"]]).all()
        assert frame["class_id"].dtype == np.int64 and frame["x1"].dtype == np.int64
        assert ((frame["x1"] >= 0) & (frame["x2"] <= frame["width"]) & (frame["x1"] < frame["x2"])).all()
        assert ((frame["y1"] >= 0) & (frame["y2"] <= frame["height"]) & (frame["y1"] < frame["y2"])).all()
    ram = frames["class-folder"].query("class_name == @RAM_CV")
    assert len(ram) == 6 and ram["path"].str.contains("/Ram C-V Cargo Van Minivan 2012/", regex=False).all()
    content = ["split", "filename", "class_id", "class_name", "x1", "y1", "x2", "y2", "width", "height", "clipped"]
    a, b = (frames[k][content].reset_index(drop=True) for k in ("class-folder", "devkit"))
    assert a.equals(b)


def test_class_names_and_folder_rule(pristine):
    assert class_names(pristine["class-folder"]) == class_names(pristine["devkit"])
    assert folder_name(RAM_CV) == "Ram C-V Cargo Van Minivan 2012"
    assert folder_name('A<b>:c"d\\e|f?g*h') == "A-b--c-d-e-f-g-h"
    assert folder_name("Audi S5 Convertible 2012") == "Audi S5 Convertible 2012"


def test_devkit_test_annotations_may_sit_under_devkit(devkit):
    (devkit / "cars_test_annos_withlabels.mat").rename(devkit / "devkit" / "cars_test_annos_withlabels.mat")
    assert detect_layout(devkit) == "devkit"
    assert (load_stanford_cars(devkit)["split"] == "test").sum() == N_CLASSES * 3


def test_report_summary_frame_and_log(pristine, caplog):
    with caplog.at_level(logging.INFO, logger="carclf.data"):
        frame = load_stanford_cars(pristine["class-folder"])
    report = frame.attrs["report"]
    assert isinstance(report, ValidationReport)
    assert "missing files: 0" in report.summary() and "train 15/15" in report.summary()
    assert "class-folder layout" in caplog.text
    assert list(report.to_frame().columns) == ["problem", "split", "file", "detail"]


def test_labels_are_consistent(pristine):
    frame = load_stanford_cars(pristine["devkit"])
    train = frame[frame["split"] == "train"]
    ints, onehot = labels(train)
    assert ints.dtype == np.int64 and ints.shape == (15,)
    assert onehot.dtype == np.float32 and onehot.shape == (15, N_CLASSES)
    assert np.all(onehot.sum(axis=1) == 1) and np.array_equal(onehot.argmax(axis=1), ints)
    # A class without images still gets its column.
    few = train[train["class_id"] < 2]
    assert labels(few)[1].shape == (len(few), N_CLASSES)
    assert labels(few, num_classes=7)[1].shape == (len(few), 7)
    with pytest.raises(ValueError):
        labels(train, num_classes=2)


# --------------------------------------------------------------------------- counted problems


def test_missing_file_is_reported_and_strict_raises(kaggle):
    row = image_of(load_stanford_cars(kaggle), "test", 2)
    Path(row["path"]).unlink()
    frame = load_stanford_cars(kaggle)
    report = frame.attrs["report"]
    assert [p.file for p in report.missing_files] == [row["filename"]]
    assert not report.ok and row["filename"] not in frame.query("split == 'test'")["filename"].tolist()
    with pytest.raises(DatasetError, match=row["filename"]):
        load_stanford_cars(kaggle, strict=True)


def test_unannotated_image(kaggle):
    row = image_of(load_stanford_cars(kaggle))
    shutil.copy(row["path"], row["path"].replace(row["filename"], "99999.jpg"))
    report = load_stanford_cars(kaggle).attrs["report"]
    assert len(report.unannotated_images) == 1 and report.unannotated_images[0].file.endswith("/99999.jpg")


def test_unknown_class_ids(kaggle):
    anno = kaggle / "anno_train.csv"
    rewrite_line(anno, 1, set_fields(class_id=0))
    rewrite_line(anno, 2, set_fields(class_id=N_CLASSES + 1))
    frame = load_stanford_cars(kaggle, check_names=False)  # counted, not fatal (by default they are: below)
    report = frame.attrs["report"]
    assert [p.file for p in report.unknown_class_ids] == ["00001.jpg", "00002.jpg"]
    assert "anno_train.csv line 2" in report.unknown_class_ids[1].detail
    assert not report.unannotated_images  # their files were annotated, just badly
    assert len(frame.query("split == 'train'")) == 13


def test_unknown_class_id_in_devkit(devkit):
    from scipy.io import loadmat, savemat

    path = devkit / "devkit" / "cars_train_annos.mat"
    annotations = loadmat(path)["annotations"]
    annotations["class"][0, 0] = np.array([[0]], dtype=np.uint8)  # uint8: 0 - 1 must not wrap to 255
    savemat(path, {"annotations": annotations})
    report = load_stanford_cars(devkit, check_names=False).attrs["report"]
    assert [p.file for p in report.unknown_class_ids] == ["00001.jpg"]


def test_box_crossing_the_border_is_clipped_and_counted(kaggle):
    before = load_stanford_cars(kaggle)
    row = image_of(before)
    assert not row["clipped"]
    rewrite_line(kaggle / "anno_train.csv", 1, set_fields(x2=row["width"] + 5, y1=-3))
    frame = load_stanford_cars(kaggle, strict=True)  # clipping is a fix, not a failure
    first = image_of(frame)
    assert first["clipped"] and first["x2"] == first["width"] and first["y1"] == 0
    clipped = [p.file for p in frame.attrs["report"].clipped_boxes]
    assert "00001.jpg" in clipped and len(clipped) == len(before.attrs["report"].clipped_boxes) + 1


def test_degenerate_box_uses_whole_image(kaggle):
    rewrite_line(kaggle / "anno_train.csv", 1, set_fields(x1=50, x2=50))
    frame = load_stanford_cars(kaggle)
    first = image_of(frame)
    assert first["degenerate"] and (first["x1"], first["y1"], first["x2"], first["y2"]) == (
        0,
        0,
        first["width"],
        first["height"],
    )
    assert [p.file for p in frame.attrs["report"].degenerate_boxes] == ["00001.jpg"]


def test_corrupt_images(kaggle):
    frame = load_stanford_cars(kaggle)
    garbage, truncated = image_of(frame, "train", 0), image_of(frame, "train", 1)
    with open(garbage["path"], "wb") as f:
        f.write(b"not a jpeg at all" * 10)
    data = open(truncated["path"], "rb").read()
    with open(truncated["path"], "wb") as f:
        f.write(data[: len(data) // 2])

    report = load_stanford_cars(kaggle).attrs["report"]
    assert [p.file for p in report.unreadable_images] == [garbage["filename"]]  # header unreadable
    frame = load_stanford_cars(kaggle, check_images=True)
    assert [p.file for p in frame.attrs["report"].unreadable_images] == [garbage["filename"], truncated["filename"]]
    assert garbage["filename"] not in frame.query("split == 'train'")["filename"].tolist()


def test_unknown_folder_and_folder_mismatch(kaggle):
    frame = load_stanford_cars(kaggle)
    train_dir = kaggle / "car_data" / "car_data" / "train"
    (train_dir / "Not A Class 1999").mkdir()
    shutil.copy(image_of(frame)["path"], train_dir / "Not A Class 1999" / "77777.jpg")
    moved = image_of(frame, "train", 3)
    other = next(n for n in frame.attrs["class_names"] if n != moved["class_name"])
    shutil.move(moved["path"], train_dir / folder_name(other) / moved["filename"])

    frame = load_stanford_cars(kaggle, check_names=False)
    report = frame.attrs["report"]
    assert [p.file for p in report.unknown_folders] == ["Not A Class 1999"]
    assert [p.file for p in report.folder_mismatches] == [moved["filename"]]
    kept = frame.query("filename == @moved['filename'] and split == 'train'").iloc[0]
    assert kept["class_id"] == moved["class_id"] and folder_name(other) in kept["path"]
    with pytest.raises(DatasetError, match="Not A Class 1999"):
        load_stanford_cars(kaggle, strict=True, check_names=False)


# --------------------------------------------------------------------------- fatal problems


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="nowhere.*does not exist"):
        load_stanford_cars(tmp_path / "nowhere")


def test_unrecognised_layout_hints_at_the_right_folder(pristine, tmp_path):
    with pytest.raises(DatasetError, match="no Stanford Cars layout"):
        detect_layout(tmp_path)
    with pytest.raises(DatasetError, match="did you mean .*class-folder"):
        detect_layout(pristine["class-folder"].parent)


def test_missing_names_csv(kaggle):
    (kaggle / "names.csv").unlink()
    with pytest.raises(DatasetError, match=r"names\.csv not found"):
        load_stanford_cars(kaggle)


def test_empty_names(kaggle, devkit):
    (kaggle / "names.csv").write_text("\n")
    with pytest.raises(DatasetError, match=r"names\.csv holds no class names"):
        class_names(kaggle)
    (devkit / "devkit" / "cars_meta.mat").unlink()
    with pytest.raises(DatasetError, match=r"cars_meta\.mat not found"):
        load_stanford_cars(devkit)


@pytest.mark.parametrize(
    "change, complaint",
    [
        (lambda line: line.rsplit(",", 1)[0], "has 5 fields"),
        (set_fields(y2="12.5"), "has a non-integer"),
    ],
)
def test_malformed_annotation_line_is_named(kaggle, change, complaint):
    rewrite_line(kaggle / "anno_test.csv", 4, change)
    with pytest.raises(DatasetError, match=rf"anno_test\.csv: line 4 {complaint}"):
        load_stanford_cars(kaggle)


def test_missing_annotation_file(kaggle, devkit):
    (kaggle / "anno_test.csv").unlink()
    with pytest.raises(DatasetError, match=r"anno_test\.csv not found"):
        load_stanford_cars(kaggle)
    (devkit / "cars_test_annos_withlabels.mat").rename(devkit / "cars_test_annos.mat")
    with pytest.raises(DatasetError, match=r"cars_test_annos\.mat has no class labels"):
        load_stanford_cars(devkit)


def test_split_without_usable_images(devkit):
    for image in (devkit / "cars_test").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match="no usable test images"):
        load_stanford_cars(devkit)


@pytest.mark.parametrize("layout", ["class-folder", "devkit"])
def test_fingerprint_follows_the_dataset_not_a_rewrite(pristine, tmp_path, layout):
    root = shutil.copytree(pristine[layout], tmp_path / layout)
    before = dataset_fingerprint(root)
    make_synthetic(root, layout=layout, **SMALL)  # resuming rewrites identical annotation files
    assert dataset_fingerprint(root) == before

    first_image = load_stanford_cars(root)["path"].iloc[0]
    shutil.copy(first_image, Path(first_image).with_name("extra.jpg"))
    assert dataset_fingerprint(root) != before  # a new image on disk changes what a scan would find

    added = dataset_fingerprint(root)
    annotations = root / ("anno_train.csv" if layout == "class-folder" else "devkit/cars_train_annos.mat")
    annotations.write_bytes(annotations.read_bytes()[:-3])
    assert dataset_fingerprint(root) != added


# --------------------------------------------------------------------------- names and annotations disagree


def test_names_out_of_order_stop_the_scan_naming_the_line(kaggle):
    names = (kaggle / "names.csv").read_text().splitlines()
    names[0], names[1] = names[1], names[0]
    (kaggle / "names.csv").write_text("\n".join(names) + "\n")
    with pytest.raises(DatasetError, match=r"names\.csv: line 1 names .* but the \d+ images annotated class 1 are in"):
        load_stanford_cars(kaggle)


def test_a_folder_no_name_maps_to_stops_the_scan(kaggle):
    frame = load_stanford_cars(kaggle)
    train_dir = kaggle / "car_data" / "car_data" / "train"
    (train_dir / "Not A Class 1999").mkdir()
    shutil.copy(image_of(frame)["path"], train_dir / "Not A Class 1999" / "77777.jpg")
    with pytest.raises(DatasetError, match="the train folder 'Not A Class 1999' .* matches no line of names.csv"):
        load_stanford_cars(kaggle)


def test_a_class_id_below_one_stops_the_scan(kaggle):
    rewrite_line(kaggle / "anno_test.csv", 3, set_fields(class_id=0))
    with pytest.raises(DatasetError, match=r"anno_test\.csv line 3 has class id 0, not in 1\.\.5"):
        load_stanford_cars(kaggle)
