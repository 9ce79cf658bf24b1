"""The embedded default dataset: procedurally drawn objects written in the exact SPair-71k, PF-Pascal and
PF-Willow layouts, so every loader, notebook and test runs without downloading anything.

Every image shows one *instance* of a category: a canonical part layout (see :data:`KEYPOINT_NAMES`) with random
proportions, colours, textures (stripes, dots, checks, noise), scale, rotation (±25°), position and background
(gradient, noise, clutter), on a canvas of random size (W, H in 200..320, not square). A pair is two different
instances of the same category, so matching it is semantic, not the inversion of a warp. Some instances are
truncated by the frame or occluded by a blob; their hidden keypoints are ``null`` / NaN and only keypoints visible
in both images enter a pair (SPair rule), so pairs have different keypoint counts.

Everything is deterministic: image ``i`` of category ``c`` of dataset ``d`` is drawn from its own
``numpy.random.default_rng([seed, d, c, i])``, files are written with fixed formatting (the MAT-file header's
timestamp included), and each dataset folder is built in a temporary sibling and renamed into place.
"""

from __future__ import annotations

import colorsys
import csv
import inspect
import io
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

GENERATOR_VERSION = 2
SYNTHETIC_CATEGORIES: tuple[str, ...] = ("aeroplane", "boat", "bottle", "car", "chair", "motorbike", "pottedplant",
                                         "tvmonitor")
#: Keypoint names per category, in annotation order (index ``k`` of ``kps`` is ``KEYPOINT_NAMES[cat][k]``).
KEYPOINT_NAMES: dict[str, list[str]] = {
    "bottle": ["cap_top", "cap_left", "cap_right", "neck_left", "neck_right", "shoulder_left", "shoulder_right",
               "label_centre", "base_left", "base_right", "base_centre"],
    "car": ["front_wheel", "rear_wheel", "front_bumper", "rear_bumper", "hood_front", "windshield_bottom",
            "roof_front", "roof_rear", "rear_window_bottom", "trunk_rear", "headlight", "taillight"],
    "motorbike": ["front_wheel", "rear_wheel", "front_wheel_top", "rear_wheel_top", "fork_top", "handlebar_end",
                  "headlight", "seat_front", "seat_rear", "engine", "exhaust_tip"],
    "aeroplane": ["nose", "tail_end", "fin_top", "fin_base_front", "wing_root_front", "wing_root_rear", "wing_tip",
                  "cockpit", "engine", "stabilizer_tip", "belly"],
    "boat": ["bow_top", "stern_top", "bow_bottom", "stern_bottom", "mast_top", "mast_base", "sail_corner",
             "cabin_top_front", "cabin_top_rear", "window"],
    "chair": ["back_top_rear", "back_top_front", "seat_front", "seat_rear", "front_leg_bottom", "rear_leg_bottom",
              "far_front_leg_bottom", "far_rear_leg_bottom", "seat_centre", "back_centre"],
    "pottedplant": ["rim_left", "rim_right", "base_left", "base_right", "stem_base", "top_leaf_tip",
                    "left_leaf_tip", "right_leaf_tip", "flower", "pot_centre"],
    "tvmonitor": ["frame_top_left", "frame_top_right", "frame_bottom_right", "frame_bottom_left",
                  "screen_top_left", "screen_top_right", "screen_bottom_right", "screen_bottom_left",
                  "stand_top", "stand_bottom", "base_left", "base_right"],
}
#: Real PF-Willow sub-classes drawn for each synthetic category (PF-Willow uses the first 10 keypoints).
WILLOW_SUBCLASSES: dict[str, tuple[str, ...]] = {
    "bottle": ("winebottle(M)", "winebottle(wC)", "winebottle(woC)"),
    "car": ("car(G)", "car(M)", "car(S)"),
    "motorbike": ("motorbike(G)", "motorbike(M)", "motorbike(S)"),
}
DEFAULT_PAIRS_PER_SPLIT = {"trn": 60, "val": 24, "test": 36}
SPLITS = ("trn", "val", "test")
FOLDERS = {"spair": "SPair-71k", "pfpascal": "PF-Pascal", "pfwillow": "PF-Willow"}
#: Random streams: one per written dataset, plus streams no written split ever uses (the embedded model's
#: pre-training images and the held-out pairs that choose its read-out layer).
_DATASET_CODE = {"spair": 1, "pfpascal": 2, "pfwillow": 3, "pretrain": 9, "selection": 10}
_NAME_BASE = {"spair": 0, "pfpascal": 300000, "pfwillow": 600000}
_PFPASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# ---------------------------------------------------------------------------------------------------------------
# Canonical shapes: (parts, kps) in object units, y pointing down. parts = [(points (M, 2), role)], drawn in order.
# ---------------------------------------------------------------------------------------------------------------


def _rect(x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _bar(p0, p1, half_width: float) -> np.ndarray:
    """A thick segment from ``p0`` to ``p1`` as a 4-point polygon."""
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-12) * half_width
    return np.array([p0 + n, p1 + n, p1 - n, p0 - n])


def _bezier(p0, p1, p2, n: int = 8) -> list[tuple[float, float]]:
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t ** 2 * np.asarray(p2)
    return [tuple(p) for p in pts]


def _bottle(rng: np.random.Generator):
    bw, nw = rng.uniform(0.28, 0.45), rng.uniform(0.08, 0.14)
    cw, ch = nw + rng.uniform(0.01, 0.04), rng.uniform(0.08, 0.16)
    y_cap = -1 + ch
    y_neck = y_cap + rng.uniform(0.2, 0.45)
    y_sh = y_neck + rng.uniform(0.12, 0.3)
    left = [(-nw, y_cap)] + _bezier((-nw, y_neck), (-bw, y_neck), (-bw, y_sh)) + [(-bw, 1.0)]
    body = np.array(left + [(-x, y) for x, y in reversed(left)])
    lh = rng.uniform(0.3, 0.55) * (1 - y_sh)
    lcy = rng.uniform(y_sh + lh / 2 + 0.05, 1 - lh / 2 - 0.05)
    parts = [(body, "body"), (_rect(-0.85 * bw, lcy - lh / 2, 0.85 * bw, lcy + lh / 2), "label"),
             (_rect(-cw, -1, cw, y_cap), "accent")]
    kps = [(0, -1), (-cw, y_cap), (cw, y_cap), (-nw, y_neck), (nw, y_neck), (-bw, y_sh), (bw, y_sh), (0, lcy),
           (-bw, 1), (bw, 1), (0, 1)]
    return parts, np.array(kps, dtype=np.float64)


