"""Drawing one synthetic instance: a category's shape (:mod:`.shapes`) with random proportions, colours, textures
(stripes, dots, checks, noise), scale, rotation (±25°), position and background (gradient, noise, clutter), on a
canvas of random size, possibly truncated by the frame or occluded by a blob.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .shapes import SHAPES


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
    parts, kps = SHAPES[category](rng)
    stretch = rng.uniform(0.85, 1.15, size=2)
    angle = float(rng.uniform(-25, 25))
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])

    def place(points, offset, size):
        """Canonical ``(M, 2)`` points → pixels: stretch, rotate, multiply by ``size``, shift by ``offset``."""
        return (np.asarray(points) * stretch @ rot.T) * size + offset

    part_points = np.concatenate([p for p, _ in parts])
    canon = place(part_points, 0.0, 1.0)
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

    full = place(part_points, t, scale)
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
