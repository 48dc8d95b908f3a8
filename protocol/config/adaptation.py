"""``[adaptation]``: U-VPA's settings, the device's part (sent at ``Register``) and the cloud's.

Gan et al., "Cloud-Device Collaborative Adaptation to Continual Changing Environments in
the Real-world" (U-VPA), CVPR 2023 (https://arxiv.org/abs/2212.00972). What each part
does is documented where it runs: ``device/sampling.py`` and ``device/prompt_gate.py``
(the device), ``cloud/adaptation/`` (the cloud). docs/uvpa.md has the measurements behind
the defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

from protocol.config.loader import check_choices
from protocol.errors import ConfigError
from protocol.images import ImageFormat, UploadEncoding

Score = Literal["entropy", "margin", "disagreement", "random"]
Gate = Literal["entropy", "off"]
Target = Literal["ensemble", "teacher"]
StatsDtype = Literal["float16", "float32"]
FitPrecision = Literal["auto", "fp32", "bf16"]
FIT_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")  # torch device names a fit can run on
PARTS = ("norm_affine", "input_affine", "class_vectors", "prompt")  # device model inputs


@dataclass(frozen=True)
class DeviceSettings:
    """[adaptation.device]: what each device does; the server hands it out at ``Register``.

    Attributes:
        budget: the largest share of its frames a device uploads (the server refuses more).
        score: how a device ranks its frames' uncertainty: ``entropy``, ``margin``,
            ``disagreement`` (two extra passes, a mirrored and a noisy copy) or ``random``.
        random_fraction: share of the budget spent on random frames, so the cloud also sees
            typical frames of the environment.
        class_balance: spread the uncertain picks over the device's predicted classes.
        detect_shifts: watch the batch statistics and report a new environment.
        shift_sensitivity: a batch is a new environment when its first BatchNorm's
            statistics lie this many times the usual within-environment distance from the
            current one; lower reports more shifts (a camera whose world changes subtly).
        noise_std: noise of the noisy copy for ``disagreement``, as a share of 255.
        gate: ``entropy``: per batch, answer without the cloud's prompt when that run is
            surer (a second pass while a prompt is in force); ``off``: always use it.
        gate_every: a prompt that won the gate's check goes unchecked (one pass) for the
            next ``gate_every - 1`` batches, until a new prompt or a shift; 1: every batch.
        stat_mix: 1: normalise each batch with its own statistics (forward only, no
            training); 0: with the statistics the student was trained with.
        stats_every: with ``stat_mix`` 1, compute the batch statistics on every
            ``stats_every``-th batch (and whenever the input's per-channel statistics jump
            or a prompt changes the BatchNorm scale/shift) and normalise the batches
            between with the ones held; those batches run the model's held-statistics graph
            at the plain student's cost, and the prompt gate checks them on a quarter of the
            batch. 1: every batch.
        image_format: how uploaded frames travel: ``png`` (lossless; a grey frame as one
            channel), ``webp`` (lossy, at ``image_quality``) or ``raw`` pixels.
        image_quality: WebP quality, 1 to 100.
        stats_dtype: the uploaded batch statistics' precision, ``float16`` (half the bytes;
            float32 whenever a value exceeds float16's range) or ``float32``.
        stats_resend_distance: an upload carries its batch statistics only when they moved
            this far from the last ones sent (mean over channels of the mean's change in
            standard deviations plus half the log variance ratio; within one environment
            about 0.08, between two 0.2 to 0.4), on a shift, or every 16th upload; the cloud
            reuses the last ones otherwise. 0: with every upload.
    """

    budget: float = 0.1
    score: Score = "entropy"
    random_fraction: float = 0.5
    class_balance: bool = True
    detect_shifts: bool = True
    shift_sensitivity: float = 1.8
    noise_std: float = 0.02
    gate: Gate = "entropy"
    gate_every: int = 1
    stat_mix: float = 1.0
    stats_every: int = 4
    image_format: ImageFormat = "png"
    image_quality: int = 90
    stats_dtype: StatsDtype = "float16"
    stats_resend_distance: float = 0.15

    @property
    def encoding(self) -> UploadEncoding:
        """How this device's uploads travel (``protocol.images``)."""
        return UploadEncoding(
            self.image_format, self.image_quality, self.stats_dtype, self.stats_resend_distance
        )

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("gate_every", "stats_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stats_resend_distance < 0:
            raise ConfigError(
                f"stats_resend_distance must be >= 0, got {self.stats_resend_distance}"
            )
        if not 1 <= self.image_quality <= 100:
            raise ConfigError(f"image_quality must be in [1, 100], got {self.image_quality}")
        if not 0 < self.budget <= 1:
            raise ConfigError(f"budget must be in (0, 1], got {self.budget}")
        for name in ("random_fraction", "stat_mix"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.shift_sensitivity <= 0:
            raise ConfigError(f"shift_sensitivity must be > 0, got {self.shift_sensitivity}")
        if not 0 <= self.noise_std < 1:
            raise ConfigError(f"noise_std must be in [0, 1), got {self.noise_std}")


@dataclass(frozen=True)
class VPLUConfig:
    """[adaptation.vplu]: one cloud update of a device's prompt (``cloud/adaptation/vplu.py``).

    Attributes:
        parts: which device-model inputs the cloud learns: ``norm_affine`` (every encoder
            BatchNorm's scale and shift), ``input_affine``, ``class_vectors``, ``prompt``
            (an additive pixel prompt).
        steps: Adam steps per update.
        lr: Adam's step size (``synthetic.fit_lr`` replaces it when synthetic samples join).
        align_weight: weight of the KL divergence to the target.
        supervised_weight: weight of cross-entropy on the confident pseudo-labels.
        confidence_threshold: a target at least this sure is a pseudo-label.
        ema_base: share of the old prompt kept when the uploads are certain.
        ema_scale: how much the uploads' uncertainty lowers that share.
        holdout_every: every k-th upload is held out for the safety valve.
        l2: pull of the prompt towards the unadapted student.
        guided: uncertainty sets the EMA momentum and weighs samples; false: fixed.
        target: ``ensemble`` (teacher and device view, each weighted by its confidence) or
            ``teacher``.
        precision: the fit's activations: ``auto`` (bfloat16 where the hardware computes it
            natively: CPUs with AMX or AVX512-BF16, CUDA GPUs; float32 elsewhere), ``fp32``
            or ``bf16``. The prompt, the optimiser and the loss stay in float32.
        device: where fits run: ``auto`` (the first CUDA GPU when present, else the CPU),
            ``cpu``, ``cuda`` or ``cuda:N``.
    """

    parts: tuple[str, ...] = ("norm_affine",)
    steps: int = 10
    lr: float = 5e-3
    align_weight: float = 1.0
    supervised_weight: float = 0.5
    confidence_threshold: float = 0.6
    ema_base: float = 0.5
    ema_scale: float = 0.5
    holdout_every: int = 4
    l2: float = 1e-4
    guided: bool = True
    target: Target = "ensemble"
    precision: FitPrecision = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        check_choices(self)
        if not FIT_DEVICE.fullmatch(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown or not self.parts:
            raise ConfigError(
                f"parts must be a non-empty subset of {list(PARTS)}, got {list(self.parts)}"
            )
        if self.steps < 1 or self.lr <= 0:
            raise ConfigError(f"steps must be >= 1 and lr > 0, got {self.steps} and {self.lr}")
        if self.holdout_every < 2:
            raise ConfigError("holdout_every must be >= 2 (some uploads train, some are held out)")
        if not 0 <= self.confidence_threshold <= 1 or not 0 <= self.ema_base <= 1:
            raise ConfigError("confidence_threshold and ema_base must be in [0, 1]")


@dataclass(frozen=True)
class SessionConfig:
    """[adaptation.session]: each device's upload buffer in the cloud.

    Attributes:
        buffer_size: most recent uploads of the current environment kept for the fit.
        min_uploads: uploads of an environment before the cloud's first update for it.
        restart_on_shift: a reported shift starts a new environment's prompt and buffer.
    """

    buffer_size: int = 192
    min_uploads: int = 24
    restart_on_shift: bool = True

    def __post_init__(self) -> None:
        check_choices(self)
        if self.min_uploads < 2 or self.buffer_size < self.min_uploads:
            raise ConfigError(
                f"need buffer_size >= min_uploads >= 2, got {self.buffer_size} and {self.min_uploads}"
            )


@dataclass(frozen=True)
class PromptBankConfig:
    """[adaptation.prompt_bank]: how an ending environment feeds the device's shared prompt.

    Attributes:
        shared_rate: share of the ending environment's prompt folded into the shared one.
        sensitive_quantile: entries above this quantile of change are held back (VDP's
            homeostasis is ``shared_rate = 0.5``, ``sensitive_quantile = 0.8``).
    """

    shared_rate: float = 1.0
    sensitive_quantile: float = 1.0

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0 <= self.shared_rate <= 1 or not 0 < self.sensitive_quantile <= 1:
            raise ConfigError("shared_rate must be in [0, 1] and sensitive_quantile in (0, 1]")


@dataclass(frozen=True)
class SharingConfig:
    """[adaptation.sharing]: what devices pass each other through the cloud.

    Attributes:
        environment_bank: a device entering an environment any device has left starts
            from its prompt.
        share_across_devices: an unknown environment starts from the fleet's shared prompt.
        pool_uploads: a known environment's past uploads join the next device's fit there.
        max_device_weight: environments one device counts for, at most, in the shared
            prompt (a device that reports shift after shift gains no more say).
    """

    environment_bank: bool = True
    share_across_devices: bool = True
    pool_uploads: bool = False
    max_device_weight: float = 8.0

    def __post_init__(self) -> None:
        if not self.max_device_weight > 0:
            raise ConfigError(f"max_device_weight must be > 0, got {self.max_device_weight}")


@dataclass(frozen=True)
class EnvironmentBankConfig:
    """[adaptation.environment_bank]: when two devices' environments count as one.

    Attributes:
        match_distance: largest signature distance (RMS over the first BatchNorm's mean and
            log-std) of one environment.
        min_evidence: uploads an environment needs before its prompt is kept.
        max_entries: environments remembered.
        pooled_uploads: uploads each environment keeps for ``sharing.pool_uploads``.
    """

    match_distance: float = 0.05
    min_evidence: int = 24
    max_entries: int = 256
    pooled_uploads: int = 96

    def __post_init__(self) -> None:
        check_choices(self)
        if self.match_distance <= 0 or self.min_evidence < 1 or self.max_entries < 1:
            raise ConfigError("need match_distance > 0, min_evidence >= 1 and max_entries >= 1")
        if self.pooled_uploads < 0:
            raise ConfigError(f"pooled_uploads must be >= 0, got {self.pooled_uploads}")


@dataclass(frozen=True)
class SyntheticConfig:
    """[adaptation.synthetic]: clean training images rendered like each environment.

    Attributes:
        count: images from ``data.train`` rendered with the spectrum of the device's uploads
            and added to every fit (about twice the cloud's compute); 0: none.
        fit_lr: the fit's Adam step size when synthetic samples join it.
        smoothing: label smoothing of their targets.
        spectrum_images: clean images that define the clean mean spectrum.
        seed: which clean images are drawn.
    """

    count: int = 64
    fit_lr: float = 1e-2
    smoothing: float = 0.1
    spectrum_images: int = 5000
    seed: int = 0

    def __post_init__(self) -> None:
        check_choices(self)
        if self.count < 0 or self.spectrum_images < 1 or self.fit_lr <= 0:
            raise ConfigError("synthetic count must be >= 0, spectrum_images >= 1, fit_lr > 0")
        if not 0 <= self.smoothing < 1:
            raise ConfigError(f"smoothing must be in [0, 1), got {self.smoothing}")


@dataclass(frozen=True)
class AdaptationConfig:
    """[adaptation]: U-VPA on the device and in the cloud.

    Attributes:
        device: what each device does (sent to it at ``Register``).
        vplu: one cloud update.
        session: each device's buffer in the cloud.
        prompt_bank: each device's shared and environment prompts.
        sharing: what devices pass each other.
        environment_bank: the fleet's memory of environments.
        synthetic: rendered clean samples in every fit.
    """

    device: DeviceSettings = field(default_factory=DeviceSettings)
    vplu: VPLUConfig = field(default_factory=VPLUConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    prompt_bank: PromptBankConfig = field(default_factory=PromptBankConfig)
    sharing: SharingConfig = field(default_factory=SharingConfig)
    environment_bank: EnvironmentBankConfig = field(default_factory=EnvironmentBankConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    @property
    def fit(self) -> VPLUConfig:
        """The VPLU settings a fit runs with (the larger step when synthetic samples join)."""
        return replace(self.vplu, lr=self.synthetic.fit_lr) if self.synthetic.count else self.vplu
