"""The companion's local-contrast front end: removes smooth fields and contrast, refuses unknown names."""

import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from cloud.students.preprocess import pixels_from_uint8
from cloud.teacher.front_end import apply_front_end, local_contrast_normalise
from protocol.errors import ConfigError
from tests.conftest import make_images


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1))


def test_a_smooth_haze_and_lower_contrast_barely_change_what_the_companion_sees():
    pixels = pixels_from_uint8(make_images(16)[0])
    haze = gaussian_blur(torch.rand(16, 1, 32, 32), [31, 31], [12.0, 12.0])  # a smooth field
    hazy = 0.4 * pixels + 0.5 * haze / haze.amax(dim=(2, 3), keepdim=True)
    seen, seen_hazy = local_contrast_normalise(pixels), local_contrast_normalise(hazy)
    assert _cosine(seen, seen_hazy).min() > 0.95
    # the raw pixels (what the "none" front end feeds, centred) change far more
    raw, raw_hazy = apply_front_end("none", pixels), apply_front_end("none", hazy)
    assert _cosine(raw, raw_hazy).min() < 0.9


def test_the_output_keeps_the_input_shape_and_is_finite_on_a_blank_image():
    blank = torch.zeros(2, 3, 32, 32)
    out = apply_front_end("lcn", blank)
    assert out.shape == blank.shape
    assert torch.isfinite(out).all()
    assert out.abs().max() == 0


def test_an_unknown_front_end_names_the_known_ones():
    with pytest.raises(ConfigError, match="'none', 'lcn'"):
        apply_front_end("sharpen", torch.zeros(1, 3, 8, 8))
