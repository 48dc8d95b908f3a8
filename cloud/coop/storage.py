"""Saving learned CoOp prompts and turning a saved prompt back into class vectors."""

from __future__ import annotations

from pathlib import Path

import torch

from cloud.coop.coop import CoOpPromptLearner
from cloud.teacher.teacher import Teacher
from cloud.teacher.text_encoder import TextEncoder
from protocol.errors import DataError


def save_prompts(
    path: Path, learner: CoOpPromptLearner, extra: dict[str, object] | None = None
) -> None:
    """Store the context and every setting needed to rebuild the learner."""
    payload = {
        "ctx": learner.ctx.detach().cpu(),
        "class_names": list(learner.class_names),
        "class_token_position": learner.position,
        **(extra or {}),
    }
    torch.save(payload, path)


@torch.no_grad()
def load_prompt_vectors(teacher: Teacher, path: Path) -> tuple[torch.Tensor, list[str]]:
    """Class vectors (num_classes, embed_dim) of a saved CoOp prompt, and its class names."""
    if not path.is_file():
        raise DataError(f"prompt file {path} not found; create it with `cdca cloud learn-prompts`")
    try:
        saved = torch.load(path, weights_only=True)
        ctx = saved["ctx"]
        names = list(saved["class_names"])
        learner = CoOpPromptLearner(
            TextEncoder(teacher),
            names,
            num_ctx_tokens=int(ctx.shape[-2]),
            class_specific=ctx.dim() == 3,
            class_token_position=saved["class_token_position"],
        )
        learner.ctx.copy_(ctx)
    except (KeyError, RuntimeError, OSError) as err:
        raise DataError(f"{path} is not a usable CoOp prompt file ({err})") from err
    return learner.class_vectors(), names
