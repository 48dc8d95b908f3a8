"""``create_teacher``: the only module that imports open_clip.

Three sources, one factory:
  (a) an open_clip model name with a pretrained tag (downloads when online, as open_clip does);
  (b) a local checkpoint file (``pretrained=/path/file``) or a ``local-dir:`` folder;
  (c) ``builtin``: cdca's own small CLIP, a ViT whose 8 x 8 patches cover the project's
      image size, trained on the project's captions by ``cdca train teacher``.
The model is frozen here, once; prompt learners train their own parameters only.
``teacher_for`` builds the project's teacher (``[teacher]``) and refuses weights that were
trained on other classes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch

from cloud import shipped
from cloud.accelerator import resolve_device
from cloud.data.class_names import describe_classes
from cloud.teacher.teacher import Teacher, TeacherPreprocess
from cloud.weights_io import read_metadata, read_weights, save_weights
from protocol.config.models import TeacherConfig
from protocol.errors import ConfigError, DataError, unknown_name

logger = logging.getLogger(__name__)

BUILTIN = "builtin"
BUILTIN_ARCH = "cdca-fmnist-vit"
BUILTIN_CONFIG = Path(__file__).resolve().parent / "configs" / f"{BUILTIN_ARCH}.json"
BUILTIN_GRID = 8  # the built-in ViT sees an 8 x 8 grid of patches whatever the image size
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def create_teacher(
    name: str = BUILTIN,
    pretrained: str | None = None,
    *,
    device: str | torch.device | None = "auto",
    precision: str = "fp32",
    load_weights: bool = True,
    checkpoint: str | Path | None = None,
    image_size: int | None = None,
) -> Teacher:
    """Build a frozen teacher.

    Args:
        name: ``builtin``, an open_clip model name (``ViT-B-32``), or ``local-dir:PATH``.
        pretrained: for open_clip names, a pretrained tag (``openai``) or a checkpoint file.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda:0``, ...
        precision: ``fp32``, ``fp16`` or ``bf16``.
        load_weights: ``False`` gives random weights (tests, or before ``cdca train teacher``).
        checkpoint: for ``builtin``, a checkpoint other than the shipped one.
        image_size: for ``builtin`` without weights, the images it will see; with weights,
            the size the checkpoint was trained at.

    Raises:
        UnknownNameError: unknown model name or precision.
        DataError: a missing or unreadable checkpoint, or a tag that cannot be downloaded.
    """
    import open_clip

    if precision not in PRECISIONS:
        raise unknown_name("precision", precision, PRECISIONS)
    target = resolve_device(device)
    if name == BUILTIN:
        model, preprocess = _builtin(open_clip, checkpoint, load_weights, image_size)
        tokenizer = open_clip.get_tokenizer(BUILTIN_ARCH)
    else:
        model, preprocess = _from_open_clip(open_clip, name, pretrained, load_weights)
        tokenizer = open_clip.get_tokenizer(name)
    model = model.to(device=target, dtype=PRECISIONS[precision]).eval().requires_grad_(False)
    return Teacher(model, tokenizer, preprocess, name=name if name != BUILTIN else BUILTIN_ARCH)


def _builtin(
    open_clip: ModuleType,
    checkpoint: str | Path | None,
    load_weights: bool,
    image_size: int | None,
) -> tuple[torch.nn.Module, TeacherPreprocess]:
    path = Path(checkpoint) if checkpoint is not None else shipped.SHIPPED_TEACHER
    if load_weights:  # the checkpoint's own size decides the architecture
        meta = read_metadata(
            path, kind="teacher checkpoint", make_it=f"cdca train teacher --out {path}"
        )
        image_size = int(meta.get("image_size", 32))
    patch = max(1, round((image_size or 32) / BUILTIN_GRID))
    vision = {
        **_builtin_config()["vision_cfg"],
        "image_size": patch * BUILTIN_GRID,
        "patch_size": patch,
    }
    open_clip.add_model_config(BUILTIN_CONFIG)
    # open_clip warns "initialized randomly" for every model built without a pretrained tag;
    # here the weights come from our own checkpoint right after, so the warning would mislead.
    quiet = logging.getLogger()  # open_clip logs through the root logger
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(BUILTIN_ARCH, pretrained=None, vision_cfg=vision)
    finally:
        quiet.setLevel(level)
    if load_weights:
        load_teacher_weights(model, path)
    # each image standardised on its own: global contrast and brightness changes vanish
    preprocess = TeacherPreprocess(patch * BUILTIN_GRID, (0.5,) * 3, (0.5,) * 3, standardize=True)
    return model, preprocess


def _builtin_config() -> dict[str, dict[str, object]]:
    import json

    return json.loads(BUILTIN_CONFIG.read_text())


def teacher_for(config: TeacherConfig, class_names: Sequence[str], image_size: int) -> Teacher:
    """The project's teacher, checked against its classes.

    The built-in teacher's checkpoint stores the classes it was trained on; another set is
    an error that says how to train the right one. An open_clip teacher knows any class by
    its name.
    """
    if (weights := shipped.builtin_teacher(config)) is not None:
        check_teacher_classes(weights, class_names)
    return create_teacher(
        config.model,
        config.pretrained or None,
        device=config.device,
        precision=config.precision,
        checkpoint=config.checkpoint,
        image_size=image_size,
    )


def check_teacher_classes(path: Path, class_names: Sequence[str]) -> None:
    """Refuse a built-in teacher checkpoint trained on other classes than ``class_names``."""
    meta = read_metadata(
        path, kind="teacher checkpoint", make_it=f"cdca train teacher --out {path}"
    )
    trained = tuple(meta.get("class_names", ()))
    if trained and trained != tuple(class_names):
        note = " (the teacher shipped with cdca)" if path == shipped.SHIPPED_TEACHER else ""
        raise ConfigError(
            f"teacher checkpoint {path}{note} was trained on {describe_classes(trained)}, the "
            f"project has {describe_classes(class_names)}. "
            "Train one on the project's data with `cdca train teacher` and set teacher.checkpoint "
            "to it, or use a pretrained open_clip teacher (teacher.model, teacher.pretrained)"
        )


def _from_open_clip(
    open_clip: ModuleType, name: str, pretrained: str | None, load_weights: bool
) -> tuple[torch.nn.Module, TeacherPreprocess]:
    is_local_dir = name.startswith("local-dir:")
    if not is_local_dir and name not in open_clip.list_models():
        raise unknown_name("open_clip model", name, open_clip.list_models())
    if is_local_dir and not Path(name.removeprefix("local-dir:")).is_dir():
        raise DataError(f"{name}: folder not found (it needs open_clip_config.json and weights)")
    if (
        pretrained
        and not is_local_dir
        and _looks_like_path(pretrained)
        and not Path(pretrained).is_file()
    ):
        raise DataError(f"checkpoint {pretrained} not found")
    try:
        model = open_clip.create_model(
            name, pretrained=None if is_local_dir else pretrained, load_weights=load_weights
        )
    except Exception as err:  # open_clip raises RuntimeError/ValueError/OSError/HF errors
        raise DataError(_load_failure(name, pretrained, err)) from err
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    preprocess = TeacherPreprocess(
        image_size=int(size[0] if isinstance(size, tuple | list) else size),
        mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
    )
    return model, preprocess


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


def _load_failure(name: str, pretrained: str | None, err: Exception) -> str:
    if pretrained and not _looks_like_path(pretrained):
        return (
            f"could not load {name} with pretrained tag {pretrained!r} ({err}). Tags are "
            "downloaded on first use: go online once, or pass a local file "
            "(--pretrained /path/weights.pt) or a local-dir: folder."
        )
    return f"could not load teacher {name} (pretrained={pretrained!r}): {err}"


def load_teacher_weights(model: torch.nn.Module, path: Path) -> dict[str, object]:
    """Load a cdca teacher checkpoint into ``model``; return its metadata."""
    tensors, meta = read_weights(
        path, kind="teacher checkpoint", make_it=f"cdca train teacher --out {path}"
    )
    try:
        model.load_state_dict({k: v.float() for k, v in tensors.items()})
    except RuntimeError as err:
        raise DataError(f"{path} is not a usable cdca teacher checkpoint: {err}") from err
    return meta


def save_teacher_weights(
    model: torch.nn.Module, path: Path, meta: dict[str, object], half: bool = True
) -> None:
    """Write the model's weights (fp16 by default, to keep the repository small) and metadata."""
    dtype = torch.float16 if half else torch.float32
    save_weights(path, {k: v.to(dtype) for k, v in model.state_dict().items()}, meta)