def _car(rng: np.random.Generator):
    body_h, cabin_h, r = rng.uniform(0.26, 0.38), rng.uniform(0.2, 0.32), rng.uniform(0.13, 0.19)
    y_bot = 0.2
    y_top, hood_drop = y_bot - body_h, rng.uniform(0.0, 0.08)
    y_roof = y_top - cabin_h
    x_wb = rng.uniform(0.2, 0.45)
    x_rf = x_wb - rng.uniform(0.18, 0.32)
    x_rr = rng.uniform(-0.6, -0.3)
    x_rwb = max(x_rr - rng.uniform(0.05, 0.3), -0.92)
    wx_f, wx_r = rng.uniform(0.52, 0.7), -rng.uniform(0.52, 0.7)
    cabin = np.array([(x_rwb, y_top), (x_rr, y_roof), (x_rf, y_roof), (x_wb, y_top)])
    centre = cabin.mean(axis=0)
    window = centre + 0.72 * (cabin - centre) + np.array([0, 0.02])
    pillar = _bar(((x_rr + x_rf) / 2, y_roof), ((x_rwb + x_wb) / 2, y_top), 0.03)
    head = (0.93, y_top + hood_drop + 0.3 * body_h)
    tail = (-0.95, y_top + 0.3 * body_h)
    parts = [(cabin, "body"), (np.array([(-1, y_top), (x_wb, y_top), (1, y_top + hood_drop), (1, y_bot),
                                         (-1, y_bot)]), "body"),
             (window, "glass"), (pillar, "accent")]
    for wx in (wx_r, wx_f):
        parts += [(_ellipse(wx, y_bot, r, r), "dark"), (_ellipse(wx, y_bot, 0.55 * r, 0.55 * r), "metal")]
    parts += [(_ellipse(*head, 0.06, 0.045), "light"), (_ellipse(*tail, 0.04, 0.055), "red")]
    kps = [(wx_f, y_bot), (wx_r, y_bot), (1, y_bot - 0.2 * body_h), (-1, y_bot - 0.2 * body_h),
           (1, y_top + hood_drop), (x_wb, y_top), (x_rf, y_roof), (x_rr, y_roof), (x_rwb, y_top), (-1, y_top),
           head, tail]
    return parts, np.array(kps, dtype=np.float64)


def _motorbike(rng: np.random.Generator):
    r, wx, yw = rng.uniform(0.24, 0.32), rng.uniform(0.6, 0.75), 0.35
    rear, front = np.array([-wx, yw]), np.array([wx, yw])
    head = np.array([wx - rng.uniform(0.12, 0.22), yw - rng.uniform(0.6, 0.8)])
    bar_end = head + np.array([-rng.uniform(0.05, 0.2), -rng.uniform(0.1, 0.2)])
    seat_front = np.array([rng.uniform(-0.15, 0.05), yw - rng.uniform(0.5, 0.65)])
    seat_rear = seat_front + np.array([-rng.uniform(0.35, 0.5), -rng.uniform(0.0, 0.08)])
    engine = np.array([rng.uniform(-0.1, 0.1), yw - rng.uniform(0.15, 0.25)])
    exhaust_tip = np.array([-wx - rng.uniform(0.05, 0.2), yw - rng.uniform(0.0, 0.12)])
    light = head + np.array([rng.uniform(0.08, 0.14), rng.uniform(0.05, 0.12)])
    tank = np.array([seat_front, head + (-0.05, 0.05), head + (-0.12, 0.25), seat_front + (0, 0.2)])
    parts = []
    for c in (rear, front):
        parts += [(_ellipse(*c, r, r), "dark"), (_ellipse(*c, 0.6 * r, 0.6 * r), "metal")]
    parts += [(_bar(engine + (-0.1, 0.08), exhaust_tip, 0.035), "metal"),
              (np.array([rear, seat_rear + (0, 0.08), head, engine + (0.05, 0.15)]), "accent"),
              (_rect(*(engine - (0.15, 0.12)), *(engine + (0.15, 0.12))), "metal"),
              (tank, "body"), (_bar(seat_rear, seat_front, 0.05), "dark"), (_bar(head, front, 0.035), "metal"),
              (_bar(head, bar_end, 0.025), "dark"), (_ellipse(*light, 0.065, 0.065), "light")]
    kps = [front, rear, front - (0, r), rear - (0, r), head, bar_end, light, seat_front, seat_rear, engine,
           exhaust_tip]
    return parts, np.array(kps, dtype=np.float64)


def _tvmonitor(rng: np.random.Generator):
    h, b = rng.uniform(0.5, 0.8), rng.uniform(0.05, 0.12)
    hs, nw = rng.uniform(0.1, 0.25), rng.uniform(0.06, 0.14)
    bw, bh = rng.uniform(0.3, 0.6), rng.uniform(0.05, 0.09)
    parts = [(_rect(-nw, h, nw, h + hs), "accent"), (_rect(-bw, h + hs, bw, h + hs + bh), "accent"),
             (_rect(-1, -h, 1, h), "body"), (_rect(-1 + b, -h + b, 1 - b, h - b), "screen")]
    kps = [(-1, -h), (1, -h), (1, h), (-1, h), (-1 + b, -h + b), (1 - b, -h + b), (1 - b, h - b), (-1 + b, h - b),
           (0, h), (0, h + hs), (-bw, h + hs + bh), (bw, h + hs + bh)]
    return parts, np.array(kps, dtype=np.float64)


