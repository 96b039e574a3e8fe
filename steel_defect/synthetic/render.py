"""Rendering one synthetic steel image and its masks (generator v4), driven by ``params.json``.

Every size is drawn at the 256x1600 reference and scaled to the requested shape. Per image:

1. Steel: grey level, vertical rolling streaks (column profile + vertically elongated mottling), a
   top-to-bottom illumination profile, fine grain; unlabelled look-alikes that real sheets show (stains,
   splashes, pits, zones, glare, patterned plates, scale: :mod:`steel_defect.synthetic.clutter`); an
   off-steel black band at one side for about half the images.
   Their strengths are drawn from the real quantiles (``params["texture"]``, ``params["band"]``).
2. Labels: the set of classes is drawn from the real per-image class-set probabilities; per class the
   number of objects from the real histogram and each object's bounding box (height, width, fill) from the
   real quantiles, with the real height/width rank correlation (Gaussian copula).
3. Each object is a coarse polygon, as the real annotators drew, and the defect drawn inside it imitates its
   class: 1 one to three specks that fill much of the box (a bright core with a dark shadow); 2 a thin
   vertical mark in relief (a bright and a dark line side by side, in dashes); 3 scratches along the rolling
   direction (vertical lines) or, when wide, a rough bright/dark patch; 4 a dark rough pit region with a
   bright rim.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from steel_defect import DEFAULT_SHAPE
from steel_defect.synthetic.clutter import clutter
from steel_defect.synthetic.noise import field
from steel_defect.synthetic.params import load_params, sample_quantiles

__all__ = ["CLASS_MIXES", "MIN_SHAPE", "check_shape", "class_set_probs", "render_sample"]

_REF_H, _REF_W = 256, 1600
MIN_SHAPE = (32, 64)
#: Grey level under which steel is compressed softly towards _FLOOR - _SOFT = 16: real steel never reads as
#: dark and flat as the off-steel band (realism.BAND_LEVEL = 15).
_FLOOR, _SOFT = 24.0, 8.0


@dataclass(frozen=True)
class _Geom:
    h: int
    w: int

    @property
    def sy(self) -> float:
        return self.h / _REF_H

    @property
    def sx(self) -> float:
        return self.w / _REF_W

    @property
    def s(self) -> float:
        return math.sqrt(self.sx * self.sy)


def check_shape(shape: Sequence[int]) -> tuple[int, int]:
    """Validate ``(height, width)``; at least :data:`MIN_SHAPE`."""
    if len(shape) != 2:
        raise ValueError(f"shape must be (height, width), got {shape!r}")
    h, w = (int(v) for v in shape)
    if h < MIN_SHAPE[0] or w < MIN_SHAPE[1]:
        raise ValueError(f"shape {shape!r} is too small; need at least {MIN_SHAPE[0]}x{MIN_SHAPE[1]}")
    return h, w


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _profile(
    rng: np.random.Generator, n: int, scales: Sequence[float], weights: Sequence[float]
) -> np.ndarray:
    """1-D multi-scale noise of length ``n`` with zero mean and unit std (scales in samples)."""
    out = np.zeros(n, dtype=np.float32)
    for scale, wgt in zip(scales, weights, strict=True):
        k = max(2, int(math.ceil(n / max(scale, 1.0))) + 1)
        pts = rng.standard_normal(k).astype(np.float32)
        out += wgt * np.interp(np.linspace(0, k - 1, n), np.arange(k), pts).astype(np.float32)
    out -= out.mean()
    std = out.std()
    return out / std if std > 0 else out


# ------------------------------------------------------------------------------------------- background
def _steel(rng: np.random.Generator, g: _Geom, tex: dict) -> np.ndarray:
    """Plain steel (float32 (h, w)) whose texture statistics are drawn from the real quantiles."""
    h, w = g.h, g.w
    # One rank for level and texture strength: the light is reflected, so dark sheets are the flat ones.
    u = rng.random()

    def rank() -> float:
        return float(np.clip(u + rng.normal(0.0, 0.3), 0.0, 1.0))

    mean = sample_quantiles(rng, tex["steel_mean_q"], u=rank())
    col_std = sample_quantiles(rng, tex["column_profile_std_q"], u=rank())
    row_std = sample_quantiles(rng, tex["row_profile_std_q"], u=rank())
    grain = sample_quantiles(rng, tex["grain_std_q"], u=rank())
    # Column profile: rolling streaks, constant along the height (the dominant vertical texture).
    scales = [400 * g.sx, 90 * g.sx, 20 * g.sx, 4 * g.sx]
    col = _profile(rng, w, scales, [1.0, 0.7, 0.35, 0.15]) * np.float32(0.8 * col_std)
    # Row profile: the illumination changes from top to bottom (smooth).
    row = _profile(rng, h, [h * 1.5, h / 3], [1.0, 0.15]) * np.float32(row_std)
    img = np.add.outer(row, col)
    img += np.float32(mean)
    # Vertically elongated mottling: streaks that come and go along the height.
    mott = field(rng, h, w, max(2, round(h / (32 * g.sy))), max(2, round(w / (8 * g.sx))), cubic=False)
    cv2.scaleAdd(mott, float(rng.uniform(0.2, 0.45) * col_std), img, dst=img)
    # Isotropic mottling at a few pixels: the rough, pitted look of rolled steel.
    iso = field(rng, h, w, max(2, round(h / (5 * g.sy))), max(2, round(w / (5 * g.sx))), cubic=False)
    cv2.scaleAdd(iso, float(rng.uniform(0.15, 0.35) * col_std), img, dst=img)
    # Large-scale illumination blotches.
    cv2.scaleAdd(field(rng, h, w, 3, 8), float(rng.uniform(0.1, 0.35) * row_std), img, dst=img)
    # Fine grain: mildly correlated noise (the sensor + JPEG blur), std as the real grain (uniform noise,
    # std 1/sqrt(12), blurred: about 0.75 of that is left).
    noise = rng.random((h, w), dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (3, 3), 0.6)
    amp = grain * 2.0 * math.sqrt(12.0) / 0.75  # 2.0: what JPEG at quality 90 takes away (measured)
    cv2.scaleAdd(noise, float(amp), img, dst=img)
    img -= np.float32(amp * 0.5)
    clutter(rng, g.sy, g.sx, img, col_std)
    # Lit steel never reads flat black (that is the off-steel band): a soft floor keeps the texture.
    low = img < _FLOOR
    img[low] = _FLOOR - _SOFT + _SOFT * np.exp((img[low] - _FLOOR) / _SOFT)
    return img


def _band(
    rng: np.random.Generator, g: _Geom, band: dict
) -> tuple[np.ndarray | None, tuple[int, int, int, int]]:
    """Alpha (h, w) of the steel (1) vs the black band (0), or None; and the steel box (y0, y1, x0, x1)."""
    h, w = g.h, g.w
    if rng.random() >= band["share"]:
        return None, (0, h, 0, w)
    sides = band["sides"]
    side = str(rng.choice(list(sides), p=np.asarray(list(sides.values())) / sum(sides.values())))
    frac = float(np.clip(sample_quantiles(rng, band["fraction_q"]), 0.02, 0.93))
    ramp = max(1.0, rng.uniform(2.0, 12.0) * g.s)
    if side in ("left", "right"):
        n = max(2, round(frac * w))
        pos = np.arange(w, dtype=np.float32)
        edge = n if side == "left" else w - n
        # The strip edge is not perfectly straight: it drifts a little along the height.
        drift = _profile(rng, h, [h * 2.0], [1.0])[:, None] * np.float32(rng.uniform(0, 6) * g.sx)
        d = (pos[None, :] - edge - drift) if side == "left" else (edge - pos[None, :] + drift)
        alpha = np.clip(d / ramp, 0.0, 1.0)
        margin = int(np.abs(drift).max() + 2 * ramp) + 2
        box = (0, h, n + margin, w) if side == "left" else (0, h, 0, w - n - margin)
    else:
        n = max(2, round(min(frac, 0.5) * h))
        pos = np.arange(h, dtype=np.float32)[:, None]
        d = (pos - n) if side == "top" else (h - n - pos)
        alpha = np.broadcast_to(np.clip(d / ramp, 0.0, 1.0), (h, w))
        box = (n + int(2 * ramp) + 2, h, 0, w) if side == "top" else (0, h - n - int(2 * ramp) - 2, 0, w)
    y0, y1, x0, x1 = box
    if y1 - y0 < 8 or x1 - x0 < 8:
        return None, (0, h, 0, w)
    return np.ascontiguousarray(alpha, dtype=np.float32), box


def _apply_band(rng: np.random.Generator, g: _Geom, img: np.ndarray, alpha: np.ndarray) -> None:
    if rng.random() < 0.3:  # a bright rim where the light catches the strip edge
        rim = np.exp(-(((alpha - 0.5) / 0.25) ** 2)).astype(np.float32)
        cv2.scaleAdd(rim, float(rng.uniform(30, 110)), img, dst=img)
    dark = rng.random(img.shape, dtype=np.float32)
    cv2.multiply(img, alpha, dst=img)
    cv2.scaleAdd(dark, float(rng.uniform(0.5, 2.5)), np.full_like(dark, rng.uniform(0.0, 3.0)), dst=dark)
    cv2.multiply(dark, 1.0 - alpha, dst=dark)
    img += dark


# ---------------------------------------------------------------------------------------------- objects
def _object_box(
    rng: np.random.Generator, obj: dict, g: _Geom, max_h: int, max_w: int
) -> tuple[int, int, float]:
    """Height, width (pixels at this shape) and fill ratio of one object, from the real quantiles."""
    rho = float(obj["rho_hw"])
    z1 = rng.standard_normal()
    z2 = rho * z1 + math.sqrt(max(0.0, 1.0 - rho * rho)) * rng.standard_normal()
    bh = sample_quantiles(rng, obj["height_q"], u=_phi(z1))
    bw = sample_quantiles(rng, obj["width_q"], u=_phi(z2))
    fill = float(np.clip(sample_quantiles(rng, obj["fill_q"]), 0.3, 1.0))
    h = int(np.clip(round(bh * g.sy), 3, max_h))
    w = int(np.clip(round(bw * g.sx), 3, max_w))
    return h, w, fill


def _polygon(rng: np.random.Generator, h: int, w: int, fill: float) -> np.ndarray:
    """A coarse annotator-like polygon filling about ``fill`` of an (h, w) box; int32 (k, 1, 2) points."""
    if h >= 3 * w:  # tall and thin: a band around a (slightly slanted) vertical line
        k = int(rng.integers(2, 5))
        ys = np.linspace(0, h - 1, k)
        inset = (1.0 - fill) * w * 0.5
        left = np.clip(rng.uniform(0, 2 * inset + 1e-6, k), 0, w / 2 - 1)
        right = np.clip(w - 1 - rng.uniform(0, 2 * inset + 1e-6, k), w / 2, w - 1)
        left[int(rng.integers(k))], right[int(rng.integers(k))] = 0, w - 1  # the box is the object's bbox
        pts = np.concatenate([np.stack([left, ys], 1), np.stack([right[::-1], ys[::-1]], 1)])
    else:
        k = int(rng.integers(5, 11))
        t = np.sort(rng.uniform(0, 2 * math.pi, k)) + rng.uniform(0, 2 * math.pi)
        if fill >= 0.78:  # squarer than an ellipse: superellipse radius
            n = 2.0 + 8.0 * (fill - 0.78) / 0.22
            c, s = np.abs(np.cos(t)) + 1e-9, np.abs(np.sin(t)) + 1e-9
            r = (c**n + s**n) ** (-1.0 / n)
            jitter = np.ones(k)
        else:
            r = np.ones(k)
            jitter = 1.0 - rng.uniform(0, 2 * (1.0 - math.sqrt(fill / 0.785)), k)
        x, y = np.cos(t) * r * jitter, np.sin(t) * r * jitter
        x = (x - x.min()) / max(np.ptp(x), 1e-6) * (w - 1)
        y = (y - y.min()) / max(np.ptp(y), 1e-6) * (h - 1)
        pts = np.stack([x, y], 1)
    return np.round(pts).astype(np.int32).reshape(-1, 1, 2)


def _speckle(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    f = rng.standard_normal(shape, dtype=np.float32)
    return cv2.GaussianBlur(f, (0, 0), max(0.5, sigma)) if sigma > 0.3 else f


def _draw_pits(
    rng: np.random.Generator, g: _Geom, poly_mask: np.ndarray, inner: np.ndarray, sign: float
) -> np.ndarray:
    """Class 1: one to three specks filling much of the box, as on real sheets: a bright core, a shadow."""
    h, w = poly_mask.shape
    delta = np.zeros((h, w), np.float32)
    for _ in range(int(rng.choice([1, 1, 1, 2, 2, 3]))):
        cx = float(np.clip(rng.normal(w / 2, w / 8), 0, w - 1))
        cy = float(np.clip(rng.normal(h / 2, h / 8), 0, h - 1))
        ax = max(1.5 * g.sx, rng.uniform(0.08, 0.2) * w)
        ay = max(2.0 * g.sy, rng.uniform(0.12, 0.28) * h)
        angle = rng.normal(0.0, 15.0)
        core = (round(cx), round(cy)), (max(1, round(ax)), max(1, round(ay)))
        cv2.ellipse(delta, *core, angle, 0, 360, float(rng.uniform(50, 120)), -1, cv2.LINE_AA)
        if rng.random() < 0.7:  # the dark side of the pit, above or below the bright core
            dy = (1 if rng.random() < 0.5 else -1) * 0.9 * ay
            shadow = (round(cx), round(cy + dy)), (max(1, round(ax * 0.8)), max(1, round(ay * 0.6)))
            cv2.ellipse(delta, *shadow, angle, 0, 360, float(-rng.uniform(30, 80)), -1, cv2.LINE_AA)
    rough = 0.6 + 0.4 * np.clip(_speckle(rng, (h, w), 1.0) + 0.5, 0.0, 1.0)  # no flat, saturated blobs
    delta = delta * rough + _speckle(rng, (h, w), 0.7) * np.float32(rng.uniform(4, 12)) * inner
    return cv2.GaussianBlur(delta, (0, 0), 0.7)


def _draw_relief_line(
    rng: np.random.Generator, g: _Geom, poly_mask: np.ndarray, inner: np.ndarray, sign: float
) -> np.ndarray:
    """Class 2: a thin vertical mark in relief: a bright and a dark line side by side, in dashes."""
    h, w = poly_mask.shape
    delta = np.zeros((h, w), np.float32)
    x = rng.uniform(0.35, 0.65) * w
    wobble = _profile(rng, h, [h / 2.0], [1.0]) * np.float32(rng.uniform(0, 1.5) * g.sx)
    thick = max(1, round(rng.uniform(1.5, 3.5) * g.sx))
    y0, y1 = int(rng.uniform(0, 0.15) * h), int(h - rng.uniform(0, 0.15) * h)
    xs = x + wobble[y0:y1]
    side = 1.0 if rng.random() < 0.5 else -1.0
    dashes = np.clip(_profile(rng, h, [h / 8.0, h / 30.0], [1.0, 0.6]) + 0.6, 0.15, 1.0)
    amp = rng.uniform(50, 110)
    for offset, sgn in ((0.0, 1.0), (side * (thick + 1.0), -1.0)):
        pts = np.stack([np.round(xs + offset).astype(np.int32), np.arange(y0, y1, dtype=np.int32)], 1)
        line = np.zeros((h, w), np.float32)
        cv2.polylines(line, [pts.reshape(-1, 1, 2)], False, 1.0, thick, cv2.LINE_AA)
        delta += line * dashes[:, None] * np.float32(sgn * amp)
    delta += _speckle(rng, (h, w), 0.8) * np.float32(rng.uniform(3, 10)) * inner
    return cv2.GaussianBlur(delta, (0, 0), 0.6)


def _draw_scratches(
    rng: np.random.Generator, g: _Geom, poly_mask: np.ndarray, inner: np.ndarray, sign: float
) -> np.ndarray:
    """Class 3, tall: scratches along the rolling direction (vertical lines)."""
    h, w = poly_mask.shape
    delta = np.zeros((h, w), np.float32)
    for _ in range(int(rng.choice([1, 1, 2, 3]))):
        x = rng.uniform(0.3, 0.7) * w
        wobble = _profile(rng, h, [h / 2.0], [1.0]) * np.float32(rng.uniform(0, 2.5) * g.sx)
        thick = max(1, round(rng.uniform(1.0, 4.5) * g.sx))
        y0 = int(rng.uniform(0, 0.25) * h)
        y1 = int(h - rng.uniform(0, 0.25) * h)
        xs = np.round(x + wobble[y0:y1]).astype(np.int32)
        pts = np.stack([xs, np.arange(y0, y1, dtype=np.int32)], 1).reshape(-1, 1, 2)
        amp = sign * rng.uniform(35, 90)
        line = np.zeros((h, w), np.float32)
        cv2.polylines(line, [pts], False, 1.0, thick, cv2.LINE_AA)
        fade = 0.5 + 0.5 * np.clip(_profile(rng, h, [h / 3.0], [1.0]) * 0.5 + 0.5, 0, 1)
        delta += line * fade[:, None] * np.float32(amp)
    delta += _speckle(rng, (h, w), 0.8) * np.float32(rng.uniform(3, 10)) * inner
    return cv2.GaussianBlur(delta, (0, 0), 0.6)


def _draw_patch(
    rng: np.random.Generator, g: _Geom, poly_mask: np.ndarray, inner: np.ndarray, sign: float
) -> np.ndarray:
    """Class 3, wide: a rough bright/dark patch with streaks along the height."""
    h, w = poly_mask.shape
    delta = np.zeros((h, w), np.float32)
    rough = field(rng, h, w, max(2, h // max(1, round(20 * g.sy))), max(2, w // max(1, round(5 * g.sx))))
    region = cv2.GaussianBlur(inner.astype(np.float32), (0, 0), 1.5)
    amp = rng.uniform(20, 55)
    delta += region * (np.float32(sign * amp * 0.6) + rough * np.float32(amp * 0.7))
    delta += _speckle(rng, (h, w), 0.7) * np.float32(rng.uniform(6, 16)) * region
    # bright scratch strokes across the patch, as on real class-3 patches
    strokes = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(0, 8))):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        length, angle = rng.uniform(0.2, 0.6) * w, rng.normal(0.0, 0.25)
        x1, y1 = x0 + length * math.cos(angle), y0 + length * math.sin(angle)
        thick = max(1, round(rng.uniform(1.0, 3.5) * g.s))
        cv2.line(
            strokes,
            (int(x0), int(y0)),
            (int(x1), int(y1)),
            float(rng.uniform(50, 120)),
            thick,
            cv2.LINE_AA,
        )
    return delta + cv2.GaussianBlur(strokes, (0, 0), 0.7) * region


def _draw_rough_pit(
    rng: np.random.Generator, g: _Geom, poly_mask: np.ndarray, inner: np.ndarray, sign: float
) -> np.ndarray:
    """Class 4: a dark rough pit region with a bright, speckled rim."""
    h, w = poly_mask.shape
    delta = np.zeros((h, w), np.float32)
    core = cv2.erode(poly_mask, np.ones((3, 3), np.uint8), iterations=max(1, round(4 * g.s)))
    if not core.any():
        core = inner.astype(np.uint8)
    ragged = field(rng, h, w, max(2, h // 12), max(2, w // 12)) > rng.uniform(-1.2, -0.4)
    region = cv2.GaussianBlur((core.astype(bool) & ragged).astype(np.float32), (0, 0), 1.2)
    rough = field(rng, h, w, max(2, h // 6), max(2, w // 6))
    amp = rng.uniform(30, 75)
    delta -= region * np.float32(amp) * (0.8 + 0.35 * rough)
    delta += _speckle(rng, (h, w), 0.8) * np.float32(rng.uniform(6, 18)) * region
    rim = (inner & ~core.astype(bool)).astype(np.float32)
    delta += (
        cv2.GaussianBlur(rim, (0, 0), 1.0)
        * np.clip(_speckle(rng, (h, w), 1.0) + 0.3, 0, None)
        * np.float32(rng.uniform(20, 70))
    )
    return delta


def _draw(rng: np.random.Generator, cls: int, g: _Geom, poly_mask: np.ndarray) -> np.ndarray:
    """The defect's intensity change (float32, the polygon's box) for class ``cls``."""
    h, w = poly_mask.shape
    inner = cv2.erode(poly_mask, np.ones((3, 3), np.uint8), iterations=max(1, round(2 * g.s))).astype(bool)
    if not inner.any():
        inner = poly_mask.astype(bool)
    sign = 1.0 if rng.random() < 0.45 else -1.0
    if cls == 1:
        draw = _draw_pits
    elif cls == 2:
        draw = _draw_relief_line
    elif cls == 3:
        draw = _draw_scratches if h >= 2 * w else _draw_patch
    else:
        draw = _draw_rough_pit
    return draw(rng, g, poly_mask, inner, sign)


def _place(
    rng: np.random.Generator,
    occupied: np.ndarray,
    box: tuple[int, int, int, int],
    h: int,
    w: int,
    near: tuple[float, float] | None,
    spread: tuple[float, float],
    shrink: int = 4,
) -> tuple[int, int, int, int] | None:
    """``(y, x, h, w)``: a free spot for an (h, w) box inside ``box`` (near ``near`` if given), the box shrunk
    by 0.8 up to ``shrink - 1`` times when it does not fit (rather than lose big objects); None if none."""
    y0, y1, x0, x1 = box
    for _ in range(shrink):
        if y1 - y0 >= h and x1 - x0 >= w:
            for _ in range(20):
                if near is None:
                    y = int(rng.integers(y0, y1 - h + 1))
                    x = int(rng.integers(x0, x1 - w + 1))
                else:
                    y = int(np.clip(rng.normal(near[0], spread[0]) - h / 2, y0, y1 - h))
                    x = int(np.clip(rng.normal(near[1], spread[1]) - w / 2, x0, x1 - w))
                # keep a 2-px gap so separate objects stay separate components
                if not occupied[max(0, y - 2) : y + h + 2, max(0, x - 2) : x + w + 2].any():
                    return y, x, h, w
        h, w = max(3, round(h * 0.8)), max(3, round(w * 0.8))
    return None


def _stamp(
    rng: np.random.Generator,
    cls: int,
    g: _Geom,
    contrast: float,
    spot: tuple[int, int, int, int],
    fill: float,
    img: np.ndarray,
    masks: np.ndarray,
    occupied: np.ndarray,
) -> None:
    """Draw one class-``cls`` object with its polygon label at ``spot`` (in place)."""
    y, x, h, w = spot
    local = np.zeros((h, w), np.uint8)
    cv2.fillPoly(local, [_polygon(rng, h, w, fill)], 1)
    img[y : y + h, x : x + w] += _draw(rng, cls, g, local) * np.float32(contrast)
    masks[cls - 1, y : y + h, x : x + w] |= local
    occupied[y : y + h, x : x + w] |= local.astype(bool)


#: ``class_mix`` choices: the real per-image class-set frequencies, or every class equally often among the
#: defect images (same defect-free share, same co-occurrence given a class): for short CPU demos in which a
#: class seen in 2% of the images would hardly be seen at all.
CLASS_MIXES = ("real", "balanced")


def class_set_probs(class_sets: dict[str, float], mix: str = "real") -> dict[str, float]:
    """Probability of each class set ('' = defect-free, '3|4' = classes 3 and 4) under ``mix``."""
    if mix not in CLASS_MIXES:
        raise ValueError(f"class_mix must be one of {', '.join(CLASS_MIXES)}, got {mix!r}")
    if mix == "real":
        return dict(class_sets)
    classes = sorted({c for k in class_sets for c in k.split("|") if c})
    share = {c: sum(p for k, p in class_sets.items() if c in k.split("|")) for c in classes}
    free = class_sets.get("", 0.0)
    out = {"": free}
    for k, p in class_sets.items():
        if k:  # P(set | its class c) averaged over a uniformly chosen class c
            out[k] = sum((1.0 - free) / len(classes) * p / share[c] for c in k.split("|"))
    total = sum(out.values())
    return {k: v / total for k, v in out.items()}


def _choose_classes(rng: np.random.Generator, class_sets: dict[str, float], num_classes: int) -> list[int]:
    keys = list(class_sets)
    p = np.asarray([class_sets[k] for k in keys], dtype=np.float64)
    key = keys[int(rng.choice(len(keys), p=p / p.sum()))]
    return [int(c) for c in key.split("|") if c and int(c) <= num_classes]


def render_sample(
    rng_or_seed: int | np.random.Generator | np.random.SeedSequence,
    shape: Sequence[int] = DEFAULT_SHAPE,
    classes: Iterable[int] | None = None,
    params: dict | None = None,
    class_mix: str = "real",
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic steel image and its masks.

    ``classes`` forces the defect classes (``()`` for a defect-free image); by default they are drawn with
    the real per-image class-set probabilities (about 47% defect-free), or with every class equally often
    among the defect images for ``class_mix="balanced"``. ``params`` defaults to the committed
    ``params.json``. Returns ``(image uint8 (H, W, 3) grey in all three channels, masks uint8 0/1 (C, H, W))``
    with C = the number of classes in the parameters (4); masks of different classes never overlap.
    """
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    p = load_params() if params is None else params
    num_classes = len(p["objects"])
    g = _Geom(*check_shape(shape))
    sets = class_set_probs(p["class_sets"], class_mix)
    chosen = _choose_classes(rng, sets, num_classes) if classes is None else [int(c) for c in classes]
    if len(set(chosen)) != len(chosen) or any(not 1 <= c <= num_classes for c in chosen):
        raise ValueError(f"classes must be distinct values in 1..{num_classes}, got {chosen!r}")
    img = _steel(rng, g, p["texture"])
    contrast = float(np.clip(np.median(img[:: max(1, g.h // 16), :: max(1, g.w // 64)]) / 88.0, 0.6, 1.5))
    alpha, box = _band(rng, g, p["band"])
    masks = np.zeros((num_classes, g.h, g.w), dtype=np.uint8)
    occupied = np.zeros((g.h, g.w), dtype=bool)

    def typical_box(c: int) -> float:
        o = p["objects"][str(c)]
        return o["height_q"][10] * o["width_q"][10]

    for cls in sorted(chosen, key=typical_box, reverse=True):  # big objects first, while there is room
        obj = p["objects"][str(cls)]
        probs = np.asarray(obj["count_probs"], dtype=np.float64)
        n_obj = int(rng.choice(len(probs), p=probs / probs.sum())) + 1
        near = None
        if cls == 1 or rng.random() < 0.5:  # objects of one class tend to sit together
            near = (rng.uniform(box[0], box[1]), rng.uniform(box[2], box[3]))
        spread = (0.5 * g.h, rng.uniform(80, 400) * g.sx)
        placed = 0
        for _ in range(n_obj + 3):  # a few spare tries for objects that do not fit
            if placed == n_obj:
                break
            oh, ow, fill = _object_box(rng, obj, g, box[1] - box[0], box[3] - box[2])
            spot = _place(rng, occupied, box, oh, ow, near, spread)
            if spot is not None:
                _stamp(rng, cls, g, contrast, spot, fill, img, masks, occupied)
                placed += 1
        if placed == 0:  # nothing fitted (tiny image or crowded): one small object anywhere free
            small = (max(3, round(20 * g.sy)), max(3, round(20 * g.sx)))
            spot = _place(rng, occupied, box, *small, None, (1.0, 1.0), shrink=1)
            if spot is not None:
                _stamp(rng, cls, g, contrast, spot, 0.8, img, masks, occupied)
    if alpha is not None:
        _apply_band(rng, g, img, alpha)
    img += np.float32(0.5)
    np.clip(img, 0.0, 255.0, out=img)
    grey = img.astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), masks
