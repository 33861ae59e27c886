"""A learnable stand-in for Stanford Cars, written in the real dataset's exact on-disk layouts.

Each class is a car drawing with its own combination of body shape (sedan,
SUV, pickup...), colour range and, past 88 classes, wheel size, proportions,
stripe and window pillars. Every image puts one instance, jittered within its
class's ranges, on a cluttered street-like background. The real set's quirks
are reproduced: varied image sizes and aspect ratios, a few grayscale JPEGs,
boxes that touch or cross the image border, loose or tight boxes, and the
class ``Ram C/V Cargo Van Minivan 2012`` whose name cannot be a folder name.

Same arguments give byte-identical files: every image draws from its own
generator seeded by ``(seed, split, index)``, so the order the workers run in
does not matter. This module must not import TensorFlow or Keras.
"""

from __future__ import annotations

import colorsys
import csv
import io
import itertools
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from carclf.cache import atomic_write
from carclf.data import folder_name
from carclf.settings import check_positive_int

RAM_CV = "Ram C/V Cargo Van Minivan 2012"
LAYOUTS = ("class-folder", "devkit")
_SPLIT_CODE = {"train": 1, "test": 2}


@dataclass(frozen=True)
class Family:
    """A body shape, in units of the car's length (x from the front, y up from the ground)."""

    name: str
    bodies: tuple  # the body words used in class names
    clear: float  # underside of the body
    belt: float  # top of the lower body (bonnet, doors, boot)
    roof: float | None  # None: no roof (convertible)
    cabin: tuple  # x of windscreen base, roof front, roof rear, rear-glass base
    wheels: tuple  # x of front and rear axle
    radius: float


FAMILIES = (
    Family("sedan", ("Sedan",), 0.07, 0.21, 0.34, (0.28, 0.40, 0.64, 0.80), (0.18, 0.80), 0.075),
    Family("hatchback", ("Hatchback",), 0.08, 0.25, 0.42, (0.24, 0.38, 0.80, 0.97), (0.17, 0.82), 0.085),
    Family("suv", ("SUV",), 0.11, 0.31, 0.50, (0.22, 0.33, 0.96, 0.99), (0.18, 0.80), 0.10),
    Family(
        "pickup",
        ("Crew Cab", "Extended Cab", "Regular Cab"),
        0.10,
        0.28,
        0.45,
        (0.24, 0.32, 0.52, 0.54),
        (0.17, 0.80),
        0.09,
    ),
    Family("coupe", ("Coupe",), 0.06, 0.18, 0.29, (0.30, 0.45, 0.60, 0.90), (0.18, 0.80), 0.07),
    # Index 5, so that class 174 (index 173, 173 % 8 == 5) is a van like the real Ram C/V.
    Family("van", ("Van", "Minivan", "Cargo Van"), 0.07, 0.30, 0.58, (0.05, 0.16, 0.97, 0.99), (0.15, 0.84), 0.075),
    Family("wagon", ("Wagon",), 0.07, 0.22, 0.35, (0.26, 0.38, 0.94, 0.98), (0.18, 0.80), 0.075),
    Family("convertible", ("Convertible",), 0.06, 0.19, None, (0.33, 0.42, 0.0, 0.0), (0.18, 0.80), 0.075),
)

#: (name, hue in degrees or None for greys, saturation range, value range).
COLOURS = (
    ("red", 0, (0.75, 0.95), (0.70, 0.92)),
    ("orange", 28, (0.80, 0.98), (0.85, 1.00)),
    ("yellow", 55, (0.75, 0.95), (0.85, 1.00)),
    ("green", 125, (0.65, 0.90), (0.50, 0.75)),
    ("cyan", 185, (0.70, 0.95), (0.75, 0.95)),
    ("blue", 228, (0.75, 0.95), (0.55, 0.85)),
    ("purple", 275, (0.55, 0.80), (0.50, 0.75)),
    ("pink", 325, (0.45, 0.70), (0.85, 1.00)),
    ("white", None, (0.00, 0.06), (0.90, 0.98)),
    ("black", None, (0.00, 0.10), (0.08, 0.18)),
    # Last, so the default 10 classes (which use the first 10 colours) have only
    # two greys, far apart.
    ("grey", None, (0.00, 0.06), (0.48, 0.60)),
)

