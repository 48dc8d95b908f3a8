"""CoOp: learned context vectors in front of (or around) the class name, over a frozen CLIP.

Zhou, Yang, Loy, Liu, "Learning to Prompt for Vision-Language Models", IJCV 2022
(https://arxiv.org/abs/2109.01134); code KaiyangZhou/CoOp ``trainers/coop.py``.
Unified context (one set for all classes) or class-specific context (CSC); class token
at the end (default) or in the middle; context initialised from words ("a photo of a")
or randomly from N(0, 0.02^2). Only the context vectors train.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cloud.coop.base import PromptLearner
from cloud.teacher.text_encoder import TextEncoder
from protocol.errors import ConfigError

POSITIONS = ("end", "middle")


class CoOpPromptLearner(PromptLearner):
    """``[SOS] [V]_1..[V]_M [CLASS] . [EOS]`` (end) or ``[SOS] [V]_1..M/2 [CLASS] [V]_M/2+1..M . [EOS]``.

    Args:
        text_encoder: the frozen text tower.
        class_names: one name per class.
        num_ctx_tokens: M, ignored when ``ctx_init`` is given (then M = its token count).
        ctx_init: words to initialise the context from, e.g. ``"a photo of a"``.
        class_specific: one context per class (CSC) instead of one shared context.
        class_token_position: ``"end"`` or ``"middle"``.
        seed: for the random initialisation.
    """

    def __init__(
        self,
        text_encoder: TextEncoder,
        class_names: Sequence[str],
        num_ctx_tokens: int = 16,
        ctx_init: str | None = None,
        class_specific: bool = False,
        class_token_position: str = "end",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if class_token_position not in POSITIONS:
            raise ConfigError(
                f"class_token_position must be one of {POSITIONS}, got {class_token_position!r}"
            )
        self.text_encoder = text_encoder.requires_grad_(False)
        self.class_names = tuple(class_names)
        self.position = class_token_position
        ctx = self._initial_context(ctx_init, num_ctx_tokens, class_specific, seed)
        self.num_ctx = ctx.shape[-2]
        self._check_fits()
        placeholder = " ".join(["X"] * self.num_ctx)
        tokens = text_encoder.tokenize([f"{placeholder} {name}." for name in self.class_names])
        with torch.no_grad():
            embedding = text_encoder.embed(tokens)  # (num_classes, context_length, width)
        self.token_prefix: torch.Tensor
        self.token_suffix: torch.Tensor
        self.eot_index: torch.Tensor
        self.initial_ctx: torch.Tensor
        self.register_buffer("token_prefix", embedding[:, :1].clone(), persistent=False)  # SOS
        self.register_buffer(
            "token_suffix", embedding[:, 1 + self.num_ctx :].clone(), persistent=False
        )
        self.register_buffer("eot_index", tokens.argmax(dim=-1), persistent=False)
        self.name_lengths = [self._name_length(name) for name in self.class_names]
        self.ctx = nn.Parameter(ctx)
        self.register_buffer("initial_ctx", ctx.clone(), persistent=False)

    def _initial_context(
        self, ctx_init: str | None, num_ctx: int, class_specific: bool, seed: int
    ) -> torch.Tensor:
        encoder = self.text_encoder
        if ctx_init:
            words = ctx_init.replace("_", " ").strip()
            tokens = encoder.tokenize([words])
            count = int((tokens[0] > 0).sum()) - 2  # drop SOS and EOT
            with torch.no_grad():
                ctx = encoder.embed(tokens)[0, 1 : 1 + count].float().clone()  # (M, width)
        else:
            if num_ctx < 1:
                raise ConfigError(f"num_ctx_tokens must be >= 1, got {num_ctx}")
            generator = torch.Generator().manual_seed(seed)
            ctx = torch.randn(num_ctx, encoder.width, generator=generator) * 0.02
            ctx = ctx.to(encoder.model.token_embedding.weight.device)
        if class_specific:
            ctx = ctx.unsqueeze(0).repeat(len(self.class_names), 1, 1)  # (C, M, width)
        return ctx

    def _name_length(self, name: str) -> int:
        tokens = self.text_encoder.tokenize([f"{name}."])
        return int((tokens[0] > 0).sum()) - 3  # drop SOS, "." and EOT

    def _check_fits(self) -> None:
        context_length = int(self.text_encoder.model.positional_embedding.shape[0])
        longest = max(self._name_length(n) for n in self.class_names)
        if 1 + self.num_ctx + longest + 2 > context_length:
            raise ConfigError(
                f"{self.num_ctx} context tokens plus a {longest}-token class name do not fit the "
                f"text tower's context length {context_length}; use fewer --num-ctx tokens"
            )

    def forward(self) -> torch.Tensor:
        """(num_classes, context_length, width) prompt embeddings."""
        ctx = (
            self.ctx
            if self.ctx.dim() == 3
            else self.ctx.unsqueeze(0).expand(len(self.class_names), -1, -1)
        )
        ctx = ctx.to(self.token_prefix.dtype)
        if self.position == "end":
            return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        half = self.num_ctx // 2
        prompts = []
        for i, length in enumerate(self.name_lengths):
            suffix = self.token_suffix[i : i + 1]
            prompts.append(
                torch.cat(
                    [
                        self.token_prefix[i : i + 1],
                        ctx[i : i + 1, :half],
                        suffix[:, :length],
                        ctx[i : i + 1, half:],
                        suffix[:, length:],
                    ],
                    dim=1,
                )
            )
        return torch.cat(prompts, dim=0)

    def class_vectors(self) -> torch.Tensor:
        """(num_classes, embed_dim) unit-norm text features of the learned prompts."""
        return self.text_encoder(self(), self.eot_index)

    def reset(self) -> None:
        """Restore the initial context."""
        with torch.no_grad():
            self.ctx.copy_(self.initial_ctx)
