"""Student networks for an edge CPU: a compact CNN, and torchvision's MobileNetV3-small and ResNet-18.

Each exposes ``forward_features(x) -> (batch, feature_dim)`` and ``classifier``, so that a
projector (PromptKD) or a feature-space prompt can attach to the same place, and every one
normalises with BatchNorm, which is what the cloud's prompts adapt. The torchvision ones
name ``TORCHVISION_RENAMES``, so torchvision's own weights can start them (``student.init``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from protocol.errors import unknown_name


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class CompactCNN(nn.Module):
    """Five 3x3 conv-BN-ReLU layers in three stages, global pooling, one linear layer (~140k params)."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn(3, w),
            *_conv_bn(w, w),
            nn.MaxPool2d(2),
            *_conv_bn(w, 2 * w),
            *_conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_conv_bn(2 * w, 4 * w),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 4 * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) normalised images -> (batch, feature_dim) pooled features."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) normalised images -> (batch, num_classes) logits."""
        return self.classifier(self.forward_features(x))


class MobileNetV3Small(nn.Module):
    """torchvision's MobileNetV3-small (no pretrained weights), with the same two-part interface."""

    TORCHVISION_RENAMES = (("features.", "features.0."),)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v3_small

        net = mobilenet_v3_small(weights=None, num_classes=num_classes)
        self.features = nn.Sequential(net.features, net.avgpool, nn.Flatten())
        self.feature_dim = net.classifier[0].in_features
        self.classifier = net.classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) normalised images -> (batch, 576) pooled features."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) normalised images -> (batch, num_classes) logits."""
        return self.classifier(self.forward_features(x))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 (no pretrained weights: ``student.init`` can give them).

    Unchanged, ImageNet stem included, so torchvision's weights fit; at 32 px its last stage
    sees 1 x 1 maps, so it suits larger images (64 px and up) best.
    """

    TORCHVISION_RENAMES = (("fc.", "classifier."), ("", "features."))

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None, num_classes=num_classes)
        stages = [
            "conv1",
            "bn1",
            "relu",
            "maxpool",
            "layer1",
            "layer2",
            "layer3",
            "layer4",
            "avgpool",
        ]
        self.features = nn.Sequential(
            OrderedDict(
                [*((name, getattr(net, name)) for name in stages), ("flatten", nn.Flatten())]
            )
        )
        self.feature_dim = net.fc.in_features
        self.classifier = net.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) normalised images -> (batch, 512) pooled features."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) normalised images -> (batch, num_classes) logits."""
        return self.classifier(self.forward_features(x))


STUDENTS: dict[str, Callable[[int], nn.Module]] = {
    "compact_cnn": CompactCNN,
    "mobilenet_v3_small": MobileNetV3Small,
    "resnet18": ResNet18,
}


def list_students() -> list[str]:
    """Registry keys of the student architectures."""
    return sorted(STUDENTS)


def create_student(name: str, num_classes: int) -> nn.Module:
    """Build a randomly initialised student by registry key."""
    if name not in STUDENTS:
        raise unknown_name("student architecture", name, STUDENTS)
    return STUDENTS[name](num_classes)
