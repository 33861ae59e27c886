"""The decoded image cache: decoding, crops, the resumable build, batches."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from _helpers import kill, wait_for

from carclf.cache import StageCache
from carclf.decoded import build_decoded_cache, crop_window, decode_image
from carclf.settings import DecodeSettings
from carclf.splits import DecodedSplit

HELPER = Path(__file__).with_name("_kill_helpers.py")
_spec = importlib.util.spec_from_file_location("_kill_helpers", HELPER)
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

BLUE_BGR, RED_BGR = (255, 0, 0), (0, 0, 255)


def write_rect_jpeg(path, width=128, height=96, rect=(32, 16, 96, 64)):
    """Blue background, red rectangle on 8-pixel block boundaries.

    Written at quality 100 without chroma subsampling, so the JPEG keeps every
    pixel within 1-2 levels of the original, edges included.
    """
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = BLUE_BGR
    x1, y1, x2, y2 = rect
    image[y1:y2, x1:x2] = RED_BGR
    options = [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    assert cv2.imwrite(str(path), image, options)
    return path


def row(path, split, class_id, box, clipped=False):
    height, width = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
    x1, y1, x2, y2 = box
    return {
        "path": str(path), "filename": Path(path).name, "split": split, "class_id": class_id,
        "class_name": f"car {class_id}", "x1": x1, "y1": y1, "x2": x2, "y2": y2,
        "width": width, "height": height, "clipped": clipped,
    }  # fmt: skip


def make_frame(folder, n=18, n_classes=3):
    """``n`` small JPEGs: one grayscale, one with its box on the border; 2/3 train."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        height, width = 30 + 2 * i, 40 + 3 * i
        path = folder / f"{i:03d}.jpg"
        image = rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        if i == 1:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)  # a grayscale JPEG
        cv2.imwrite(str(path), image)
        box = (width // 2, 0, width, height) if i == 2 else (3, 4, width - 5, height - 3)
        rows.append(row(path, "test" if i % 3 == 2 else "train", i % n_classes, box, clipped=i == 2))
    return pd.DataFrame(rows)


@pytest.fixture
def frame(tmp_path):
    return make_frame(tmp_path / "images")


# --------------------------------------------------------------------------- #
# decode_image
# --------------------------------------------------------------------------- #


def test_decode_shapes_and_dtypes(frame):
    first = frame.iloc[0]
    box = (first.x1, first.y1, first.x2, first.y2)
    image = decode_image(first.path, box, DecodeSettings(image_size=(20, 36)))
    assert image.shape == (20, 36, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    assert decode_image(first.path, None, DecodeSettings(image_size=(8, 8), crop="full")).shape == (8, 8, 3)


def test_grayscale_jpeg_becomes_three_equal_channels(frame):
    gray = frame.iloc[1]
    assert cv2.imread(gray.path, cv2.IMREAD_UNCHANGED).ndim == 2
    image = decode_image(gray.path, (gray.x1, gray.y1, gray.x2, gray.y2), DecodeSettings(image_size=(16, 16)))
    assert image.shape == (16, 16, 3)
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])


def test_margin_zero_crops_exactly_the_box(tmp_path):
    path = write_rect_jpeg(tmp_path / "rect.jpg")
    box = (32, 16, 96, 64)
    tight = decode_image(
        path, box, DecodeSettings(image_size=(48, 64), margin=0)
    )  # same size as the box: no resampling
    raw = cv2.imread(str(path))
    np.testing.assert_array_equal(tight, raw[16:64, 32:96, ::-1])
    red = np.array([255, 0, 0])
    assert np.abs(tight.astype(int) - red).max() <= 6  # every pixel red (RGB), no blue edge

    # a smaller output still sees no background at all
    small = decode_image(path, box, DecodeSettings(image_size=(5, 7), margin=0))
    assert np.abs(small.astype(int) - red).max() <= 6

    # with a margin, the background shows around the box
    loose = decode_image(path, box, DecodeSettings(image_size=(48, 64), margin=0.25))
    assert loose[0, 0, 2] > 200 and loose[0, 0, 0] < 50  # blue corner
    assert loose[24, 32, 0] > 200  # red centre


