"""The built-in simulated smartphone camera: SIDD-layout noisy/clean pairs, fully offline.

``generate_dataset`` writes exactly the SIDD-Small sRGB layout (see :mod:`sidd_layout`), so every
later stage reads simulated and real data through the same code.

Clean content (the scene decides the family, so holding out scenes holds out the photo, or
the layout and palette of the discs; the dead-leaves scenes share their three texture photos):
  scenes 1-6   crops/rescales of colour photos shipped inside the scikit-image wheel (astronaut,
               coffee, chelsea, rocket, immunohistochemistry, motorcycle); no download.
  scenes 7-10  procedural dead leaves: discs front to back, power-law radii p(r) ~ r^-3, colours
               from a per-scene palette (warm, cool, saturated small-scale, neutral), some discs
               with a linear gradient or a scikit-image texture (grass, gravel, brick), then a
               Gaussian optical blur sigma U(0.5, 1.1) px.

Camera model (Brooks et al. 2019, "Unprocessing Images for Learned Raw Denoising"), all in float64:
  1. unprocess sRGB -> linear raw: inverse smoothstep tone curve, gamma 2.2 expansion, inverse
     colour correction (rgb->cam from a random convex mix of Brooks's 4 XYZ->cam matrices,
     which are not those of the phones named: the phone label weights one of them up, so it
     picks a colour bias, not a phone's noise), inverse white balance (red gain U(1.9, 2.4),
     blue U(1.5, 1.9), the
     sub-range set by the illuminant: 3200 K low red/high blue ... 5500 K high red/low blue, with
     Brooks's highlight-preserving inversion) and an exposure factor set by the brightness
     (L U(0.6, 0.75), N U(0.75, 0.9), H U(0.9, 1.0); Brooks: 1/rgb_gain ~ N(0.8, 0.1)).
  2. RGGB Bayer mosaic.
  3. Poisson-Gaussian noise, variance = shot * x + read: x/shot photo-electrons drawn from a
     Poisson law plus Gaussian read noise. log(shot) is linear in log(ISO), mapping ISO 50..10000
     onto [log 1e-4, log 1.2e-2] (+ N(0, 0.1) jitter, clipped to that range);
     log(read) = 2.18 log(shot) + 1.20 + N(0, 0.26).
  4. white balance on the mosaic, clipped to the sensor's white level (Brooks's order).
  5. Malvar-He-Cutler gradient-corrected 5x5 demosaic (cv2.filter2D; the edge-aware OpenCV
     demosaic gives negatively correlated colour noise, unlike real phones).
  6. re-process: cam->rgb matrix, clip, gamma 1/2.2, smoothstep tone curve, quantise to 8 bits;
     JPEG at quality U{60..95} (libjpeg's 4:2:0 chroma, as a phone's JPEG) on half the noisy
     images.
  The clean ground truth is the same image through steps 1, 2, 4, 5 and 6 without noise or JPEG,
  so a pair is aligned and differs by noise, and for half of them by JPEG artefacts too, which
  at low ISO weigh more than the noise (noisy PSNR about 20-40 dB, like SIDD).

Conditions per instance: brightness L/N/H uniform; ISO from 50..10000, biased high in low light
and low in bright light; shutter 1/t from the exposure equation (light x ISO / exposure);
illuminant 3200/4400/5500 K; phone from ``sidd_layout.PHONES``.

Determinism: each instance draws from ``numpy.random.default_rng([seed, index])`` (conditions,
content and noise on separate spawned streams, so names do not depend on the image size). All
arithmetic is float64, elementwise or in OpenCV filters, with no BLAS/LAPACK call (their kernels
round differently on different CPUs) and nothing that depends on the thread count, so the same
parameters give byte-identical PNGs on another machine (a last-bit libm difference could flip an
8-bit rounding only with negligible probability).
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from tqdm import tqdm

from denoise.data.sidd_layout import (
    ARCHIVE_ROOT,
    DATA_DIR,
    GT_NAME,
    NOISY_NAME,
    PHONES,
    Instance,
)
from denoise.errors import DenoiseError
from denoise.fileio import atomic_path, write_errors_named, write_rgb8
from denoise.metrics import to_uint8
from denoise.params import SEED_RULE, valid_seed

ISOS = (50, 100, 200, 400, 800, 1600, 3200, 6400, 10000)
ILLUMINANTS = (3200, 4400, 5500)
SCENES = 10
SHOT_RANGE = (1e-4, 1.2e-2)
JPEG_QUALITY = (60, 95)
JPEG_FRACTION = 0.5

# Brightness: relative scene light (for the shutter), exposure factor range, preferred ISO index.
_LIGHT = {"L": 1.0, "N": 4.0, "H": 16.0}
_EXPOSURE = {"L": (0.6, 0.75), "N": (0.75, 0.9), "H": (0.9, 1.0)}
_ISO_CENTRE = {"L": 5.5, "N": 3.5, "H": 1.5}
_SHUTTER_CONSTANT = 16.0  # 1/t = light * ISO / (16 * exposure): normal light, ISO 400 -> 1/100 s

# XYZ -> camera matrices (Brooks et al. 2019) and the sRGB (D65) RGB -> XYZ matrix.
# fmt: off
_XYZ2CAMS = np.array([
    [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
    [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
    [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
    [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.5181]],
])
_RGB2XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                     [0.2126729, 0.7151522, 0.0721750],
                     [0.0193339, 0.1191920, 0.9503041]])
# fmt: on
_PHONE_CCM = {"GP": 0, "IP": 1, "S6": 2, "N6": 3}  # G4: an unbiased mix


@dataclass(frozen=True)
class CameraSettings:
    """Everything the camera model needs for one exposure (all sampled per instance)."""

    shot: float  # shot-noise gain: variance per unit of linear signal
    read: float  # read-noise variance
    red_gain: float
    blue_gain: float
    exposure: float  # linear signal scale before the sensor (under-exposure < 1)
    rgb2cam: np.ndarray  # 3x3, rows sum to 1
    jpeg_quality: int | None  # None: the noisy image is saved without JPEG


# ----------------------------------------------------------------------------- conditions


def _iso_weights(brightness: str) -> np.ndarray:
    k = np.arange(len(ISOS), dtype=np.float64)
    w = np.exp(-((k - _ISO_CENTRE[brightness]) ** 2) / (2 * 1.6**2))
    return w / w.sum()


def shot_for_iso(iso: float) -> float:
    """Shot-noise gain for an ISO: log-linear from ISO 50 -> 1e-4 to ISO 10000 -> 1.2e-2."""
    t = (math.log(iso) - math.log(ISOS[0])) / (math.log(ISOS[-1]) - math.log(ISOS[0]))
    lo, hi = (math.log(v) for v in SHOT_RANGE)
    return math.exp(lo + t * (hi - lo))


def sample_instance(index: int, rng: np.random.Generator) -> tuple[Instance, CameraSettings]:
    """Draw the shooting conditions of instance ``index`` (0-based) and its camera settings."""
    brightness = str(rng.choice(["L", "N", "H"]))
    iso = int(ISOS[rng.choice(len(ISOS), p=_iso_weights(brightness))])
    phone = str(rng.choice(sorted(PHONES)))
    illuminant_idx = int(rng.integers(len(ILLUMINANTS)))
    exposure = float(rng.uniform(*_EXPOSURE[brightness]))
    shutter = round(_LIGHT[brightness] * iso / (_SHUTTER_CONSTANT * exposure))

    lo, hi = (math.log(v) for v in SHOT_RANGE)
    log_shot = float(np.clip(math.log(shot_for_iso(iso)) + rng.normal(0.0, 0.1), lo, hi))
    log_read = 2.18 * log_shot + 1.20 + rng.normal(0.0, 0.26)

    # Illuminant picks a third of each gain range: warm light needs less red, more blue gain.
    third = rng.uniform(size=2)
    red_gain = 1.9 + (illuminant_idx + third[0]) / 3 * (2.4 - 1.9)
    blue_gain = 1.9 - (illuminant_idx + third[1]) / 3 * (1.9 - 1.5)

    weights = rng.uniform(size=(len(_XYZ2CAMS), 1, 1))
    if phone in _PHONE_CCM:
        weights[_PHONE_CCM[phone]] += 1.5
    xyz2cam = (_XYZ2CAMS * weights).sum(axis=0) / weights.sum()
    rgb2cam = (xyz2cam[:, :, None] * _RGB2XYZ[None, :, :]).sum(axis=1)  # no BLAS, see below
    rgb2cam = rgb2cam / rgb2cam.sum(axis=1, keepdims=True)

    jpeg = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    jpeg_quality = jpeg if rng.uniform() < JPEG_FRACTION else None

    instance = Instance(
        id=index + 1,
        scene=index % SCENES + 1,
        phone=phone,
        iso=iso,
        shutter=max(1, min(shutter, 99999)),
        illuminant=ILLUMINANTS[illuminant_idx],
        brightness=brightness,
    )
    settings = CameraSettings(
        shot=math.exp(log_shot),
        read=math.exp(log_read),
        red_gain=red_gain,
        blue_gain=blue_gain,
        exposure=exposure,
        rgb2cam=rgb2cam,
        jpeg_quality=jpeg_quality,
    )
    return instance, settings


# ----------------------------------------------------------------------------- clean content

_PHOTOS = {
    1: "astronaut",
    2: "coffee",
    3: "chelsea",
    4: "rocket",
    5: "immunohistochemistry",
    6: "stereo_motorcycle",
}
_TEXTURES = ("grass", "gravel", "brick")


@dataclass(frozen=True)
class _Leaves:
    """A dead-leaves content family: palette and disc statistics."""

    hue: float | None  # palette centre in [0, 1); None: any hue
    hue_spread: float
    saturation: tuple[float, float]
    radius: tuple[float, float]  # min, max as fractions of min(height, width)
    p_gradient: float
    p_texture: float


_LEAVES = {
    7: _Leaves(0.07, 0.06, (0.2, 0.8), (0.015, 0.35), 0.2, 0.5),  # warm, textured
    8: _Leaves(0.58, 0.08, (0.1, 0.7), (0.015, 0.40), 0.6, 0.1),  # cool, smooth gradients
    9: _Leaves(None, 0.0, (0.5, 1.0), (0.010, 0.15), 0.2, 0.2),  # saturated, fine detail
    10: _Leaves(None, 0.0, (0.0, 0.2), (0.015, 0.35), 0.3, 0.6),  # neutral, textured
}


@functools.cache
def _photo(name: str) -> np.ndarray:
    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[0]
    return np.ascontiguousarray(img[..., :3]).astype(np.float64) / 255.0


@functools.cache
def _texture(name: str) -> np.ndarray:
    tex = getattr(skimage.data, name)().astype(np.float64)
    return (tex - tex.mean()) / tex.std()


def _photo_crop(name: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a bundled photo, rescaled to ``(height, width)``, maybe mirrored."""
    src = _photo(name)
    fit = max(height / src.shape[0], width / src.shape[1])  # smallest scale that fits
    scale = fit * math.exp(rng.uniform(0.0, math.log(2.5)))
    scale = min(scale, max(fit, 1.5))  # upsample at most 1.5x unless the photo is too small
    ch = min(src.shape[0], math.ceil(height / scale))
    cw = min(src.shape[1], math.ceil(width / scale))
    y = int(rng.integers(src.shape[0] - ch + 1))
    x = int(rng.integers(src.shape[1] - cw + 1))
    crop = src[y : y + ch, x : x + cw]
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    out = cv2.resize(crop, (width, height), interpolation=interp)
    if rng.uniform() < 0.5:
        out = out[:, ::-1]
    return np.clip(out, 0.0, 1.0)


