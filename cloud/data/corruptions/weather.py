"""Weather corruptions (snow, frost, fog, spatter) on float images in [0, 1].

Reference: Hendrycks & Dietterich, ICLR 2019 (https://arxiv.org/abs/1903.12261),
``make_cifar_c.py``, with CIFAR constants from ``constants.py``. The frost photographs
ship with ``imagecorruptions-imaug``; the plasma fractal is re-written here so that it
draws from an explicit generator instead of NumPy's global state.
"""

from __future__ import annotations

import functools
import importlib.resources

import cv2
import numpy as np
from imagecorruptions.corruptions import _motion_blur, clipped_zoom
from skimage.filters import gaussian

FloatImage = np.ndarray

_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
_FROST_SCALE = 0.2  # the CIFAR script shrinks the photographs before cropping 32x32


def plasma_fractal(
    rng: np.random.Generator, mapsize: int = 32, wibbledecay: float = 3.0
) -> np.ndarray:
    """Diamond-square height map in [0, 1] of shape (mapsize, mapsize); mapsize a power of two."""
    maparray = np.zeros((mapsize, mapsize), dtype=np.float64)
    stepsize = mapsize
    wibble = 100.0

    def wibbled_mean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        square = corners + np.roll(corners, shift=-1, axis=0)
        square += np.roll(square, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbled_mean(square)
        centres = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        left = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbled_mean(left)
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbled_mean(top)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def fog(x: FloatImage, params: tuple[float, float], rng: np.random.Generator) -> FloatImage:
    """Add a plasma-fractal haze of ``strength`` and renormalise to the image's maximum."""
    strength, decay = params
    max_val = x.max()
    size = _next_pow2(max(x.shape[:2]))
    haze = plasma_fractal(rng, mapsize=size, wibbledecay=decay)[: x.shape[0], : x.shape[1]]
    hazy = x + strength * haze[..., np.newaxis]
    return np.clip(hazy * max_val / (max_val + strength), 0.0, 1.0)


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


@functools.cache
def _frost_photos() -> tuple[np.ndarray, ...]:
    photos = []
    for name in _FROST_FILES:
        ref = importlib.resources.files("imagecorruptions") / "frost" / name
        with importlib.resources.as_file(ref) as path:
            bgr = cv2.imread(str(path))
        if bgr is None:
            raise FileNotFoundError(f"frost photograph {path} is missing from imagecorruptions")
        small = cv2.resize(bgr, (0, 0), fx=_FROST_SCALE, fy=_FROST_SCALE)
        photos.append(small[..., ::-1].astype(np.float32) / 255.0)  # BGR -> RGB
    return tuple(photos)


def frost(x: FloatImage, params: tuple[float, float], rng: np.random.Generator) -> FloatImage:
    """Blend a random crop of a frost photograph over the image."""
    image_weight, frost_weight = params
    photo = _frost_photos()[int(rng.integers(len(_FROST_FILES)))]
    top = int(rng.integers(0, photo.shape[0] - x.shape[0]))
    left = int(rng.integers(0, photo.shape[1] - x.shape[1]))
    crop = photo[top : top + x.shape[0], left : left + x.shape[1]]
    return np.clip(image_weight * x + frost_weight * crop, 0.0, 1.0)


def snow(x: FloatImage, params: tuple, rng: np.random.Generator) -> FloatImage:
    """Falling snow: a zoomed, thresholded, motion-blurred noise layer plus a whitening blend."""
    loc, scale, zoom, threshold, radius, sigma, blend = params
    height, width = x.shape[:2]
    layer = rng.normal(loc=loc, scale=scale, size=(height, width))
    layer = clipped_zoom(layer[..., np.newaxis], zoom)[:height, :width, 0]
    layer[layer < threshold] = 0
    layer = np.clip(layer, 0, 1)
    layer = _motion_blur(layer, radius=radius, sigma=sigma, angle=rng.uniform(-135, -45))
    layer = (np.round(np.clip(layer, 0, 1) * 255) / 255.0)[..., np.newaxis]
    grey = cv2.cvtColor(x.astype(np.float32), cv2.COLOR_RGB2GRAY)[..., np.newaxis]
    whitened = blend * x + (1 - blend) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(whitened + layer + np.rot90(layer, k=2), 0.0, 1.0)


def spatter(x: FloatImage, params: tuple, rng: np.random.Generator) -> FloatImage:
    """Water droplets (pale turquoise) at low severities, mud (brown) at high ones."""
    loc, scale, sigma, threshold, intensity, is_mud = params
    liquid = gaussian(rng.normal(loc=loc, scale=scale, size=x.shape[:2]), sigma=sigma)
    liquid[liquid < threshold] = 0
    if is_mud:
        mask = gaussian((liquid > threshold).astype(np.float32), sigma=intensity)
        mask[mask < 0.8] = 0
        mud = np.array([63, 42, 20], dtype=np.float32) / 255.0 * mask[..., np.newaxis]
        return np.clip(x * (1 - mask[..., np.newaxis]) + mud, 0.0, 1.0)
    return np.clip(x + _water_layer(liquid, intensity), 0.0, 1.0)


def _water_layer(liquid: np.ndarray, intensity: float) -> np.ndarray:
    """Droplet highlights of the reference's water branch, as an additive RGB layer."""
    liquid_u8 = (liquid * 255).astype(np.uint8)
    dist = 255 - cv2.Canny(liquid_u8, 50, 150)
    dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, emboss), (3, 3)).astype(np.float32)
    strength = liquid_u8 * dist
    peak = strength.max()
    if peak <= 0:  # no droplet on this image
        return np.zeros((*liquid.shape, 3), dtype=np.float32)
    strength = strength / peak * intensity
    colour = np.array([175, 238, 238], dtype=np.float32) / 255.0  # pale turquoise (RGB)
    return strength[..., np.newaxis] * colour
