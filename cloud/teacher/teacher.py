"""``Teacher``: an open_clip CLIP model plus the preprocessing and tokenizer that belong to it.

Callers hand it [0, 1] pixels and plain strings; the teacher owns resizing, normalisation
and tokenisation, so no caller guesses them. It never imports open_clip itself: the
factory passes in the model and tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class TeacherPreprocess:
    """How pixels become model input.

    Attributes:
        image_size: square input size; other sizes are resized bilinearly.
        mean, std: per-channel normalisation after scaling to [0, 1].
        standardize: when true, each image is standardised by its own mean and std instead
            (the built-in teacher's choice: it removes global contrast and brightness
            changes by construction instead of learning them from data).
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    standardize: bool = False

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) in [0, 1] -> (batch, 3, image_size, image_size) model input."""
        if pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            size = (self.image_size, self.image_size)
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        if self.standardize:  # per-image z-score; mean/std are not used
            mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
            std = pixels.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
            return (pixels - mean) / std
        mean_t = pixels.new_tensor(self.mean).view(1, 3, 1, 1)
        std_t = pixels.new_tensor(self.std).view(1, 3, 1, 1)
        return (pixels - mean_t) / std_t


class Teacher(nn.Module):
    """A CLIP model that classifies images against class vectors (text features).

    Args:
        model: an open_clip ``CLIP`` (or ``CustomTextCLIP``) with ``encode_image`` and
            ``encode_text``.
        tokenizer: open_clip tokenizer for that model: list of strings -> (n, context) ids.
        preprocess: pixel preprocessing bound to the weights.
        name: where it came from, for logs and manifests.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        preprocess: TeacherPreprocess,
        name: str,
    ) -> None:
        super().__init__()
        self.model: Any = model  # open_clip's CLIP; typed loosely, its towers vary by config
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text space."""
        return int(self.model.text_projection.shape[1])

    def logit_scale(self) -> torch.Tensor:
        """CLIP's learned temperature, exponentiated (a scalar tensor)."""
        return self.model.logit_scale.exp()

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) in [0, 1] -> (batch, embed_dim) unit-norm image features."""
        x = self.preprocess(pixels.to(self.device))
        x = x.to(next(self.model.visual.parameters()).dtype)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> (len(texts), embed_dim) unit-norm text features."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def class_vectors(
        self, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE
    ) -> torch.Tensor:
        """Zero-shot class vectors: the text features of ``template`` filled with each class name."""
        return self.encode_texts([template.format(name) for name in class_names])

    def logits(self, pixels: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        """(batch, num_classes) scaled cosine similarities of the images to the class vectors."""
        return self.logit_scale() * self.encode_images(pixels) @ class_vectors.to(self.device).T