def _leaf_colour(spec: _Leaves, rng: np.random.Generator) -> np.ndarray:
    hue = rng.uniform() if spec.hue is None else (spec.hue + rng.normal(0, spec.hue_spread)) % 1
    sat = rng.uniform(*spec.saturation)
    val = rng.uniform(0.08, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val))


def _dead_leaves(
    spec: _Leaves, height: int, width: int, rng: np.random.Generator, max_discs: int = 6000
) -> np.ndarray:
    """Dead leaves rendered front to back: each disc fills only pixels still uncovered."""
    img = np.zeros((height, width, 3))
    empty = np.ones((height, width), dtype=bool)
    side = min(height, width)
    rmin, rmax = max(1.0, spec.radius[0] * side), spec.radius[1] * side
    a, b = rmin**-2, rmax**-2  # inverse CDF of p(r) ~ r^-3 on [rmin, rmax]
    textures = [_texture(t) for t in _TEXTURES]
    for i in range(max_discs):
        if i % 64 == 0 and not empty.any():
            break
        r = (a + rng.uniform() * (b - a)) ** -0.5
        cy, cx = rng.uniform(-r, height + r), rng.uniform(-r, width + r)
        colour = _leaf_colour(spec, rng)
        kind = rng.uniform()
        y0, y1 = max(0, int(cy - r)), min(height, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(width, int(cx + r) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dy, dx = yy - cy, xx - cx
        mask = (dy * dy + dx * dx <= r * r) & empty[y0:y1, x0:x1]
        if not mask.any():
            continue
        if kind < spec.p_gradient:
            theta, slope = rng.uniform(0, 2 * math.pi), rng.uniform(-0.6, 0.6)
            shade = 1.0 + slope * (dx * math.cos(theta) + dy * math.sin(theta)) / r
        elif kind < spec.p_gradient + spec.p_texture:
            tex = textures[int(rng.integers(len(textures)))]
            oy, ox = (int(v) for v in rng.integers(0, tex.shape[0], size=2))
            patch = tex[
                (np.arange(y0, y1)[:, None] + oy) % tex.shape[0],
                (np.arange(x0, x1)[None, :] + ox) % tex.shape[1],
            ]
            shade = 1.0 + rng.uniform(0.1, 0.35) * patch
        else:
            shade = np.ones_like(dy)
        fill = np.clip(colour[None, None, :] * shade[..., None], 0.0, 1.0)
        img[y0:y1, x0:x1][mask] = fill[mask]
        empty[y0:y1, x0:x1] &= ~mask
    img[empty] = _leaf_colour(spec, rng)  # the last leaf: whatever the cap left uncovered
    sigma = rng.uniform(0.5, 1.1)
    return np.clip(cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101), 0, 1)


def clean_image(scene: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Clean sRGB content in [0, 1], ``(height, width, 3)`` float64, from the scene's family."""
    if scene in _PHOTOS:
        return _photo_crop(_PHOTOS[scene], height, width, rng)
    if scene in _LEAVES:
        return _dead_leaves(_LEAVES[scene], height, width, rng)
    raise ValueError(f"scene {scene} is not one of 1..{SCENES}")


# ----------------------------------------------------------------------------- camera model


def _colour_transform(img: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``img @ matrix.T`` written out elementwise: BLAS kernels differ between CPUs, this not."""
    return sum(img[..., j : j + 1] * matrix[:, j] for j in range(3))


def _inverse_3x3(m: np.ndarray) -> np.ndarray:
    """Inverse by cofactors (LAPACK, like BLAS, may round differently on another CPU)."""
    cof = np.stack([np.cross(m[1], m[2]), np.cross(m[2], m[0]), np.cross(m[0], m[1])], axis=1)
    return cof / float((m[0] * cof[:, 0]).sum())


def _inverse_smoothstep(y: np.ndarray) -> np.ndarray:
    y = np.clip(y, 0.0, 1.0)
    return 0.5 - np.sin(np.arcsin(1.0 - 2.0 * y) / 3.0)


def unprocess(srgb: np.ndarray, cam: CameraSettings) -> np.ndarray:
    """sRGB in [0, 1] -> linear camera RGB in [0, 1] (before the mosaic)."""
    lin = np.maximum(_inverse_smoothstep(srgb), 1e-8) ** 2.2
    raw = _colour_transform(lin, cam.rgb2cam)
    gains = np.array([1.0 / cam.red_gain, 1.0, 1.0 / cam.blue_gain]) * cam.exposure
    # Brooks's safe inversion: near white the gains fade to 1 so highlights stay saturated.
    grey = raw.mean(axis=-1, keepdims=True)
    fade = (np.maximum(grey - 0.9, 0.0) / 0.1) ** 2
    raw = raw * np.maximum(fade + (1.0 - fade) * gains, gains)
    return np.clip(raw, 0.0, 1.0)


def mosaic(raw_rgb: np.ndarray) -> np.ndarray:
    """RGGB Bayer mosaic: R at (even, even), G at (even, odd) and (odd, even), B at (odd, odd)."""
    bayer = raw_rgb[..., 1].copy()
    bayer[0::2, 0::2] = raw_rgb[0::2, 0::2, 0]
    bayer[1::2, 1::2] = raw_rgb[1::2, 1::2, 2]
    return bayer


# Malvar, He, Cutler (2004), "High-quality linear interpolation for demosaicing of Bayer-patterned
# color images": bilinear interpolation corrected by the Laplacian of the channel sampled there.
# fmt: off
_G_AT_RB = np.array([[0, 0, -1, 0, 0],
                     [0, 0, 2, 0, 0],
                     [-1, 2, 4, 2, -1],
                     [0, 0, 2, 0, 0],
                     [0, 0, -1, 0, 0]]) / 8.0
_RB_AT_G_ROW = np.array([[0, 0, 0.5, 0, 0],  # R (B) at a G whose row holds R (B)
                         [0, -1, 0, -1, 0],
                         [-1, 4, 5, 4, -1],
                         [0, -1, 0, -1, 0],
                         [0, 0, 0.5, 0, 0]]) / 8.0
_RB_AT_G_COL = _RB_AT_G_ROW.T  # R (B) at a G whose column holds R (B)
_RB_AT_BR = np.array([[0, 0, -1.5, 0, 0],
                      [0, 2, 0, 2, 0],
                      [-1.5, 0, 6, 0, -1.5],
                      [0, 2, 0, 2, 0],
                      [0, 0, -1.5, 0, 0]]) / 8.0
# fmt: on


def demosaic_malvar(bayer: np.ndarray) -> np.ndarray:
    """Malvar-He-Cutler demosaic of an RGGB mosaic (float64 ``(H, W)`` -> ``(H, W, 3)``)."""
    bayer = np.asarray(bayer, dtype=np.float64)

    def conv(kernel: np.ndarray) -> np.ndarray:
        # Reflect-101 keeps the CFA phase at the borders; the kernels are symmetric.
        return cv2.filter2D(bayer, cv2.CV_64F, kernel, borderType=cv2.BORDER_REFLECT_101)

    g_at_rb, at_g_row, at_g_col, at_br = (
        conv(k) for k in (_G_AT_RB, _RB_AT_G_ROW, _RB_AT_G_COL, _RB_AT_BR)
    )
    r, g, b = bayer.copy(), bayer.copy(), bayer.copy()
    ee, eo, oe, oo = (np.s_[0::2, 0::2], np.s_[0::2, 1::2], np.s_[1::2, 0::2], np.s_[1::2, 1::2])
    g[ee], g[oo] = g_at_rb[ee], g_at_rb[oo]
    r[eo], r[oe], r[oo] = at_g_row[eo], at_g_col[oe], at_br[oo]
    b[oe], b[eo], b[ee] = at_g_row[oe], at_g_col[eo], at_br[ee]
    return np.stack([r, g, b], axis=-1)


def process(bayer: np.ndarray, cam: CameraSettings) -> np.ndarray:
    """RGGB mosaic -> 8-bit sRGB: white balance, clip, demosaic, colour matrix, gamma, tone
    curve, in Brooks's order. The gains go on the mosaic and the clip to the sensor's white
    level comes before the demosaic: a saturated pixel is white, not magenta (a raw 1.0 times
    the red and blue gains, clipped only after the colour matrix, left green short), and
    Malvar's gradient correction, which assumes channels on one scale, sees balanced ones
    (on the unbalanced mosaic it tripled the false colour at neutral edges)."""
    gain = np.array([cam.red_gain, 1.0, cam.blue_gain])
    balanced = np.clip(bayer * mosaic(np.broadcast_to(gain, (*bayer.shape, 3))), 0.0, 1.0)
    rgb = demosaic_malvar(balanced)
    rgb = np.clip(_colour_transform(rgb, _inverse_3x3(cam.rgb2cam)), 0.0, 1.0)
    rgb = np.maximum(rgb, 1e-8) ** (1.0 / 2.2)
    return to_uint8(3.0 * rgb**2 - 2.0 * rgb**3)


def add_sensor_noise(
    bayer: np.ndarray, cam: CameraSettings, rng: np.random.Generator
) -> np.ndarray:
    """Poisson-Gaussian noise, variance ``shot * x + read``, on a linear raw mosaic."""
    electrons = rng.poisson(np.maximum(bayer, 0.0) / cam.shot).astype(np.float64)
    return electrons * cam.shot + rng.normal(0.0, math.sqrt(cam.read), size=bayer.shape)


def jpeg_round_trip(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode an RGB uint8 image as JPEG (deterministic libjpeg, 4:2:0)."""
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def simulate_pair(
    clean_srgb: np.ndarray, cam: CameraSettings, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Photograph clean sRGB content in [0, 1]: the aligned ``(gt, noisy)`` uint8 pair."""
    bayer = mosaic(unprocess(clean_srgb, cam))
    gt = process(bayer, cam)
    noisy = process(add_sensor_noise(bayer, cam, rng), cam)
    if cam.jpeg_quality is not None:
        noisy = jpeg_round_trip(noisy, cam.jpeg_quality)
    return gt, noisy


# ----------------------------------------------------------------------------- the dataset


def settings_problem(instances: int, height: int, width: int, seed: int) -> str | None:
    """What is wrong with the settings of :func:`generate_dataset` (None: nothing)."""
    if not 1 <= instances <= 9999:
        return f"instances {instances}: expected 1..9999"
    if height < 16 or width < 16:
        return f"image size {height}x{width}: expected >= 16x16"
    if not valid_seed(seed):
        return f"seed {seed}: {SEED_RULE}"
    return None


def generate_dataset(
    out_dir: str | Path,
    *,
    instances: int = 160,
    height: int = 384,
    width: int = 512,
    seed: int = 2026,
    progress: bool = True,
) -> list[Instance]:
    """Write a simulated SIDD-Small sRGB dataset under ``out_dir`` and return its instances.

    ``out_dir/SIDD_Small_sRGB_Only/Data/<instance>/{GT,NOISY}_SRGB_010.PNG`` plus
    ``Scene_Instances.txt``; ``out_dir`` is replaced atomically, so an interrupted run leaves
    the previous contents (or nothing). Deterministic in ``seed``.
    """
    problem = settings_problem(instances, height, width, seed)
    if problem:
        raise DenoiseError(f"synthetic camera: {problem}")

    made: list[Instance] = []
    with write_errors_named(out_dir), atomic_path(out_dir) as staged:
        root = staged / ARCHIVE_ROOT
        for index in tqdm(
            range(instances), desc="synthetic camera", unit="pair", disable=not progress
        ):
            conditions, content, noise = (
                np.random.default_rng(s) for s in np.random.SeedSequence([seed, index]).spawn(3)
            )
            instance, cam = sample_instance(index, conditions)
            gt, noisy = simulate_pair(
                clean_image(instance.scene, height, width, content), cam, noise
            )
            folder = root / DATA_DIR / instance.name
            folder.mkdir(parents=True)
            write_rgb8(folder / GT_NAME, gt)
            write_rgb8(folder / NOISY_NAME, noisy)
            made.append(instance)
        (root / "Scene_Instances.txt").write_text("".join(f"{i.name}\n" for i in made))
    return made