def _aeroplane(rng: np.random.Generator):
    fh, wx = rng.uniform(0.1, 0.17), rng.uniform(-0.1, 0.2)
    sweep, span = rng.uniform(0.2, 0.45), rng.uniform(0.35, 0.55)
    fin_h, fin_w = rng.uniform(0.35, 0.6), rng.uniform(0.2, 0.35)
    nose, tail = np.array([1.0, 0.0]), np.array([-1.0, -0.6 * fh])
    top = _bezier((0.7, -fh), (0.95, -fh), nose) + [(-1.0, -fh), tail]
    bottom = [(-0.85, 0.4 * fh), (0.7, fh)] + _bezier((0.95, fh), (1.0, 0.5 * fh), nose, 4)
    fuselage = np.array(top[:-2][::-1] + [(-1.0, -fh), tail] + bottom[:-1])
    root_f, root_r = np.array([wx + 0.2, 0.3 * fh]), np.array([wx - 0.15, 0.3 * fh])
    tip = np.array([wx - sweep, 0.3 * fh + span])
    wing = np.array([root_f, root_r, tip + (-0.1, 0), tip + (0.08, 0)])
    fin_base = np.array([-1.0 + fin_w, -fh])
    fin_top = np.array([-0.98, -fh - fin_h])
    fin = np.array([(-1.0, -fh), fin_base, fin_top + (0.06, 0), fin_top])
    stab_tip = np.array([-0.95, 0.1 + rng.uniform(0.05, 0.2)])
    stab = np.array([(-0.7, 0.0), (-0.92, -0.02), stab_tip, stab_tip + (0.12, 0)])
    engine = np.array([wx - 0.1, 0.3 * fh + 0.4 * span])
    cockpit = np.array([0.8, -0.55 * fh])
    parts = [(wing, "accent"), (stab, "accent"), (fuselage, "body"), (fin, "accent"),
             (_ellipse(*engine, 0.12, 0.05), "metal"), (_ellipse(*cockpit, 0.09, 0.045), "glass")]
    kps = [nose, tail, fin_top, fin_base, root_f, root_r, tip, cockpit, engine, stab_tip, (0.0, fh)]
    return parts, np.array(kps, dtype=np.float64)


def _boat(rng: np.random.Generator):
    bow_h, depth = rng.uniform(0.05, 0.2), rng.uniform(0.25, 0.4)
    bow_b, stern_b = rng.uniform(0.55, 0.8), -rng.uniform(0.75, 0.9)
    c0, c1 = rng.uniform(-0.7, -0.3), rng.uniform(-0.1, 0.25)
    ch, mx, mh = rng.uniform(0.15, 0.3), rng.uniform(-0.1, 0.3), rng.uniform(0.7, 1.0)
    sail_w = rng.uniform(0.35, 0.6)
    hull = np.array([(-1.0, 0.0), (1.0, -bow_h), (bow_b, depth), (stern_b, depth)])
    cabin = _rect(c0, -ch, c1, 0.0)
    window = np.array([(c0 + c1) / 2, -ch / 2])
    sail = np.array([(mx + 0.03, -mh), (mx + 0.03, -ch - 0.05), (mx + 0.03 + sail_w, -ch - 0.05)])
    parts = [(sail, "label"), (_bar((mx, 0.0), (mx, -mh), 0.025), "dark"), (cabin, "accent"), (hull, "body"),
             (_ellipse(*window, 0.05, 0.04), "glass")]
    kps = [(1.0, -bow_h), (-1.0, 0.0), (bow_b, depth), (stern_b, depth), (mx, -mh), (mx, 0.0),
           (mx + 0.03 + sail_w, -ch - 0.05), (c1, -ch), (c0, -ch), window]
    return parts, np.array(kps, dtype=np.float64)


def _chair(rng: np.random.Generator):
    sw, st = rng.uniform(0.4, 0.6), rng.uniform(0.06, 0.12)
    bh, lean = rng.uniform(0.6, 1.0), rng.uniform(0.0, 0.2)
    leg, depth = rng.uniform(0.6, 0.9), rng.uniform(0.1, 0.25)
    bt = rng.uniform(0.06, 0.12)
    sf, sr = np.array([sw, 0.0]), np.array([-sw, 0.0])
    back_top = np.array([-sw - lean, -bh])
    parts = [(_bar(sf + (-depth, -depth / 2), sf + (-depth, leg - depth / 2), 0.03), "dark"),
             (_bar(sr + (depth, -depth / 2), sr + (depth, leg - depth / 2), 0.03), "dark"),
             (np.array([sr + (0, -st / 2), sr + (bt, -st / 2), back_top + (bt, 0), back_top]), "accent"),
             (np.array([sr, sf, sf + (0, st), sr + (0, st)]), "body"),
             (_bar(sf + (-0.03, st), sf + (-0.03, leg), 0.035), "dark"),
             (_bar(sr + (0.03, st), sr + (0.03, leg), 0.035), "dark")]
    kps = [back_top, back_top + (bt, 0), sf, sr, sf + (-0.03, leg), sr + (0.03, leg),
           sf + (-depth, leg - depth / 2), sr + (depth, leg - depth / 2), (0.0, st / 2),
           (back_top + sr) / 2 + (bt / 2, 0)]
    return parts, np.array(kps, dtype=np.float64)


def _leaf(base, tip, width: float, n: int = 16) -> np.ndarray:
    """A pointed leaf from ``base`` to ``tip`` as a polygon."""
    base, tip = np.asarray(base, dtype=np.float64), np.asarray(tip, dtype=np.float64)
    d = tip - base
    normal = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-12)
    t = np.linspace(0, 1, n)
    side = np.sin(np.pi * t)[:, None] * width * normal
    line = base + t[:, None] * d
    return np.concatenate([line + side, (line - side)[::-1]])