def test_box_crop_and_full_image_differ(tmp_path):
    path = write_rect_jpeg(tmp_path / "rect.jpg")
    box = (32, 16, 96, 64)
    boxed = decode_image(path, box, DecodeSettings(image_size=(24, 32), crop="box", margin=0))
    full = decode_image(path, box, DecodeSettings(image_size=(24, 32), crop="full", margin=0))
    assert not np.array_equal(boxed, full)
    assert full[0, 0, 2] > 200 and boxed[0, 0, 2] < 10  # full keeps the blue border, the box is red
    assert not np.array_equal(
        decode_image(path, box, DecodeSettings(image_size=(24, 32))), boxed
    )  # default margin 0.08
    np.testing.assert_array_equal(full, decode_image(path, None, DecodeSettings(image_size=(24, 32))))


def test_box_touching_the_border_is_clipped(frame):
    edge = frame.iloc[2]  # box (width // 2, 0, width, height)
    box = (edge.x1, edge.y1, edge.x2, edge.y2)
    assert crop_window(box, edge.width, edge.height, margin=0.5) == (
        edge.x1 - int(np.ceil(0.5 * (edge.x2 - edge.x1))),
        0,
        edge.width,
        edge.height,
    )
    assert crop_window(box, edge.width, edge.height, margin=0) == box
    assert decode_image(edge.path, box, DecodeSettings(image_size=(10, 10), margin=0.5)).shape == (10, 10, 3)


def test_undecodable_file_raises_naming_it(tmp_path, frame):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match="broken.jpg"):
        decode_image(bad, (0, 0, 5, 5))
    with pytest.raises(ValueError):
        decode_image(frame.iloc[0].path, None, DecodeSettings(crop="tight"))

    broken = frame.copy()
    broken.loc[5, "path"] = str(bad)
    cache = StageCache(tmp_path / "pickles")
    with pytest.raises(ValueError, match="broken.jpg"):
        build_decoded_cache(broken, cache, DecodeSettings(image_size=(8, 8)), chunk_size=4, progress=False)
    assert cache.status()["complete"].sum() == 0  # nothing recorded as finished


# --------------------------------------------------------------------------- #
# build_decoded_cache
# --------------------------------------------------------------------------- #


@pytest.fixture
def count_imread(monkeypatch):
    """Every image file read (the decoder reads each through carclf.images.read_image)."""
    from carclf import images

    calls = []
    read = images.read_image

    def counting(*args, **kwargs):
        calls.append(args[0])
        return read(*args, **kwargs)

    monkeypatch.setattr(images, "read_image", counting)
    return calls


def test_build_matches_decode_image_and_loads_the_second_time(tmp_path, frame, count_imread):
    cache = StageCache(tmp_path / "pickles")
    settings = dict(image_size=(12, 20), crop="box", margin=0.08)
    decoded = build_decoded_cache(frame, cache, DecodeSettings(**settings), chunk_size=5, progress=False)

    assert list(decoded) == ["train", "test"]
    train, test = decoded["train"], decoded["test"]
    rows = frame[frame.split == "train"]
    assert len(train) == len(rows) and len(test) == (frame.split == "test").sum()
    assert isinstance(train, DecodedSplit) and isinstance(train.images, np.memmap)
    assert train.images.shape == (len(rows), 12, 20, 3) and train.images.dtype == np.uint8
    assert not train.images.flags.writeable
    assert train.class_ids.dtype == np.int64 and train.num_classes == test.num_classes == 3
    assert train.paths == rows.path.tolist()
    np.testing.assert_array_equal(train.class_ids, rows.class_id.to_numpy())
    assert train.one_hot().shape == (len(rows), 3) and train.one_hot().dtype == np.float32
    for i, r in enumerate(rows.itertuples()):
        np.testing.assert_array_equal(
            train.images[i], decode_image(r.path, (r.x1, r.y1, r.x2, r.y2), DecodeSettings(**settings))
        )

    count_imread.clear()
    again = build_decoded_cache(frame, cache, DecodeSettings(**settings), chunk_size=5, progress=False)
    assert count_imread == []
    assert cache.events[-1][2] == "loaded" and [e[2] for e in cache.events] == ["computed", "loaded"]
    np.testing.assert_array_equal(again["test"].images, test.images)

    # another config goes to another key; the first one stays
    full = build_decoded_cache(
        frame, cache, DecodeSettings(image_size=(12, 20), crop="full"), chunk_size=5, progress=False
    )
    assert cache.events[-1][2] == "computed" and len(cache.status()) == 2
    assert not np.array_equal(full["train"].images, train.images)


