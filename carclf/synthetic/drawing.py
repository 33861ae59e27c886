"""Drawing one synthetic image: a car of its class on a street-like background, with the real set's quirks."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np

from carclf.synthetic.classes import CarClass

#: A number per split for the seeds of its images.
SPLIT_CODE = {"train": 1, "test": 2}


def quirk_slot(split: str, index: int, seed: int, salt: int) -> int:
    """A 0..99 slot; each run of 100 images takes every slot once, so rates hold exactly."""
    return (index * salt + SPLIT_CODE[split] * 31 + seed * 17) % 100


def _car_ops(cls: CarClass, rng):
    """Drawing operations for one car, in car units, jittered within the class's ranges.

    One list, part by part in drawing order (body, cabin, windows, wheels, lights): kept whole so that the
    car's geometry reads in one place, which is why it runs past a screen.
    """
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


def plan(cls: CarClass, split: str, index: int, seed: int, size_range) -> _Plan:
    """Where one image's car goes: the image size, the car's pixels and its (loose or tight) annotated box.

    The real set's quirks are drawn here, each at its exact rate (:func:`quirk_slot`), which is why it runs
    past a screen: one step per quirk, in order.
    """
    rng = np.random.default_rng([seed, SPLIT_CODE[split], index, 0])
    lo, hi = size_range
    width = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    height = max(16, int(round(width * rng.uniform(0.5, 1.0))))
    ops = _car_ops(cls, rng)
    pts = np.array([p for op in ops for p in _points(op)])
    top = pts[:, 1].max()
    length = min(width * rng.uniform(0.55, 0.9), 0.75 * height / top)
    car_h = top * length

    slot = quirk_slot(split, index, seed, 37)
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


def render(cls: CarClass, plan: _Plan, split: str, index: int, seed: int) -> bytes:
    rng = np.random.default_rng([seed, SPLIT_CODE[split], index, 1])
    img = _background(rng, plan.width, plan.height)
    _draw(img, plan, _car_colours(cls, rng))
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(2, 7))
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    if quirk_slot(split, index, seed, 61) < 3:  # 3% grayscale, as a few real images are
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    # imencode + our own write (rather than imwrite) for the atomic rename, and
    # because imwrite cannot take non-ASCII paths on Windows. Same encoder, same bytes.
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(80, 96))])
    if not ok:
        raise RuntimeError(f"cv2 could not encode synthetic image {split} {index}")
    return buf.tobytes()