def _pottedplant(rng: np.random.Generator):
    pw, ph = rng.uniform(0.3, 0.5), rng.uniform(0.45, 0.7)
    taper, rim = rng.uniform(0.55, 0.85), rng.uniform(0.05, 0.1)
    y_rim = 1.0 - ph
    stem_top = np.array([rng.uniform(-0.1, 0.1), y_rim - rng.uniform(0.6, 1.0)])
    top_tip = stem_top + (rng.uniform(-0.15, 0.15), -rng.uniform(0.25, 0.45))
    lh = y_rim - rng.uniform(0.15, 0.35)
    left_tip = np.array([-rng.uniform(0.55, 0.9), lh - rng.uniform(0.0, 0.3)])
    right_tip = np.array([rng.uniform(0.55, 0.9), lh - rng.uniform(0.1, 0.4)])
    base_l, base_r = np.array([0.0, lh + 0.05]), np.array([0.0, lh - 0.1])
    pot = np.array([(-pw, y_rim), (pw, y_rim), (taper * pw, 1.0), (-taper * pw, 1.0)])
    parts = [(_bar((0.0, y_rim), stem_top, 0.03), "dark"),
             (_leaf(base_l, left_tip, rng.uniform(0.1, 0.18)), "accent"),
             (_leaf(base_r, right_tip, rng.uniform(0.1, 0.18)), "accent"),
             (_leaf(stem_top + (0, 0.1), top_tip, rng.uniform(0.08, 0.14)), "accent"),
             (pot, "body"), (_rect(-pw - 0.04, y_rim - rim, pw + 0.04, y_rim), "label"),
             (_ellipse(*stem_top, 0.09, 0.09), "light")]
    kps = [(-pw - 0.04, y_rim - rim), (pw + 0.04, y_rim - rim), (-taper * pw, 1.0), (taper * pw, 1.0),
           (0.0, y_rim - rim), top_tip, left_tip, right_tip, stem_top, (0.0, (y_rim + 1.0) / 2)]
    return parts, np.array(kps, dtype=np.float64)


_SHAPES = {"aeroplane": _aeroplane, "boat": _boat, "bottle": _bottle, "car": _car, "chair": _chair,
           "motorbike": _motorbike, "pottedplant": _pottedplant, "tvmonitor": _tvmonitor}

# ---------------------------------------------------------------------------------------------------------------
# Rendering one instance.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Instance:
    """One drawn object. ``kps``: ``(K, 2)`` with NaN rows where hidden; ``bbox``: ``[x1, y1, x2, y2]`` clipped."""

    image: Image.Image
    kps: np.ndarray
    bbox: np.ndarray
    angle: float  # rotation in degrees
    size: float  # longest side of the unclipped object box, pixels
    truncated: bool
    occluded: bool
    attributes: dict  # what a caption may say: category, colour, texture, orientation, size, background, ...


def _colour(rng: np.random.Generator, sat=(0.35, 0.95), val=(0.3, 0.95)) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val))
    return np.round(np.array(rgb) * 255)


_SURFACE_TEXTURES = ("solid", "stripes", "dots", "checks", "noise")
_SCREEN_TEXTURES = ("stripes", "noise", "checks")