def test_build_resumes_after_sigkill(tmp_path, frame, count_imread):
    frame_pickle = tmp_path / "frame.pkl"
    frame.to_pickle(frame_pickle)
    root = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), "decoded", str(frame_pickle), str(root), "0.1"], stderr=subprocess.PIPE
    )
    parts = lambda: list(root.glob("decoded/*.parts/*.pkl"))  # noqa: E731
    try:
        wait_for(parts, proc, what="a finished chunk")
    finally:
        kill(proc)
    assert not list(root.glob("decoded/*.pkl")), "the build finished before it was killed"
    chunk = helpers.DECODED_OPTIONS["chunk_size"]
    done_rows = chunk * len(parts())  # every split's size here is a multiple of the chunk size
    assert (frame.split.value_counts() % chunk == 0).all()
    assert 0 < done_rows < len(frame)

    cache = StageCache(root)
    count_imread.clear()
    resumed = build_decoded_cache(
        frame, cache, DecodeSettings(**helpers.DECODED_SETTINGS), progress=False, **helpers.DECODED_OPTIONS
    )
    assert len(count_imread) == len(frame) - done_rows  # only unfinished chunks were decoded
    assert cache.events[-1][2] == "computed"

    fresh = build_decoded_cache(
        frame,
        StageCache(tmp_path / "fresh"),
        DecodeSettings(**helpers.DECODED_SETTINGS),
        progress=False,
        **helpers.DECODED_OPTIONS,
    )
    for split in ("train", "test"):
        np.testing.assert_array_equal(resumed[split].images, fresh[split].images)
        np.testing.assert_array_equal(resumed[split].class_ids, fresh[split].class_ids)
        assert resumed[split].paths == fresh[split].paths
        assert resumed[split].images.any()

    count_imread.clear()
    again = build_decoded_cache(
        frame, cache, DecodeSettings(**helpers.DECODED_SETTINGS), progress=False, **helpers.DECODED_OPTIONS
    )
    assert count_imread == [] and cache.events[-1][2] == "loaded"
    np.testing.assert_array_equal(again["train"].images, fresh["train"].images)
    assert not list(root.rglob("*.parts"))


def test_missing_array_is_rebuilt(tmp_path, frame):
    cache = StageCache(tmp_path)
    first = build_decoded_cache(frame, cache, DecodeSettings(image_size=(8, 8)), chunk_size=8, progress=False)
    key = cache.events[-1][1]
    reference = np.array(first["test"].images)
    del first
    (cache.artifact_dir("decoded", key) / "test.npy").unlink()
    again = build_decoded_cache(frame, cache, DecodeSettings(image_size=(8, 8)), chunk_size=8, progress=False)
    assert cache.events[-1] == ("decoded", key, "computed")
    np.testing.assert_array_equal(again["test"].images, reference)


# --------------------------------------------------------------------------- #
# batches
# --------------------------------------------------------------------------- #


@pytest.fixture
def numbered(tmp_path):
    """A split whose image i is filled with the value i, on a real memmap."""
    n = 23
    array = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(n, 4, 5, 3))
    array[:] = np.arange(n, dtype=np.uint8)[:, None, None, None]
    array.flush()
    del array
    class_ids = np.arange(n) % 4
    return DecodedSplit(
        np.load(tmp_path / "x.npy", mmap_mode="r"), class_ids, [f"{i}.jpg" for i in range(n)], "train", 4
    )