# Past len(FAMILIES) * len(COLOURS) classes (8 and 11 are coprime, so k -> (k % 8, k % 11)
# is one-to-one below 88) a class also differs in these: wheel scale, height scale,
# stripe, number of window pillars.
_VARIANT_AXES = ((1.0, 1.3, 0.8), (1.0, 0.84, 1.18), (False, True), (1, 2))


def _variant_order():
    """Every variant combination, each next one as unlike the ones before as possible."""
    pool = list(itertools.product(*(range(len(a)) for a in _VARIANT_AXES)))
    order = [pool.pop(0)]
    while pool:
        best = max(pool, key=lambda v: (min(sum(a != b for a, b in zip(v, u)) for u in order), -pool.index(v)))
        pool.remove(best)
        order.append(best)
    return order


_VARIANTS = _variant_order()
MAX_CLASSES = len(FAMILIES) * len(COLOURS) * len(_VARIANTS)

_MAKES = (
    "Acura",
    "Aston Martin",
    "Audi",
    "BMW",
    "Bentley",
    "Buick",
    "Cadillac",
    "Chevrolet",
    "Chrysler",
    "Dodge",
    "Ferrari",
    "Fiat",
    "Ford",
    "GMC",
    "Honda",
    "Hyundai",
    "Infiniti",
    "Isuzu",
    "Jaguar",
    "Jeep",
    "Kia",
    "Lamborghini",
    "Land Rover",
    "Lincoln",
    "Mazda",
    "Mercedes-Benz",
    "Mitsubishi",
    "Nissan",
    "Porsche",
    "Rolls-Royce",
    "Scion",
    "Suzuki",
    "Toyota",
    "Volkswagen",
    "Volvo",
    "Spyker",
    "Hummer",
)
_SYLLABLES_A = (
    "Al",
    "Bre",
    "Cor",
    "Dar",
    "El",
    "Fal",
    "Gran",
    "Hor",
    "Ix",
    "Jet",
    "Kor",
    "Lu",
    "Mon",
    "Nov",
    "Ori",
    "Pra",
    "Qua",
)
_SYLLABLES_B = ("ado", "ber", "cia", "don", "ento", "far", "go", "lant", "mira", "nix", "ra", "sto", "vel")


@dataclass(frozen=True)
class CarClass:
    """What makes one synthetic class: its name and its drawing's attributes."""

    index: int  # 0-based class id
    name: str
    family: Family
    colour: tuple  # an entry of COLOURS
    wheel: float
    height: float
    stripe: bool
    pillars: int