def _texture(rng: np.random.Generator, box: tuple[int, int, int, int], c1, c2, angle: float,
             kinds) -> tuple[np.ndarray | None, str]:
    """``(pattern, kind)``: an ``(h, w, 3)`` uint8 pattern (stripes, dots, checks or noise) for the pixel box
    ``(x0, y0, w, h)``, aligned with the object's rotation ``angle``; None for a solid fill."""
    kind = kinds[rng.integers(len(kinds))]
    if kind == "solid":
        return None, kind
    x0, y0, w, h = box
    yy = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
    xx = np.arange(x0, x0 + w, dtype=np.float32)[None, :]
    a = math.radians(angle)
    u, v = xx * math.cos(a) + yy * math.sin(a), -xx * math.sin(a) + yy * math.cos(a)
    p = rng.uniform(6, 16)
    if kind == "stripes":
        mask = (u / p) % 1 < rng.uniform(0.3, 0.6)
    elif kind == "dots":
        mask = (u % p - p / 2) ** 2 + (v % p - p / 2) ** 2 < (p * rng.uniform(0.2, 0.35)) ** 2
    elif kind == "checks":
        mask = (np.floor(u / p) + np.floor(v / p)) % 2 == 0
    else:  # noise: blotches of about 4 pixels
        coarse = rng.random(((h + 3) // 4 + 1, (w + 3) // 4 + 1), dtype=np.float32) < 0.5
        mask = coarse[(np.arange(h) + y0 % 4) // 4][:, (np.arange(w) + x0 % 4) // 4]
    out = np.where(mask[..., None], np.float32(1) * c1, c2) + 5 * rng.standard_normal((h, w, 1), dtype=np.float32)
    return np.clip(out, 0, 255).astype(np.uint8), kind


def _background(rng: np.random.Generator, size_wh, clutter: tuple[int, int]) -> tuple[Image.Image, int]:
    """``(image, n)``: a two-colour linear gradient with pixel noise, then ``n`` random shapes (n in ``clutter``)."""
    w, h = size_wh
    c1, c2 = _colour(rng, (0.05, 0.6), (0.4, 1.0)), _colour(rng, (0.05, 0.6), (0.2, 0.9))
    a = rng.uniform(0, 2 * np.pi)
    t = (np.arange(w, dtype=np.float32)[None, :] * math.cos(a)
         + np.arange(h, dtype=np.float32)[:, None] * math.sin(a))[..., None]
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    noise = rng.uniform(2, 12) * rng.standard_normal((h, w, 1), dtype=np.float32)
    c1, c2 = c1.astype(np.float32), c2.astype(np.float32)
    arr = c1 + (c2 - c1) * t + noise
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    n = int(rng.integers(clutter[0], clutter[1] + 1))
    for _ in range(n):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(5, 0.25 * w), rng.uniform(5, 0.25 * h)
        colour = tuple(int(c) for c in _colour(rng, (0.0, 0.5), (0.2, 0.9)))
        shape = rng.integers(3)
        if shape == 0:
            draw.rectangle([x - rx, y - ry, x + rx, y + ry], fill=colour)
        elif shape == 1:
            draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=colour)
        else:
            draw.line([x - rx, y - ry, x + rx, y + ry], fill=colour, width=int(rng.integers(2, 8)))
    return img, n


def _style(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-instance colours for each part role."""
    grey = lambda lo, hi: np.full(3, rng.uniform(lo, hi))  # noqa: E731
    return {"body": _colour(rng), "body2": _colour(rng), "accent": _colour(rng), "label": _colour(rng),
            "label2": _colour(rng), "dark": grey(15, 60), "metal": grey(130, 200),
            "glass": np.array([rng.uniform(140, 190), rng.uniform(180, 225), rng.uniform(215, 250)]).round(),
            "light": np.array([255, 250, rng.uniform(150, 220)]).round(),
            "red": np.array([rng.uniform(180, 240), rng.uniform(10, 50), rng.uniform(10, 50)]).round(),
            "screen": grey(10, 50), "screen2": _colour(rng, (0.3, 0.9), (0.3, 0.8))}


def render_instance(category: str, rng: np.random.Generator, *, truncation: float = 0.2, occlusion: float = 0.25,
                    clutter: tuple[int, int] = (0, 8), min_visible: float = 0.6) -> Instance:
    """Draw one random instance of ``category`` on a random ``(W, H)`` canvas, W, H in 200..320.

    ``truncation`` / ``occlusion``: probabilities of pushing the object partly out of frame / of covering some
    keypoints with a blob. At least ``min_visible`` of the keypoints stay visible, so any two instances share
    some (2·0.6 − 1 = 20 %).
    """
    w, h = (int(v) for v in rng.integers(200, 321, size=2))
    parts, kps = _SHAPES[category](rng)
    stretch = rng.uniform(0.85, 1.15, size=2)
    angle = float(rng.uniform(-25, 25))
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])

    def place(points, offset, size):
        """Canonical ``(M, 2)`` points → pixels: stretch, rotate, multiply by ``size``, shift by ``offset``."""
        return (np.asarray(points) * stretch @ rot.T) * size + offset

    canon = place(np.concatenate([p for p, _ in parts]), 0.0, 1.0)
    lo, hi = canon.min(axis=0), canon.max(axis=0)
    ext = hi - lo
    scale = rng.uniform(0.5, 0.9) * min(w / ext[0], h / ext[1])

    k_needed = math.ceil(min_visible * len(kps))
    for attempt in range(20):
        easy = attempt >= 10  # after 10 failed draws: no truncation, no occluder
        t = np.array([rng.uniform(-lo[0] * scale, w - 1 - hi[0] * scale),
                      rng.uniform(-lo[1] * scale, h - 1 - hi[1] * scale)])
        if not easy and rng.random() < truncation:
            axis, sign = int(rng.integers(2)), rng.choice([-1.0, 1.0])
            t[axis] += sign * rng.uniform(0.1, 0.3) * ext[axis] * scale
        pts = place(kps, t, scale)
        in_frame = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
        occluder = None
        if not easy and rng.random() < occlusion and in_frame.any():
            cx, cy = pts[rng.choice(np.flatnonzero(in_frame))] + rng.normal(0, 4, 2)
            rx, ry = rng.uniform(0.08, 0.2, size=2) * ext.max() * scale
            occluder = (cx, cy, rx, ry)
            hidden = ((pts[:, 0] - cx) / rx) ** 2 + ((pts[:, 1] - cy) / ry) ** 2 < 1.0
        else:
            hidden = np.zeros(len(pts), dtype=bool)
        visible = in_frame & ~hidden
        if visible.sum() >= k_needed:
            break

    style = _style(rng)
    img, n_clutter = _background(rng, (w, h), clutter)
    body_texture = "solid"
    for poly, role in parts:
        xy = [tuple(p) for p in place(poly, t, scale)]
        colour = style[role]
        outline = tuple(int(c) for c in colour * 0.55)
        pattern = None
        if role in ("body", "label", "screen"):
            second = style.get(f"{role}2", colour * 0.6)
            kinds = _SCREEN_TEXTURES if role == "screen" else _SURFACE_TEXTURES
            x0, y0 = (max(int(math.floor(c)), 0) for c in np.min(xy, axis=0))
            x1, y1 = np.minimum(np.ceil(np.max(xy, axis=0)).astype(int) + 1, (w, h))
            if x1 > x0 and y1 > y0:
                pattern, kind = _texture(rng, (x0, y0, x1 - x0, y1 - y0), colour, second, angle, kinds)
                body_texture = kind if role == "body" else body_texture
        if pattern is None:
            ImageDraw.Draw(img).polygon(xy, fill=tuple(int(c) for c in colour), outline=outline)
        else:
            mask = Image.new("L", (x1 - x0, y1 - y0), 0)
            ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in xy], fill=255)
            img.paste(Image.fromarray(pattern), (x0, y0), mask)
            ImageDraw.Draw(img).polygon(xy, outline=outline)
    if occluder is not None:
        cx, cy, rx, ry = occluder
        colour = tuple(int(c) for c in _colour(rng, (0.0, 0.7), (0.2, 0.9)))
        ImageDraw.Draw(img).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour, outline=(20, 20, 20))

    full = place(np.concatenate([p for p, _ in parts]), t, scale)
    box_lo, box_hi = full.min(axis=0), full.max(axis=0)
    limit = np.array([w - 1, h - 1])
    bbox = np.concatenate([np.clip(box_lo, 0, limit), np.clip(box_hi, 0, limit)])
    truncated = bool((~in_frame).any() or (box_lo < 0).any() or (box_hi > limit).any())
    size = float((box_hi - box_lo).max())
    attributes = {"category": category, "colour": colour_name(style["body"]), "texture": body_texture,
                  "orientation": "tilted left" if angle < -10 else "tilted right" if angle > 10 else "upright",
                  "size": "large" if size > 0.7 * min(w, h) else "small" if size < 0.5 * min(w, h) else "medium",
                  "background": "cluttered" if n_clutter >= 4 else "plain", "truncated": truncated,
                  "occluded": bool(hidden.any())}
    return Instance(image=img, kps=np.where(visible[:, None], pts, np.nan), bbox=bbox, angle=angle, size=size,
                    truncated=truncated, occluded=bool(hidden.any()), attributes=attributes)


_HUE_NAMES = ((0.04, "red"), (0.11, "orange"), (0.19, "yellow"), (0.45, "green"), (0.55, "cyan"), (0.72, "blue"),
              (0.83, "purple"), (0.95, "pink"), (1.01, "red"))


def colour_name(rgb) -> str:
    """A plain colour word for an RGB triple in 0..255 (``"dark"``, ``"grey"`` or a hue name)."""
    h, s, v = colorsys.rgb_to_hsv(*(float(c) / 255 for c in rgb))
    if v < 0.3:
        return "dark"
    if s < 0.3:
        return "grey"
    return next(name for limit, name in _HUE_NAMES if h < limit)


# ---------------------------------------------------------------------------------------------------------------
# Shared writing helpers.
# ---------------------------------------------------------------------------------------------------------------


def _rng(seed: int, dataset: str, group: int, index: int, stream: int = 0) -> np.random.Generator:
    """Independent generator per (dataset, category / sub-class, image); ``stream = 1`` is for pair choice."""
    return np.random.default_rng([int(seed), _DATASET_CODE[dataset], group, index, stream])


def _image_name(dataset: str, counter: int) -> str:
    """SPair / VOC-style id such as ``2008_000123``, unique within a dataset."""
    k = _NAME_BASE[dataset] + counter
    return f"{2007 + k % 5}_{k:06d}"


def _share(total: int, n: int) -> list[int]:
    """Split ``total`` into ``n`` near-equal integers (the first ones get the remainder)."""
    return [total // n + (i < total % n) for i in range(n)]


def _images_for(pairs: int) -> int:
    """The fewest images whose ordered pairs (n·(n−1)) reach ``pairs``."""
    n = 0 if pairs == 0 else 2
    while n * (n - 1) < pairs:
        n += 1
    return n


def _split_images(n_images: int, pairs: dict[str, int], what: str) -> dict[str, range]:
    """Disjoint image index ranges per split, each big enough for its pairs; spare images go to ``trn``."""
    need = {s: _images_for(p) for s, p in pairs.items()}
    if sum(need.values()) > n_images:
        raise ValueError(f"{what}: {n_images} images per category cannot give {pairs} pairs from disjoint images "
                         f"(needs at least {sum(need.values())})")
    need[next(iter(need))] += n_images - sum(need.values())
    out, start = {}, 0
    for split, n in need.items():
        out[split] = range(start, start + n)
        start += n
    return out


def _choose_pairs(rng: np.random.Generator, images: range, n_pairs: int) -> list[tuple[int, int]]:
    """``n_pairs`` distinct ordered pairs of different images, in random order."""
    candidates = [(a, b) for a in images for b in images if a != b]
    order = rng.permutation(len(candidates))[:n_pairs]
    return [candidates[i] for i in order]


def _r(values) -> list:
    """Round coordinates to 2 decimals for the annotation files (JSON ``null`` for NaN)."""
    return [None if not np.isfinite(v) else round(float(v), 2) for v in np.asarray(values).reshape(-1)]


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_csv(path: Path, rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def _save_mat(path: Path, variables: dict) -> None:
    """``scipy.io.savemat`` with the header's creation timestamp replaced, so the bytes depend on data only."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, variables)
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, written by sd4match synthetic".ljust(116, b" ")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


def _pfpascal_class(category: str) -> int:
    if category not in _PFPASCAL_CLASSES:
        raise ValueError(f"category {category!r} is not a PF-Pascal class")
    return _PFPASCAL_CLASSES.index(category) + 1


@contextmanager
def _atomic_dir(final: Path):
    """Yield a fresh temporary sibling of ``final``; on success it replaces ``final`` by renaming."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_categories(categories) -> tuple[str, ...]:
    categories = tuple(categories)
    unknown = [c for c in categories if c not in _SHAPES]
    if unknown or not categories:
        raise ValueError(f"unknown synthetic categories {unknown}; choose from {SYNTHETIC_CATEGORIES}")
    return categories


def _split_pairs(pairs_per_split: dict[str, int] | None, n_categories: int) -> dict[str, list[int]]:
    """Per split, the number of pairs for each category."""
    pairs = dict(DEFAULT_PAIRS_PER_SPLIT if pairs_per_split is None else pairs_per_split)
    if set(pairs) - set(SPLITS):
        raise ValueError(f"pairs_per_split keys must be among {SPLITS}, got {sorted(pairs)}")
    return {s: _share(int(pairs.get(s, 0)), n_categories) for s in SPLITS}


def _pair_flags(src: Instance, trg: Instance) -> dict[str, int]:
    ratio = max(src.size, trg.size) / max(min(src.size, trg.size), 1e-9)
    return {"viewpoint_variation": int(abs(src.angle - trg.angle) > 20), "scale_variation": int(ratio > 1.5),
            "truncation": int(src.truncated or trg.truncated), "occlusion": int(src.occluded or trg.occluded)}


# ---------------------------------------------------------------------------------------------------------------
# The three formats.
# ---------------------------------------------------------------------------------------------------------------


def generate_spair(root: str | Path, seed: int = 0, images_per_category: int = 12,
                   pairs_per_split: dict[str, int] | None = None,
                   categories: tuple[str, ...] = SYNTHETIC_CATEGORIES, stream: str = "spair") -> Path:
    """Write a synthetic dataset in the SPair-71k layout under ``root/SPair-71k`` and return that folder.

    Each category's ``images_per_category`` images are split into disjoint trn / val / test groups (test images
    are never seen in trn); ``pairs_per_split`` (default ``{"trn": 60, "val": 24, "test": 36}``) are shared
    evenly among the categories. Files: ``JPEGImages/<cat>/<name>.jpg``, ``ImageAnnotation/<cat>/<name>.json``
    (``kps`` as ``{"0": [x, y] or null, ...}`` plus ``kp_names``), ``PairAnnotation/<split>/<line>.json`` and
    ``Layout/large/<split>.txt``.
    """
    categories = _check_categories(categories)
    per_cat = _split_pairs(pairs_per_split, len(categories))
    final = Path(root) / FOLDERS["spair"]
    with _atomic_dir(final) as out:
        lines: dict[str, list[str]] = {s: [] for s in SPLITS}
        counter = 0
        for ci, cat in enumerate(categories):
            groups = _split_images(images_per_category, {s: per_cat[s][ci] for s in SPLITS}, "generate_spair")
            names, instances = [], []
            for i in range(images_per_category):
                inst = render_instance(cat, _rng(seed, stream, ci, i))
                name = _image_name("spair", counter)
                counter += 1
                w, h = inst.image.size
                (out / "JPEGImages" / cat).mkdir(parents=True, exist_ok=True)
                inst.image.save(out / "JPEGImages" / cat / f"{name}.jpg", quality=92)
                ann = {"filename": f"{name}.jpg", "src_database": "sd4match-synthetic", "category": cat,
                       "image_width": w, "image_height": h, "bndbox": _r(inst.bbox),
                       "kps": {str(k): (None if np.isnan(p[0]) else _r(p)) for k, p in enumerate(inst.kps)},
                       "kp_names": KEYPOINT_NAMES[cat], "truncated": int(inst.truncated),
                       "occluded": int(inst.occluded)}
                _write_text(out / "ImageAnnotation" / cat / f"{name}.json", json.dumps(ann))
                names.append(name)
                instances.append(inst)
            pair_rng = _rng(seed, stream, ci, 0, stream=1)
            for split in SPLITS:
                for a, b in _choose_pairs(pair_rng, groups[split], per_cat[split][ci]):
                    src, trg = instances[a], instances[b]
                    both = np.flatnonzero(~np.isnan(src.kps[:, 0]) & ~np.isnan(trg.kps[:, 0]))
                    line = f"{len(lines[split]) + 1:06d}-{names[a]}-{names[b]}:{cat}"
                    ann = {"pair_id": len(lines[split]) + 1, "src_imname": f"{names[a]}.jpg",
                           "trg_imname": f"{names[b]}.jpg", "category": cat,
                           "src_imsize": [*src.image.size, 3], "trg_imsize": [*trg.image.size, 3],
                           "src_bndbox": _r(src.bbox), "trg_bndbox": _r(trg.bbox),
                           "src_kps": [_r(src.kps[k]) for k in both], "trg_kps": [_r(trg.kps[k]) for k in both],
                           "kps_ids": [int(k) for k in both], "kp_names": [KEYPOINT_NAMES[cat][k] for k in both],
                           **_pair_flags(src, trg)}
                    _write_text(out / "PairAnnotation" / split / f"{line}.json", json.dumps(ann))
                    lines[split].append(line)
        for split in SPLITS:
            _write_text(out / "Layout" / "large" / f"{split}.txt", "".join(f"{ln}\n" for ln in lines[split]))
    return final


def generate_pfpascal(root: str | Path, seed: int = 0, images_per_category: int = 12,
                      pairs_per_split: dict[str, int] | None = None, flip_fraction: float = 0.3,
                      categories: tuple[str, ...] = SYNTHETIC_CATEGORIES) -> Path:
    """Write a synthetic dataset in the PF-Pascal layout under ``root/PF-Pascal`` and return that folder.

    Files: ``PF-dataset-PASCAL/JPEGImages/<name>.jpg``, ``PF-dataset-PASCAL/Annotations/<cls>/<name>.mat``
    (``kps``: K×2 float64 with NaN rows for hidden keypoints, ``bbox``: 1×4) and ``{trn,val,test}_pairs.csv``;
    about ``flip_fraction`` of the trn rows have ``flip = 1``.
    """
    categories = _check_categories(categories)
    per_cat = _split_pairs(pairs_per_split, len(categories))
    final = Path(root) / FOLDERS["pfpascal"]
    with _atomic_dir(final) as out:
        data = out / "PF-dataset-PASCAL"
        (data / "JPEGImages").mkdir(parents=True)
        rows: dict[str, list[list]] = {s: [] for s in SPLITS}
        counter = 0
        for ci, cat in enumerate(categories):
            cls = _pfpascal_class(cat)
            groups = _split_images(images_per_category, {s: per_cat[s][ci] for s in SPLITS}, "generate_pfpascal")
            names = []
            for i in range(images_per_category):
                inst = render_instance(cat, _rng(seed, "pfpascal", ci, i))
                name = _image_name("pfpascal", counter)
                counter += 1
                inst.image.save(data / "JPEGImages" / f"{name}.jpg", quality=92)
                kps = np.round(inst.kps, 2)
                _save_mat(data / "Annotations" / cat / f"{name}.mat",
                          {"kps": kps, "bbox": np.round(inst.bbox, 2)[None, :], "class": cat})
                names.append(name)
            pair_rng = _rng(seed, "pfpascal", ci, 0, stream=1)
            for split in SPLITS:
                for a, b in _choose_pairs(pair_rng, groups[split], per_cat[split][ci]):
                    row = [f"PF-dataset-PASCAL/JPEGImages/{names[a]}.jpg",
                           f"PF-dataset-PASCAL/JPEGImages/{names[b]}.jpg", cls]
                    if split == "trn":
                        row.append(int(pair_rng.random() < flip_fraction))
                    rows[split].append(row)
        for split in SPLITS:
            header = ["source_image", "target_image", "class"] + (["flip"] if split == "trn" else [])
            _write_csv(out / f"{split}_pairs.csv", [header] + rows[split])
    return final


def generate_pfwillow(root: str | Path, seed: int = 0, images_per_subclass: int = 6, pairs_per_subclass: int = 10,
                      categories: tuple[str, ...] = SYNTHETIC_CATEGORIES) -> Path:
    """Write a synthetic dataset in the PF-Willow layout under ``root/PF-Willow`` and return that folder.

    One sub-class folder per real PF-Willow sub-class of the synthetic categories (``winebottle(M)``, ``car(G)``,
    ...). Instances are neither truncated nor occluded, so their first 10 keypoints are all visible. Some PNGs
    are saved as RGBA or grayscale. ``test_pairs.csv``: header, then imageA, imageB, 10 x, 10 y of A, 10 x,
    10 y of B.
    """
    categories = _check_categories(categories)
    subclasses = [(cat, sub) for cat in categories for sub in WILLOW_SUBCLASSES.get(cat, ())]
    if not subclasses:
        raise ValueError(f"none of {categories} has a PF-Willow sub-class ({sorted(WILLOW_SUBCLASSES)})")
    if images_per_subclass * (images_per_subclass - 1) < pairs_per_subclass:
        raise ValueError(f"{images_per_subclass} images cannot give {pairs_per_subclass} distinct pairs")
    final = Path(root) / FOLDERS["pfwillow"]
    with _atomic_dir(final) as out:
        coords = lambda prefix: [f"{prefix}{i}" for i in range(1, 11)]  # noqa: E731
        rows = [["imageA", "imageB"] + coords("XA") + coords("YA") + coords("XB") + coords("YB")]
        counter = 0
        for si, (cat, sub) in enumerate(subclasses):
            clutter = (0, 0) if sub.endswith("(woC)") else (4, 10) if sub.endswith("(wC)") else (0, 6)
            folder = out / "PF-dataset" / sub
            folder.mkdir(parents=True)
            paths, kps = [], []
            for i in range(images_per_subclass):
                inst = render_instance(cat, _rng(seed, "pfwillow", si, i), truncation=0.0, occlusion=0.0,
                                       clutter=clutter)
                assert not np.isnan(inst.kps[:10]).any()
                name = f"{cat}_{_image_name('pfwillow', counter)}"
                counter += 1
                image = inst.image
                if i % 4 == 1:
                    image = image.convert("RGBA")
                elif i % 4 == 3:
                    image = image.convert("L")
                image.save(folder / f"{name}.png", compress_level=1)
                paths.append(f"PF-dataset/{sub}/{name}.png")
                kps.append(inst.kps[:10])
            pair_rng = _rng(seed, "pfwillow", si, 0, stream=1)
            for a, b in _choose_pairs(pair_rng, range(images_per_subclass), pairs_per_subclass):
                values = np.concatenate([kps[a][:, 0], kps[a][:, 1], kps[b][:, 0], kps[b][:, 1]])
                rows.append([paths[a], paths[b]] + [f"{v:.2f}" for v in values])
        _write_csv(out / "test_pairs.csv", rows)
    return final


_GENERATORS = {"spair": generate_spair, "pfpascal": generate_pfpascal, "pfwillow": generate_pfwillow}


def test_split_settings(test_pairs: int, categories: tuple[str, ...] = SYNTHETIC_CATEGORIES) -> dict:
    """Generator settings for a test split of ``test_pairs`` pairs in every layout (train and validation as by
    default), with enough images per category (PF-Willow: per sub-class) to draw them from disjoint images."""
    if test_pairs < 1:
        raise ValueError(f"test_pairs must be positive, got {test_pairs}")
    pairs = dict(DEFAULT_PAIRS_PER_SPLIT, test=int(test_pairs))
    per_cat = _split_pairs(pairs, len(categories))
    images = max(12, max(sum(_images_for(per_cat[s][ci]) for s in SPLITS) for ci in range(len(categories))))
    n_sub = sum(len(WILLOW_SUBCLASSES.get(c, ())) for c in categories)
    per_sub = math.ceil(test_pairs / max(n_sub, 1))
    return {"pairs_per_split": pairs, "images_per_category": images, "pairs_per_subclass": per_sub,
            "images_per_subclass": max(6, _images_for(per_sub))}


def generate_all(root: str | Path, seed: int = 0, **kw) -> dict[str, Path]:
    """Write all three formats under ``root``; each keyword goes to the generators that accept it
    (``test_pairs=N`` stands for :func:`test_split_settings`).

    Returns ``{"spair": root/SPair-71k, "pfpascal": root/PF-Pascal, "pfwillow": root/PF-Willow}``.
    """
    if kw.get("test_pairs") is not None:
        kw = {**test_split_settings(kw.pop("test_pairs"), kw.get("categories", SYNTHETIC_CATEGORIES)), **kw}
    kw.pop("test_pairs", None)
    accepted = {name: set(inspect.signature(fn).parameters) - {"root", "seed"} for name, fn in _GENERATORS.items()}
    unknown = set(kw) - set().union(*accepted.values())
    if unknown:
        raise TypeError(f"unknown synthetic-data settings {sorted(unknown)}")
    return {name: fn(root, seed, **{k: v for k, v in kw.items() if k in accepted[name]})
            for name, fn in _GENERATORS.items()}


def ensure_synthetic(root: str | Path, seed: int = 0, **kw) -> dict[str, Path]:
    """Like :func:`generate_all`, but only when ``root/synthetic.json`` does not already record the same
    generator version, seed and settings (and the three folders exist). Safe to call at every start-up."""
    root = Path(root)
    marker = root / "synthetic.json"
    wanted = {"generator_version": GENERATOR_VERSION, "seed": int(seed),
              "settings": json.loads(json.dumps(kw, sort_keys=True))}
    paths = {name: root / folder for name, folder in FOLDERS.items()}
    try:
        current = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = None
    if current == wanted and all(p.is_dir() for p in paths.values()):
        return paths
    paths = generate_all(root, seed, **kw)
    tmp = marker.with_name(f".synthetic.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, marker)
    return paths
