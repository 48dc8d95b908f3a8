"""How far a prompt part could take the device: fitted on true labels, not on the cloud's target.

U-VPA (Gan et al., CVPR 2023, https://arxiv.org/abs/2212.00972) can only move the device as
far as its prompt parts reach. This measures that reach per domain: the parts are fitted
with Adam on the ground-truth labels of the first ``train_count`` frames of a domain (the
device's own batch statistics live, as on the device) and scored on the rest, next to
BN-adapt (the neutral prompt) on the same frames. The label fit is an upper reference, not
a method: it sees labels, several times U-VPA's uploads, and is scored offline. If the
best of the two, averaged over domains, is below a bar, no cloud target can reach that bar
with these parts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cloud.adaptation.vplu import PARTS, encoder_norm_mask
from cloud.data.formats import CorruptedDataset
from cloud.export.device_model import DeviceModel
from cloud.students.preprocess import Normalization, pixels_from_uint8
from protocol.errors import ConfigError

Progress = Callable[[str, int], None]  # (description, steps done)
NORM_SCOPES = ("encoder", "all")


@dataclass(frozen=True)
class CeilingConfig:
    """Which parts to fit, on how many labelled frames per domain, and how hard."""

    parts: tuple[str, ...] = ("norm_affine",)
    num_per_domain: int = 1000
    train_count: int = 512
    steps: int = 150
    lr: float = 1e-2
    batch_size: int = 64
    severity: int = 5
    seed: int = 0
    fit_norms: str = "encoder"  # U-VPA's cloud fits the encoder's; "all": the projector's too

    def __post_init__(self) -> None:
        unknown = set(self.parts) - set(PARTS)
        if unknown or not self.parts:
            raise ConfigError(f"--parts must be a non-empty subset of {PARTS}, got {self.parts}")
        if self.fit_norms not in NORM_SCOPES:
            raise ConfigError(f"--fit-norms must be one of {NORM_SCOPES}, got {self.fit_norms!r}")
        if not 0 < self.train_count < self.num_per_domain:
            raise ConfigError(
                f"--train ({self.train_count}) must be between 1 and --num-per-domain - 1 "
                f"({self.num_per_domain - 1}): the rest of each domain is what gets scored"
            )
        if self.steps < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ConfigError("--steps must be >= 1, --batch-size >= 2 and --lr > 0")


@dataclass(frozen=True)
class DomainCeiling:
    """Accuracy on one domain's scored frames, with the neutral prompt and the label fit."""

    domain: str
    bn_adapt: float
    label_fit: float

    @property
    def best(self) -> float:
        """What a cloud that knew when to leave the prompt neutral could reach."""
        return max(self.bn_adapt, self.label_fit)


class PromptCeiling:
    """Fits prompt parts of one device model on labelled frames; scores prompts on others."""

    def __init__(
        self,
        model: DeviceModel,
        class_vectors: torch.Tensor,
        normalization: Normalization,
        config: CeilingConfig,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.normalization = normalization
        self.config = config
        self.neutral = model.neutral_inputs(class_vectors.detach().float())
        self.neutral["stat_mix"] = torch.ones(1)  # the device's own batch statistics
        self.norm_mask = (
            encoder_norm_mask(model)
            if config.fit_norms == "encoder"
            else torch.ones(2, model.num_norm_channels)
        )

    def measure(self, images: np.ndarray, labels: np.ndarray, domain: str) -> DomainCeiling:
        """Fit on the first ``train_count`` frames, score both prompts on the rest."""
        x = self.normalization.apply(pixels_from_uint8(images))
        y = torch.tensor(labels, dtype=torch.long)  # a copy: the loaded array is read-only
        cut = self.config.train_count
        fitted = self.fit(x[:cut], y[:cut])
        return DomainCeiling(
            domain, self.accuracy(x[cut:], y[cut:], {}), self.accuracy(x[cut:], y[cut:], fitted)
        )

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Adam on cross-entropy to the true labels, over random device-sized batches.

        ``norm_affine`` moves only where ``fit_norms`` lets U-VPA's cloud move it: the
        gradient is masked, so Adam leaves the other BatchNorms exactly neutral.
        """
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed)
        params = {k: self.neutral[k].clone().requires_grad_(True) for k in cfg.parts}
        optimizer = torch.optim.Adam(list(params.values()), lr=cfg.lr)
        for _ in range(cfg.steps):
            pick = torch.randperm(len(x), generator=generator)[: cfg.batch_size]
            logits = self.model(**{**self.neutral, **params, "x": x[pick]})[0]
            loss = F.cross_entropy(logits, y[pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if "norm_affine" in params and params["norm_affine"].grad is not None:
                params["norm_affine"].grad.mul_(self.norm_mask)
            optimizer.step()
        return {k: v.detach() for k, v in params.items()}

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, prompt: dict[str, torch.Tensor]) -> float:
        """Share right, in device batches, each normalised with its own statistics."""
        hits = 0
        for start in range(0, len(x), self.config.batch_size):
            batch = slice(start, start + self.config.batch_size)
            logits = self.model(**{**self.neutral, **prompt, "x": x[batch]})[0]
            hits += int((logits.argmax(1) == y[batch]).sum())
        return hits / max(1, len(x))


def measure_ceiling(
    ceiling: PromptCeiling,
    dataset: CorruptedDataset,
    corruptions: Sequence[str],
    progress: Progress | None = None,
) -> list[DomainCeiling]:
    """Every corruption at the configured severity, each fitted from the neutral prompt."""
    cfg = ceiling.config
    rows = []
    for corruption in corruptions:
        data = dataset.load(corruption, cfg.severity, count=cfg.num_per_domain)
        rows.append(ceiling.measure(data.images, data.labels, corruption))
        if progress:
            progress(corruption, 1)
    return rows


def to_json(rows: list[DomainCeiling], config: dict[str, object]) -> dict[str, object]:
    """``ceiling.json``: the configuration, every domain and the means."""
    return {
        "config": config,
        "domains": [{**asdict(r), "best": r.best} for r in rows],
        "mean": means(rows),
    }


def means(rows: list[DomainCeiling]) -> dict[str, float]:
    """Mean accuracy over domains for BN-adapt, the label fit and the best of both."""
    return {
        "bn_adapt": float(np.mean([r.bn_adapt for r in rows])),
        "label_fit": float(np.mean([r.label_fit for r in rows])),
        "best": float(np.mean([r.best for r in rows])),
    }


def markdown(rows: list[DomainCeiling], config: dict[str, object]) -> str:
    """``ceiling.md``: one line per domain and the means, in percent."""
    settings = ", ".join(f"{k}={v}" for k, v in config.items())
    lines = [
        "# Prompt ceiling",
        "",
        f"Configuration: {settings}",
        "",
        "Accuracy (%) on each domain's frames after the first `train_count`: BN-adapt (neutral "
        "prompt) and the prompt parts fitted on the true labels of the first `train_count` "
        "frames. An upper reference for what a cloud could teach through these parts, not a "
        "method.",
        "",
        "| domain | BN-adapt | label fit | best of both | headroom |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.domain} | {100 * r.bn_adapt:.1f} | {100 * r.label_fit:.1f} | "
            f"{100 * r.best:.1f} | {100 * (r.best - r.bn_adapt):+.1f} |"
        )
    m = means(rows)
    lines.append(
        f"| **mean** | {100 * m['bn_adapt']:.1f} | {100 * m['label_fit']:.1f} | "
        f"{100 * m['best']:.1f} | {100 * (m['best'] - m['bn_adapt']):+.1f} |"
    )
    return "\n".join(lines) + "\n"