def class_table(n_classes: int) -> list:
    """The ``n_classes`` synthetic classes; class ``k`` is the same for any ``n_classes > k``
    except for the one renamed ``Ram C/V Cargo Van Minivan 2012`` (the 174th, or the last)."""
    if not 1 <= n_classes <= MAX_CLASSES:
        raise ValueError(f"n_classes must be in 1..{MAX_CLASSES}, got {n_classes}")
    ram = 173 if n_classes >= 174 else n_classes - 1
    table = []
    for k in range(n_classes):
        family = FAMILIES[k % len(FAMILIES)]
        variant = _VARIANTS[k // (len(FAMILIES) * len(COLOURS))]
        wheel, height, stripe, pillars = (axis[i] for axis, i in zip(_VARIANT_AXES, variant))
        # (k % 17, k // 17) fixes k below 221 and 5 is coprime to 13, so the model
        # word is unique per k, which keeps every name distinct.
        model = _SYLLABLES_A[k % 17] + _SYLLABLES_B[(5 * (k // 17) + k) % 13]
        if k >= 17 * 13:
            model += f" {k // (17 * 13) + 1}"
        body = family.bodies[(k // len(FAMILIES)) % len(family.bodies)]
        name = f"{_MAKES[(k * 5) % len(_MAKES)]} {model} {body} {1991 + (k * 7) % 22}"
        table.append(
            CarClass(k, RAM_CV if k == ram else name, family, COLOURS[k % len(COLOURS)], wheel, height, stripe, pillars)
        )
    return table


# --------------------------------------------------------------------------- geometry


def _quirk_slot(split: str, index: int, seed: int, salt: int) -> int:
    """A 0..99 slot; each run of 100 images takes every slot once, so rates hold exactly."""
    return (index * salt + _SPLIT_CODE[split] * 31 + seed * 17) % 100


def _car_ops(cls: CarClass, rng):
    """Drawing operations for one car, in car units, jittered within the class's ranges."""
    fam = cls.family
    hs = cls.height * rng.uniform(0.95, 1.05)
    radius = fam.radius * cls.wheel * rng.uniform(0.93, 1.07)
    clear, belt = fam.clear * hs, fam.belt * hs
    ops = [
        (
            "poly",
            "body",
            [
                (0.0, clear + 0.02 * hs),
                (0.0, belt - 0.04 * hs),
                (0.04, belt),
                (0.96, belt),
                (1.0, belt - 0.03 * hs),
                (1.0, clear + 0.02 * hs),
                (0.97, clear),
                (0.03, clear),
            ],
        )
    ]
    ws0, ws1, re0, re1 = (x + rng.uniform(-0.01, 0.01) for x in fam.cabin)
    if fam.roof is not None:
        roof = fam.roof * hs
        e, d = 0.025 * hs, 0.025
        ops.append(("poly", "body", [(ws0, belt), (ws1, roof), (re0, roof), (re1, belt)]))
        ops.append(
            (
                "poly",
                "window",
                [(ws0 + 2 * d, belt + e), (ws1 + d, roof - e), (re0 - d, roof - e), (re1 - 2 * d, belt + e)],
            )
        )
        for p in range(1, cls.pillars + 1):
            x = ws1 + (re0 - ws1) * p / (cls.pillars + 1)
            ops.append(("line", "body", [(x, belt), (x, roof)], 0.025))
    else:
        top = belt + 0.09 * hs
        ops.append(("poly", "window", [(ws0, belt), (ws0 + 0.03, belt), (ws1 + 0.03, top), (ws1, top)]))
        for p in range(cls.pillars):
            ops.append(("circle", "seat", (0.55 + 0.13 * p, belt + 0.035 * hs), 0.035))
    if fam.name == "pickup":
        ops.append(("line", "shade", [(re1 + 0.03, belt - 0.01), (0.97, belt - 0.01)], 0.02))
    if cls.stripe:
        y = (clear + belt) / 2
        ops.append(("line", "stripe", [(0.03, y), (0.97, y)], 0.03 * hs))
    ops.append(
        (
            "poly",
            "headlight",
            [(0.0, belt - 0.07 * hs), (0.035, belt - 0.07 * hs), (0.035, belt - 0.035 * hs), (0.0, belt - 0.035 * hs)],
        )
    )
    ops.append(
        (
            "poly",
            "taillight",
            [(0.97, belt - 0.07 * hs), (1.0, belt - 0.07 * hs), (1.0, belt - 0.035 * hs), (0.97, belt - 0.035 * hs)],
        )
    )
    for x in fam.wheels:
        x += rng.uniform(-0.015, 0.015)
        ops.append(("circle", "arch", (x, radius * 1.12), radius * 1.12))  # a wheel well, down to the ground
        ops.append(("circle", "tyre", (x, radius), radius))
        ops.append(("circle", "rim", (x, radius), radius * 0.55))
        ops.append(("circle", "hub", (x, radius), radius * 0.18))
    return ops


def _points(op):
    if op[0] == "circle":
        (x, y), r = op[2], op[3]
        return [(x - r, y - r), (x + r, y + r)]
    return list(op[2])


@dataclass
class _Plan:
    """Everything about one image that decides its annotation (cheap to recompute on resume)."""

    width: int
    height: int
    ops: list  # drawing operations in pixels
    scale: float  # pixels per car length
    box: tuple  # x1, y1, x2, y2 as annotated


def _plan(cls: CarClass, split: str, index: int, seed: int, size_range) -> _Plan:
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 0])
    lo, hi = size_range
    width = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    height = max(16, int(round(width * rng.uniform(0.5, 1.0))))
    ops = _car_ops(cls, rng)
    pts = np.array([p for op in ops for p in _points(op)])
    top = pts[:, 1].max()
    length = min(width * rng.uniform(0.55, 0.9), 0.75 * height / top)
    car_h = top * length

    slot = _quirk_slot(split, index, seed, 37)
    out_side = None  # car partly out of frame: 5% of images, 2% with a box past the border
    if slot < 5:
        out_side = ("right", "bottom")[index % 2] if slot < 2 else ("left", "right", "bottom")[index % 3]
    # Margins wide enough that a loose box on a tilted car stays inside: only the
    # out-of-frame quirk should make boxes touch the border.
    margin_x, margin_y = 0.05 * width, 0.08 * height
    left = rng.uniform(margin_x, max(margin_x, width - length - margin_x))
    ground = rng.uniform(min(car_h + margin_y, height - margin_y), height - margin_y)
    out = rng.uniform(0.08, 0.25)
    if out_side == "left":
        left = -out * length
    elif out_side == "right":
        left = width - (1 - out) * length
    elif out_side == "bottom":
        ground = height + out * car_h
    flip = rng.random() < 0.5
    angle = math.radians(rng.uniform(-3, 3))
    cx, cy = left + length / 2, ground - car_h / 2
    cos, sin = math.cos(angle), math.sin(angle)

    def to_px(x, y):
        px, py = left + (1 - x if flip else x) * length, ground - y * length
        return (cx + (px - cx) * cos - (py - cy) * sin, cy + (px - cx) * sin + (py - cy) * cos)

    px_ops = []
    for op in ops:
        if op[0] == "circle":
            px_ops.append(("circle", op[1], to_px(*op[2]), op[3] * length))
        elif op[0] == "poly":
            px_ops.append(("poly", op[1], [to_px(*p) for p in op[2]]))
        else:
            px_ops.append(("line", op[1], [to_px(*p) for p in op[2]], op[3] * length))
    px_pts = np.array([p for op in px_ops for p in _points(op)])
    x1, y1 = np.maximum(px_pts.min(axis=0), 0)
    x2, y2 = np.minimum(px_pts.max(axis=0), (width, height))

    # Loose or tight by a few percent per side, as the real boxes are.
    bw, bh = x2 - x1, y2 - y1
    grow = rng.uniform(-0.03, 0.05, size=4) * (bw, bh, bw, bh)
    box = [int(round(v)) for v in (x1 - grow[0], y1 - grow[1], x2 + grow[2], y2 + grow[3])]
    box = [
        min(max(box[0], 0), width),
        min(max(box[1], 0), height),
        min(max(box[2], 0), width),
        min(max(box[3], 0), height),
    ]
    if out_side is not None:
        side = {"left": 0, "right": 2, "bottom": 3}[out_side]
        box[side] = {0: 0, 2: width, 3: height}[side]
        if slot < 2:
            box[side] += int(rng.integers(1, 7))  # the real annotations overshoot by a few pixels
    return _Plan(width, height, px_ops, length, tuple(box))


# --------------------------------------------------------------------------- rendering


def _bgr(h, s, v):
    r, g, b = colorsys.hsv_to_rgb((h % 360) / 360, min(max(s, 0), 1), min(max(v, 0), 1))
    return (int(b * 255), int(g * 255), int(r * 255))


def _muted(rng, vmin=0.25, vmax=0.95, smax=0.35):
    return _bgr(rng.uniform(0, 360), rng.uniform(0, smax), rng.uniform(vmin, vmax))


def _background(rng, width, height):
    """A street-like scene: sky and road gradients, buildings, lines, blobs."""
    horizon = max(1, int(height * rng.uniform(0.3, 0.7)))
    img = np.empty((height, width, 3), np.uint8)
    for rows, (a, b) in (
        (slice(0, horizon), (_muted(rng, 0.6), _muted(rng, 0.6))),
        (slice(horizon, height), (_muted(rng, 0.25, 0.6, 0.12), _muted(rng, 0.25, 0.6, 0.12))),
    ):
        n = len(range(height)[rows])
        t = np.linspace(0, 1, max(n, 1), dtype=np.float32)[:n, None]
        img[rows] = (np.float32(a) * (1 - t) + np.float32(b) * t).astype(np.uint8)[:, None, :]
    for _ in range(rng.integers(1, 6)):
        bx, bw = rng.uniform(-0.1, 1) * width, rng.uniform(0.08, 0.3) * width
        bh = rng.uniform(0.2, 0.95) * horizon
        cv2.rectangle(img, (int(bx), int(horizon - bh)), (int(bx + bw), horizon), _muted(rng), -1)
    for _ in range(rng.integers(3, 12)):
        p0 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        p1 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        cv2.line(img, p0, p1, _muted(rng, 0.1, 1.0, 0.5), int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(rng.integers(0, 4)):
        centre = (int(rng.uniform(0, width)), int(rng.uniform(0, horizon)))
        cv2.circle(img, centre, int(rng.uniform(0.02, 0.08) * width) + 1, _muted(rng, 0.15, 0.6, 0.45), -1, cv2.LINE_AA)
    if rng.random() < 0.6:
        y, step = int(horizon + (height - horizon) * rng.uniform(0.3, 0.8)), max(8, int(width * 0.12))
        for x in range(int(rng.uniform(0, step)), width, step):
            cv2.rectangle(img, (x, y), (x + step // 2, y + max(1, height // 80)), (225, 225, 225), -1)
    return img


def _car_colours(cls: CarClass, rng):
    _, hue, sat, val = cls.colour
    s, v = rng.uniform(*sat), rng.uniform(*val)
    body = _bgr((hue or 0) + rng.uniform(-6, 6), s, v)
    return {
        "body": body,
        "outline": tuple(int(c * 0.55) for c in body),
        "stripe": (235, 235, 235) if v < 0.55 else (30, 30, 30),
        "window": _bgr(rng.uniform(190, 230), rng.uniform(0.2, 0.4), rng.uniform(0.2, 0.35)),
        "shade": (40, 40, 40),
        "seat": (45, 45, 45),
        "headlight": (210, 245, 255),
        "taillight": (40, 40, 210),
        "arch": (20, 20, 20),
        "tyre": (28, 28, 28),
        "rim": _bgr(0, 0, rng.uniform(0.55, 0.8)),
        "hub": (90, 90, 90),
    }


def _draw(img, plan: _Plan, colours):
    shift = 3  # sub-pixel coordinates, so small cars keep their shape

    def fixed(p):
        return (int(round(p[0] * 8)), int(round(p[1] * 8)))

    outline = max(1, int(plan.scale / 150))
    for op in plan.ops:
        colour = colours[op[1]]
        if op[0] == "poly":
            pts = np.array([fixed(p) for p in op[2]], np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA, shift)
            if op[1] == "body":
                cv2.polylines(img, [pts], True, colours["outline"], outline, cv2.LINE_AA, shift)
        elif op[0] == "circle":
            cv2.circle(img, fixed(op[2]), max(8, int(round(op[3] * 8))), colour, -1, cv2.LINE_AA, shift)
        else:
            cv2.line(img, fixed(op[2][0]), fixed(op[2][1]), colour, max(1, int(round(op[3]))), cv2.LINE_AA, shift)


def _render(cls: CarClass, plan: _Plan, split: str, index: int, seed: int) -> bytes:
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index, 1])
    img = _background(rng, plan.width, plan.height)
    _draw(img, plan, _car_colours(cls, rng))
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(2, 7))
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    if _quirk_slot(split, index, seed, 61) < 3:  # 3% grayscale, as a few real images are
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    # imencode + our own write (rather than imwrite) for the atomic rename, and
    # because imwrite cannot take non-ASCII paths on Windows. Same encoder, same bytes.
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(80, 96))])
    if not ok:
        raise RuntimeError(f"cv2 could not encode synthetic image {split} {index}")
    return buf.tobytes()


# --------------------------------------------------------------------------- writing


def _csv_bytes(rows) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode("utf-8")


def _mat_bytes(variables: dict) -> bytes:
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, variables)
    data = bytearray(buf.getvalue())
    # savemat stamps the current time into the 116-byte header; a fixed text keeps runs byte-identical.
    data[:116] = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: carclf.synthetic".ljust(116, b" ")
    return bytes(data)


