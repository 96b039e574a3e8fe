"""Unlabelled look-alikes on the synthetic steel: what real defect-free sheets show and a model must not flag.

A network trained on clean synthetic steel learns "any structure is a defect" and, on real sheets, paints
masks over tread-plate patterns, scale and glare. These are drawn on the steel before the defects, never
labelled, and kept apart from the defects' own looks (a class-1 speck is a bright core with a dark shadow
filling a 26x43-px box; the marks here are single-polarity and a few pixels wide; patterns and scale cover
the whole sheet, where a defect is a local change).

What each imitates was read off the 89 unlabelled real test images (``severstal-real/test_images``), never
off the labelled images the project is scored on: dark vertical stains (most sheets), bright splashes,
small scattered pits and dashes, brighter or darker vertical zones with sharp edges, broad glare (about 7
of the 89), patterned plates (5: three tread plates of short oblique lozenges, two diamond meshes of thin
lines) and sheets covered in mottled scale (about 3). Shares are those counts, rounded (the common marks and
zones estimated by eye); sizes are at the 256x1600 reference and scaled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2
import numpy as np

from steel_defect.synthetic.noise import field

__all__ = ["SHARES", "clutter", "stains"]

#: Per image, the chance of each look-alike (from the 89 unlabelled real test images, rounded).
SHARES = {"splashes": 0.12, "marks": 0.5, "zones": 0.3, "glare": 0.08, "pattern": 0.06, "scale": 0.03}


def stains(rng: np.random.Generator, sy: float, sx: float, img: np.ndarray, strength: float) -> None:
    """Dark vertical stains (on most real sheets, often the full height)."""
    h, w = img.shape
    for _ in range(int(rng.choice([0, 1, 2, 3, 4, 6, 8, 12]))):
        sh = int(np.clip((256 if rng.random() < 0.4 else rng.uniform(40, 256)) * sy, 4, h))
        sw = int(np.clip(rng.uniform(6, 70) * sx, 4, w))
        f = field(rng, sh, sw, sh // max(1, round(24 * sy)), sw // max(1, round(6 * sx)))
        taper = np.sqrt(np.clip(np.sin(np.linspace(0, math.pi, sw, dtype=np.float32)), 0, 1))[None, :]
        shape = np.clip(f * taper - rng.uniform(0.0, 0.6), 0, None)
        y0, x0 = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
        img[y0 : y0 + sh, x0 : x0 + sw] -= shape * np.float32(rng.uniform(0.8, 2.0) * max(strength, 10.0))


def _splashes(rng: np.random.Generator, sy: float, sx: float, img: np.ndarray) -> None:
    """A cluster of bright white splashes."""
    h, w = img.shape
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.2, 0.8) * h
    for _ in range(int(rng.integers(3, 12))):
        x = int(cx + rng.normal(0, 60 * sx))
        y = int(cy + rng.normal(0, 60 * sy))
        axes = (max(1, round(rng.uniform(2, 12) * sx)), max(1, round(rng.uniform(3, 20) * sy)))
        cv2.ellipse(img, (x, y), axes, rng.uniform(0, 180), 0, 360, float(rng.uniform(200, 255)), -1)


def _marks(rng: np.random.Generator, sy: float, sx: float, img: np.ndarray, level: float) -> None:
    """Small scattered pits and short vertical dashes, each all dark or all bright, a few pixels wide."""
    h, w = img.shape
    layer = np.zeros_like(img)
    s = math.sqrt(sx * sy)
    for _ in range(int(rng.integers(3, 40))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        amp = float(rng.uniform(0.15, 0.5) * level * (1.0 if rng.random() < 0.35 else -1.0))
        if rng.random() < 0.5:
            r = max(1, round(rng.uniform(1.0, 3.5) * s))
            cv2.circle(layer, (x, y), r, amp, -1, cv2.LINE_AA)
        else:
            length = rng.uniform(4, 18) * sy
            cv2.line(
                layer, (x, y), (x, int(y + length)), amp, max(1, round(rng.uniform(1, 2.5) * sx)), cv2.LINE_AA
            )
    img += cv2.GaussianBlur(layer, (0, 0), 0.7)


def _zones(rng: np.random.Generator, sx: float, img: np.ndarray, level: float) -> None:
    """Brighter or darker full-height zones with sharp-ish edges (rolling and coating zones)."""
    h, w = img.shape
    cols = np.arange(w, dtype=np.float32)
    offset = np.zeros(w, np.float32)
    for _ in range(int(rng.integers(1, 5))):
        x0 = rng.uniform(0, w)
        width = rng.uniform(20, 300) * sx
        soft = max(0.5, rng.uniform(2, 20) * sx)
        # two soft steps (logistic, written with tanh so far-away columns cannot overflow)
        inside = (
            0.25
            * (1.0 + np.tanh((cols - x0) / (2 * soft)))
            * (1.0 - np.tanh((cols - x0 - width) / (2 * soft)))
        )
        offset += inside * np.float32(rng.uniform(0.1, 0.35) * level * (1 if rng.random() < 0.5 else -1))
    img += offset[None, :]


def _glare(rng: np.random.Generator, sy: float, sx: float, img: np.ndarray, level: float) -> None:
    """A broad bright hotspot where the light reflects off the sheet."""
    h, w = img.shape
    cx, cy = rng.uniform(0, w), rng.uniform(-0.2, 1.2) * h
    gx, gy = rng.uniform(80, 400) * sx, rng.uniform(60, 250) * sy
    xs = np.exp(-0.5 * ((np.arange(w, dtype=np.float32) - cx) / gx) ** 2)
    ys = np.exp(-0.5 * ((np.arange(h, dtype=np.float32) - cy) / gy) ** 2)
    img += np.outer(ys, xs) * np.float32(rng.uniform(0.3, 1.0) * level)


def _mesh(rng: np.random.Generator, sy: float, sx: float, img: np.ndarray, level: float) -> None:
    """Diamond mesh: two families of thin straight lines, tilted either way from the vertical, in relief."""
    h, w = img.shape
    layer = np.zeros_like(img)
    period = rng.uniform(45, 80) * sx
    run = math.tan(math.radians(rng.uniform(8, 25))) * h * sx / sy  # horizontal run over the full height
    amp = float(rng.uniform(0.2, 0.5) * level)
    thick = max(1, round(rng.uniform(1.5, 3.0) * sx))
    for direction in (1.0, -1.0):
        x = rng.uniform(0, period) - abs(run)
        while x < w + abs(run):
            top, bottom = (int(x), 0), (int(x + direction * run), h - 1)
            cv2.line(layer, top, bottom, amp, thick, cv2.LINE_AA)
            cv2.line(layer, (top[0] + thick, 0), (bottom[0] + thick, h - 1), -amp, thick, cv2.LINE_AA)
            x += period
    img += cv2.GaussianBlur(layer, (0, 0), 0.8)


def _tread(rng: np.random.Generator, sy: float, sx: float, img: np.ndarray, level: float) -> None:
    """Tread plate: rows of short oblique lozenges, alternately tilted, dark with a bright lip."""
    h, w = img.shape
    layer = np.zeros_like(img)
    py, px = rng.uniform(45, 75) * sy, rng.uniform(50, 90) * sx
    ax, ay = max(1, round(rng.uniform(10, 18) * sx)), max(1, round(rng.uniform(3, 6) * sy))
    tilt = rng.uniform(30, 55)
    amp = float(rng.uniform(0.15, 0.4) * level)
    y0, x0 = rng.uniform(0, py), rng.uniform(0, px)
    for i in range(int(h / py) + 2):
        for j in range(int(w / px) + 2):
            cy = y0 + i * py + rng.normal(0, 2 * sy)
            cx = x0 + j * px + (px / 2 if i % 2 else 0.0) + rng.normal(0, 2 * sx)
            angle = tilt if (i + j) % 2 else 180 - tilt
            centre = (int(cx), int(cy))
            cv2.ellipse(layer, centre, (ax, ay), angle, 0, 360, -amp, -1, cv2.LINE_AA)
            lip = (int(cx + 0.3 * ay), int(cy - 1.2 * ay))
            cv2.ellipse(layer, lip, (ax, max(1, ay // 2)), angle, 0, 360, 0.6 * amp, -1, cv2.LINE_AA)
    shade = 0.6 + 0.4 * np.clip(field(rng, h, w, 3, 10, cubic=False) * 0.5 + 0.5, 0, 1)
    img += cv2.GaussianBlur(layer, (0, 0), 1.2 * math.sqrt(sx * sy)) * shade


def _scale(rng: np.random.Generator, sy: float, sx: float, img: np.ndarray, level: float) -> None:
    """A sheet covered in mottled scale: high-contrast bright/dark flakes, streaked along the height."""
    h, w = img.shape
    flakes = field(rng, h, w, round(h / (6 * sy)), round(w / (4 * sx)), cubic=False)
    flakes = np.tanh(2.0 * flakes)
    zones = 0.5 + 0.5 * np.clip(field(rng, h, w, 2, round(w / (120 * sx)), cubic=False) * 0.6 + 0.5, 0, 1)
    img += flakes * zones * np.float32(rng.uniform(0.25, 0.6) * level)


def clutter(
    rng: np.random.Generator,
    sy: float,
    sx: float,
    img: np.ndarray,
    strength: float,
    shares: Mapping[str, float] | None = None,
) -> None:
    """Draw the unlabelled look-alikes on plain steel ``img`` (float32 (h, w), in place).

    ``sy``/``sx``: this image's scale against the 256x1600 reference; ``strength``: the sheet's column-profile
    std (the stains' depth). The rest scale with the sheet's grey level, as reflected light does.
    ``shares``: the chance of each look-alike (default :data:`SHARES`; the same keys).
    """
    shares = SHARES if shares is None else shares
    if set(shares) != set(SHARES):
        raise ValueError(f"shares: need exactly the keys {sorted(SHARES)}, got {sorted(shares)}")
    level = float(np.median(img[:: max(1, img.shape[0] // 16), :: max(1, img.shape[1] // 64)]))
    stains(rng, sy, sx, img, strength)
    draws = {name: rng.random() < shares[name] for name in SHARES}
    if draws["zones"]:
        _zones(rng, sx, img, level)
    if draws["glare"]:
        _glare(rng, sy, sx, img, level)
    if draws["scale"]:
        _scale(rng, sy, sx, img, level)
    if draws["pattern"]:
        (_tread if rng.random() < 0.6 else _mesh)(rng, sy, sx, img, level)
    if draws["marks"]:
        _marks(rng, sy, sx, img, level)
    if draws["splashes"]:
        _splashes(rng, sy, sx, img)
