"""The synthetic objects' geometry: for each of the 8 categories, a random instance's parts (polygons with a
colour role) and its keypoints, in object units (about -1..1, y pointing down), before any placement or drawing
(that is :mod:`.render`'s job).
"""

from __future__ import annotations

import numpy as np

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


#: Category → ``shape(rng) -> (parts, kps)``: ``parts = [(points (M, 2), role)]`` drawn in order, ``kps`` (K, 2).
SHAPES = {"aeroplane": _aeroplane, "boat": _boat, "bottle": _bottle, "car": _car, "chair": _chair,
          "motorbike": _motorbike, "pottedplant": _pottedplant, "tvmonitor": _tvmonitor}
