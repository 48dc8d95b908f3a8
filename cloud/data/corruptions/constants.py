"""Severity constants for 32-px images, one tuple per severity 1..5.

The reference is Hendrycks & Dietterich's ``make_cifar_c.py`` (ICLR 2019,
https://arxiv.org/abs/1903.12261), the script that produced CIFAR-10-C. ImageNet-C's
constants (what ``imagecorruptions`` hard-codes) assume 224-px images and wipe out a 32-px
Fashion-MNIST image (the garment becomes unrecognisable at severity 1), so every value below is the CIFAR one.
Where our implementation differs from the reference, ``DEVIATIONS`` says how and why; the
generated dataset card prints both tables.
"""

from __future__ import annotations

from typing import Any

SEVERITY_CONSTANTS: dict[str, list[Any]] = {
    # noise: Gaussian sigma / Poisson photons / salt-and-pepper amount / speckle sigma
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "speckle_noise": [0.06, 0.10, 0.12, 0.16, 0.20],
    # blur: (disk radius, alias blur) / (sigma, max shift, iterations) / (radius, sigma) / zooms
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(10, 1.0), (10, 1.5), (10, 2.0), (10, 2.5), (12, 3.0)],
    "zoom_blur": [(1.0, 1.06), (1.0, 1.11), (1.0, 1.16), (1.0, 1.21), (1.0, 1.26)],
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1.0],
    # weather: (loc, scale, zoom, threshold, blur radius, blur sigma, blend)
    "snow": [
        (0.10, 0.2, 1.00, 0.60, 8, 3, 0.95),
        (0.10, 0.2, 1.00, 0.50, 10, 4, 0.90),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.90),
        (0.25, 0.3, 2.25, 0.60, 12, 6, 0.85),
        (0.30, 0.3, 1.25, 0.65, 14, 12, 0.80),
    ],
    # frost: (image weight, frost weight)
    "frost": [(1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    # fog: (strength, wibble decay of the plasma fractal)
    "fog": [(0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)],
    # spatter: (loc, scale, sigma, threshold, intensity, mud?)
    "spatter": [
        (0.62, 0.1, 0.7, 0.70, 0.5, 0),
        (0.65, 0.1, 0.8, 0.70, 0.5, 0),
        (0.65, 0.3, 1.0, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ],
    # digital
    "brightness": [0.05, 0.10, 0.15, 0.20, 0.30],
    "contrast": [0.75, 0.50, 0.40, 0.30, 0.15],
    "saturate": [(0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)],
    "jpeg_compression": [80, 65, 58, 50, 40],
    "pixelate": [0.95, 0.90, 0.85, 0.75, 0.65],
    # elastic: (alpha, sigma, affine jitter) in pixels for a 32-px image
    "elastic_transform": [
        (0.0, 0.0, 2.56),
        (1.6, 6.4, 2.24),
        (2.56, 1.92, 1.92),
        (3.2, 1.28, 1.6),
        (3.2, 0.96, 0.96),
    ],
}

DEVIATIONS: dict[str, str] = {
    "motion_blur": "ImageMagick's motion blur replaced by the NumPy kernel from imagecorruptions "
    "(same radius/sigma meaning); no Wand/ImageMagick dependency.",
    "snow": "snow layer blurred with the same NumPy motion kernel instead of ImageMagick.",
    "zoom_blur": "written as (first, last) zoom; the reference averages zooms first..last "
    "in steps of 0.01, as we do; each zoom is an OpenCV bilinear resize instead of "
    "scipy.ndimage.zoom (same crop geometry, about 20x faster).",
    "frost": "frost photographs from the imagecorruptions package, scaled by 0.2 as in the "
    "reference before a random 32x32 crop.",
}