def epoch_indices(split, **kwargs):
    seen, sizes = [], []
    for x, y in split.batches(5, **kwargs):
        assert x.dtype == np.float32 and y.dtype == np.float32 and x.shape[1:] == (4, 5, 3)
        idx = x[:, 0, 0, 0].astype(int)
        assert (x == idx[:, None, None, None]).all()  # whole rows, in the order of idx
        np.testing.assert_array_equal(y, np.eye(4, dtype=np.float32)[split.class_ids[idx]])
        seen.extend(idx)
        sizes.append(len(x))
    return seen, sizes


def test_batches_cover_every_row_once_per_epoch(numbered):
    seen, sizes = epoch_indices(numbered, seed=0, epoch=0)
    assert sorted(seen) == list(range(len(numbered)))
    assert sizes == [5, 5, 5, 5, 3]  # the last partial batch is included
    assert seen != list(range(len(numbered)))  # shuffled

    ordered, _ = epoch_indices(numbered, shuffle=False)
    assert ordered == list(range(len(numbered)))


def test_batch_order_depends_on_seed_and_epoch_only(numbered):
    e0, _ = epoch_indices(numbered, seed=0, epoch=0)
    assert epoch_indices(numbered, seed=0, epoch=0)[0] == e0
    e1, _ = epoch_indices(numbered, seed=0, epoch=1)
    other_seed, _ = epoch_indices(numbered, seed=1, epoch=0)
    assert e1 != e0 and other_seed != e0
    assert sorted(e1) == sorted(e0)


def test_an_array_damaged_in_place_is_checked_and_only_its_chunk_decoded_again(tmp_path, frame, count_imread, caplog):
    from _helpers import flip_bytes

    cache = StageCache(tmp_path)
    first = build_decoded_cache(frame, cache, DecodeSettings(image_size=(8, 8)), chunk_size=4, progress=False)
    reference = np.array(first["train"].images)
    path = Path(first["train"].images.filename)
    del first
    flip_bytes(path, path.stat().st_size - 100, 8)  # the same size: only the checksums can tell
    count_imread.clear()
    with caplog.at_level("WARNING", logger="carclf.decoded"):
        again = build_decoded_cache(frame, cache, DecodeSettings(image_size=(8, 8)), chunk_size=4, progress=False)
    np.testing.assert_array_equal(again["train"].images, reference)
    assert len(count_imread) == 4  # the last chunk's rows, no others
    assert f"{path}: rows" in caplog.text and "are damaged; decoding them again" in caplog.text
    count_imread.clear()
    build_decoded_cache(frame, cache, DecodeSettings(image_size=(8, 8)), chunk_size=4, progress=False)
    assert count_imread == []  # checked once, not read again


def test_images_that_cannot_be_decoded_whole_are_left_out_and_listed(tmp_path, frame):
    from carclf.decoded import decode_problems

    broken = frame.copy()
    data = Path(broken.loc[3, "path"]).read_bytes()
    Path(broken.loc[3, "path"]).write_bytes(data[: len(data) // 2])  # a JPEG cut off halfway
    cache = StageCache(tmp_path / "pickles")
    decoded = build_decoded_cache(
        broken, cache, DecodeSettings(image_size=(8, 8)), chunk_size=4, progress=False, on_error="skip"
    )
    train = broken[broken.split == "train"]
    assert decoded["train"].paths == [p for p in train.path if p != broken.loc[3, "path"]]
    assert decoded["train"].images.shape == (len(train) - 1, 8, 8, 3)
    (problem,) = decode_problems(decoded)
    assert problem["kind"] == "unreadable_images" and problem["path"] == broken.loc[3, "path"]
    assert "Premature end of JPEG file" in problem["detail"]
    for i, path in enumerate(decoded["train"].paths):  # the rows after the gap are their own images
        row = broken[broken.path == path].iloc[0]
        box = (row.x1, row.y1, row.x2, row.y2)
        np.testing.assert_array_equal(
            decoded["train"].images[i], decode_image(path, box, DecodeSettings(image_size=(8, 8)))
        )
    reopened = build_decoded_cache(
        broken, cache, DecodeSettings(image_size=(8, 8)), chunk_size=4, progress=False, on_error="skip"
    )
    assert cache.events[-1][2] == "loaded" and decode_problems(reopened) == [problem]