def _uint(value: int):
    # loadmat gives the real files' numbers as the smallest unsigned type that holds them.
    return np.array([[value]], dtype=np.uint8 if 0 <= value < 256 else np.uint16 if 0 <= value < 65536 else np.int32)


def _mat_annotations(records) -> np.ndarray:
    keys = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    out = np.empty((1, len(records)), dtype=[(k, object) for k in keys])
    for i, (fname, box, cid) in enumerate(records):
        for key, value in zip(keys[:4], box):
            out[key][0, i] = _uint(value)
        out["class"][0, i] = _uint(cid)
        out["fname"][0, i] = np.array([fname])
    return out


_MARKER = ".carclf-synthetic.json"


def _claim(root: Path, arguments: dict):
    """Record what is being made in ``root``, refusing a folder that holds something else.

    Resuming skips the images already there, so resuming with other arguments
    would mix two sets; and writing into a real dataset would overwrite its
    annotations.
    """
    marker = root / _MARKER
    if marker.is_file():
        before = json.loads(marker.read_text())
        if before != arguments:
            raise ValueError(
                f"{root} holds a synthetic set made with {before}, not {arguments}: "
                f"use another folder, or delete this one first"
            )
        return
    if root.is_dir() and any(
        (root / n).exists() for n in ("names.csv", "anno_train.csv", "car_data", "cars_train", "devkit")
    ):
        raise ValueError(
            f"{root} holds a dataset that make_synthetic did not write ({_MARKER} is missing): "
            f"refusing to overwrite it; use another folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, json.dumps(arguments, sort_keys=True).encode())


def make_synthetic(
    root,
    n_classes: int = 10,
    per_class_train: int = 24,
    per_class_test: int = 12,
    seed: int = 0,
    layout: str = "class-folder",
    size_range=(96, 640),
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write a synthetic Stanford Cars set under ``root`` in the given layout, and return ``root``.

    ``layout`` is ``"class-folder"`` (the Kaggle copy) or ``"devkit"`` (the
    Stanford release). Images already on disk are kept, so an interrupted run
    resumes (with the same arguments only: a hidden ``.carclf-synthetic.json``
    records them); the annotation files are written last. ``workers`` threads draw
    the images (default: one per CPU).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    check_positive_int("per_class_train", per_class_train)
    check_positive_int("per_class_test", per_class_test)
    lo, hi = size_range
    if not 16 <= lo <= hi:
        raise ValueError(f"size_range must be (min, max) widths with 16 <= min <= max, got {size_range}")
    root = Path(root)
    table = class_table(n_classes)
    _claim(
        root,
        {
            "n_classes": n_classes,
            "per_class_train": per_class_train,
            "per_class_test": per_class_test,
            "seed": seed,
            "layout": layout,
            "size_range": [lo, hi],
        },
    )

    jobs = []
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        # Classes shuffled over file numbers, as in the real set; its own generator keeps
        # the assignment independent of the images.
        ids = np.random.default_rng([seed, _SPLIT_CODE[split]]).permutation(np.repeat(np.arange(n_classes), per_class))
        for index, cid in enumerate(ids):
            name = f"{index + 1:05d}.jpg"
            if layout == "devkit":
                path = root / f"cars_{split}" / name
            else:
                path = root / "car_data" / "car_data" / split / folder_name(table[cid].name) / name
            jobs.append((split, index, int(cid), path))
    for folder in sorted({job[3].parent for job in jobs}):
        folder.mkdir(parents=True, exist_ok=True)

    def make_one(job):
        split, index, cid, path = job
        plan = _plan(table[cid], split, index, seed, size_range)
        if not path.exists():
            atomic_write(path, _render(table[cid], plan, split, index, seed))
        return split, path.name, plan.box, cid + 1

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        results = list(
            tqdm(
                pool.map(make_one, jobs), total=len(jobs), disable=not progress, desc=f"synthetic {layout}", unit="img"
            )
        )

    names = [c.name for c in table]
    if layout == "class-folder":
        atomic_write(root / "names.csv", _csv_bytes([n] for n in names))
        for split in ("train", "test"):
            rows = [(f, *box, cid) for s, f, box, cid in results if s == split]
            atomic_write(root / f"anno_{split}.csv", _csv_bytes(rows))
    else:
        (root / "devkit").mkdir(exist_ok=True)
        cells = np.empty((1, n_classes), dtype=object)
        cells[0, :] = names
        atomic_write(root / "devkit" / "cars_meta.mat", _mat_bytes({"class_names": cells}))
        for split, target in (
            ("train", root / "devkit" / "cars_train_annos.mat"),
            ("test", root / "cars_test_annos_withlabels.mat"),
        ):
            records = [(f, box, cid) for s, f, box, cid in results if s == split]
            atomic_write(target, _mat_bytes({"annotations": _mat_annotations(records)}))
    return root
