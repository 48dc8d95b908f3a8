"""Fixtures of the cloud-device benchmark rows: a tiny cloud around the exported test student."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cloud.adaptation.synthetic import EnvironmentRenderer
from cloud.data.labelled import LabelledImages
from cloud.export.device_model import DeviceModel
from cloud.server.models import CloudModels, served_model
from protocol.config.adaptation import (
    AdaptationConfig,
    DeviceSettings,
    SessionConfig,
    SyntheticConfig,
    VPLUConfig,
)

ADAPTATION = AdaptationConfig(
    device=DeviceSettings(budget=0.25),
    vplu=VPLUConfig(steps=2),
    session=SessionConfig(buffer_size=32, min_uploads=4),
    synthetic=SyntheticConfig(count=8),
)


@pytest.fixture
def cloud_models(distilled, exported):
    student, vectors, info = distilled
    model = DeviceModel(student)

    def teacher(pixels):  # confident and fixed: the student on the un-normalised pixels
        inputs = model.neutral_inputs(vectors, batch=len(pixels))
        return 5 * model(**{**inputs, "x": pixels})[0]

    rng = np.random.default_rng(0)
    clean = LabelledImages(
        rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, len(vectors), 40),
        tuple(info.class_names),
        "clean",
    )
    renderer = EnvironmentRenderer(clean, len(vectors), ADAPTATION.synthetic)
    served = served_model(exported.manifest.parent, model)
    return CloudModels(model, vectors, info.normalization, teacher, served, ADAPTATION, renderer)


def batches(count, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, 3, 32, 32, generator=g) * 255).round() / 255 for _ in range(count)]


class TinyTeacher(nn.Module):
    """A teacher with a LayerNorm for CEMA's cloud to adapt: pixels -> logits against class vectors."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.norm = nn.LayerNorm(8 * 8 * 8)
        self.head = nn.Linear(8 * 8 * 8, embed_dim)

    def logits(self, pixels: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.head(self.norm(self.conv(pixels).flatten(1))), dim=-1)
        return 10 * features @ class_vectors.T
