"""Synthetic environment samples: the clean set rendered with the uploads' spectrum."""

import numpy as np
import pytest
import torch

from cloud.adaptation.synthetic import EnvironmentRenderer, SyntheticConfig
from cloud.data.labelled import LabelledImages
from protocol.errors import ConfigError, DataError


def clean_set(n=64, size=16, seed=0):
    """High-contrast 'garments': a bright random blob on black, and its label (0..3)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 3), np.uint8)
    labels = rng.integers(0, 4, n)
    for i, label in enumerate(labels):
        top = 2 + int(label)
        images[i, top : top + 8, 3:13] = rng.integers(150, 256)
    return images, labels


def labelled(images, labels):
    return LabelledImages(
        images, labels, tuple(f"c{i}" for i in range(8)), "clean"
    )  # 8 names: room for labels the device (4 classes) lacks


def low_contrast(images):
    """The environment: contrast cut to a quarter around mid-grey, as (n, 3, H, W) uint8."""
    pixels = 0.5 + 0.25 * (images.astype(np.float32) / 255 - 0.5)
    return torch.from_numpy((pixels * 255).round().astype(np.uint8)).permute(0, 3, 1, 2)


def test_rendered_images_take_on_the_environment_and_keep_their_labels():
    images, labels = clean_set()
    renderer = EnvironmentRenderer(
        labelled(images, labels), 4, SyntheticConfig(count=32, smoothing=0.1)
    )
    uploads = low_contrast(clean_set(seed=1)[0][:16])
    out = renderer.render(uploads)
    assert out.pixels.shape == (32, 3, 16, 16)
    assert out.targets.shape == (32, 4)
    torch.testing.assert_close(out.targets.sum(1), torch.ones(32))
    assert out.targets.max(1).values.eq(0.9).all()
    clean_std = torch.from_numpy(images).float().div(255).std()
    upload_std = uploads.float().div(255).std()
    assert abs(out.pixels.std() - upload_std) < 0.3 * abs(clean_std - upload_std)
    assert abs(out.pixels.mean() - uploads.float().div(255).mean()) < 0.05


def test_clean_uploads_render_the_clean_images_unchanged():
    images, labels = clean_set()
    renderer = EnvironmentRenderer(
        labelled(images, labels), 4, SyntheticConfig(count=8, spectrum_images=64)
    )
    gain = renderer.gain(torch.from_numpy(images).permute(0, 3, 1, 2))
    torch.testing.assert_close(gain, torch.ones_like(gain), atol=1e-4, rtol=1e-4)


def test_the_same_seed_renders_the_same_samples():
    images, labels = clean_set()
    uploads = low_contrast(images[:8])
    first = EnvironmentRenderer(labelled(images, labels), 4, SyntheticConfig(count=8)).render(
        uploads
    )
    second = EnvironmentRenderer(labelled(images, labels), 4, SyntheticConfig(count=8)).render(
        uploads
    )
    torch.testing.assert_close(first.pixels, second.pixels)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), "uint8 frames"),
        (torch.zeros(4, 3, 16, 16), "uint8 frames"),
        (torch.zeros(0, 3, 16, 16, dtype=torch.uint8), "no uploads"),
    ],
)
def test_uploads_the_renderer_cannot_use_are_refused(frames, message):
    images, labels = clean_set()
    with pytest.raises(DataError, match=message):
        EnvironmentRenderer(labelled(images, labels), 4).render(frames)


def test_a_clean_set_that_does_not_fit_the_device_is_refused():
    images, labels = clean_set()
    with pytest.raises(DataError, match="device's classes"):
        EnvironmentRenderer(labelled(images, labels + 4), 4)
    with pytest.raises(DataError, match="uint8"):
        EnvironmentRenderer(labelled(images.astype(np.float32), labels), 4)
    with pytest.raises(DataError, match="labels"):
        EnvironmentRenderer(labelled(images, labels[:3]), 4)


def test_config_is_checked():
    with pytest.raises(ConfigError):
        SyntheticConfig(count=-1)
    with pytest.raises(ConfigError):
        SyntheticConfig(smoothing=1.0)


def test_fits_with_synthetic_samples_take_the_larger_step_and_change_nothing_else():
    from dataclasses import replace

    from protocol.config.adaptation import AdaptationConfig, VPLUConfig

    base = AdaptationConfig(vplu=VPLUConfig(steps=3))
    assert base.vplu.lr < base.synthetic.fit_lr
    assert base.fit == VPLUConfig(steps=3, lr=base.synthetic.fit_lr)
    without = replace(base, synthetic=SyntheticConfig(count=0))
    assert without.fit == base.vplu  # no rendered samples: the plain step
