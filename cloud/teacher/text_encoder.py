"""``TextEncoder``: CLIP's text tower from token *embeddings*, so learned context vectors can enter.

Mirrors open_clip 3.x ``CLIP.encode_text`` after the embedding lookup. open_clip's
transformer takes (batch, length, width) input whatever its ``batch_first`` setting (it
transposes internally when needed), so CoOp code from the OpenAI-CLIP era that permutes
to (length, batch, width) first must not be copied here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cloud.teacher.teacher import Teacher
from protocol.errors import ConfigError


class TextEncoder(nn.Module):
    """Frozen text tower of a ``Teacher``: (prompts, width) embeddings -> unit-norm features."""

    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        model = teacher.model
        if not hasattr(model, "token_embedding"):
            raise ConfigError(
                f"{teacher.name}: prompt learning needs a CLIP-style text tower with "
                "token_embedding; Hugging Face text towers (CustomTextCLIP) are not supported"
            )
        self.model = model
        self.tokenizer = teacher.tokenizer

    @property
    def width(self) -> int:
        """Token embedding width."""
        return int(self.model.token_embedding.weight.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """Dtype the transformer computes in."""
        return self.model.token_embedding.weight.dtype

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), context_length) token ids on the model's device."""
        return self.tokenizer(list(texts)).to(self.model.token_embedding.weight.device)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids -> (n, context_length, width) embeddings (no positional term)."""
        return self.model.token_embedding(tokens)

    def forward(self, embeddings: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Encode prompt embeddings.

        Args:
            embeddings: (n, context_length, width) token embeddings, learned ones included.
            eot_index: (n,) position of each prompt's end-of-text token.

        Returns:
            (n, embed_dim) unit-norm text features.
        """
        model = self.model
        x = embeddings.to(self.dtype) + model.positional_embedding.to(self.dtype)
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        projection = model.text_projection
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return F.normalize(x.float(), dim=-1)
