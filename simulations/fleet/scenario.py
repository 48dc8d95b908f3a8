"""A fleet scenario: how many devices, which stream each walks through, how the cloud teaches.

The built-in default is the README's main job: 4 devices, each with its own order of the 15
Fashion-MNIST-C corruptions at severity 5, the shipped teacher and distilled student, 10 %
uploads, the environment bank on. A TOML file may set any field (unknown keys are refused
with their names); command-line flags override both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import tomllib

from device.prompt_gate import check_gate
from protocol.errors import ConfigError

ENGINES = ("inprocess", "grpc", "flower-sim", "flower")
STREAMS = ("continual", "gradual")
BUILT_IN = Path(__file__).resolve().parent / "scenarios"  # `--scenario NAME` finds NAME.toml here
PEERS = ("source", "bn_adapt", "tent")  # the on-device methods every report compares with


@dataclass(frozen=True)
class Scenario:
    """Everything one simulation needs; ``resolved()`` is what lands in the run folder."""

    engine: str = "inprocess"
    devices: int = 4
    data: str = "data/fashion-mnist-c"
    corruptions: tuple[str, ...] = ()  # empty: the 15 test corruptions
    stream: str = "continual"  # or "gradual": severity 1->5->1 within each corruption
    severity: int = 5
    per_domain: int = 500  # frames per corruption per device
    batch_size: int = 64
    batches_per_round: int = 1  # device batches between two prompt deliveries
    budget: float = 0.1
    min_uploads: int = 24  # uploads of an environment before the cloud's first update for it
    score: str = "entropy"
    # the device answers without the cloud's prompt on a batch where that is surer
    # (device.prompt_gate); "off" always answers with the prompt
    prompt_gate: str = "entropy"
    environment_bank: bool = True
    share_across_devices: bool = True
    pool_uploads: bool = False  # a known environment's past uploads join the next device's fit
    # also run U-VPA without the bank, to measure what it brings: off by default because
    # it is one more U-VPA run, about 40 % of the main job's time (docs/simulate.md)
    compare_bank: bool = False
    peers: tuple[str, ...] = PEERS
    student: str = ""  # empty: the shipped distilled student
    teacher: str = "builtin"
    teacher_checkpoint: str = ""  # empty: the shipped built-in teacher
    # a `cdca train companion` file (cloud/teacher/companion.py) whose view joins U-VPA's
    # target, e.g. "cloud/checkpoints/companion_cnn.safetensors"; empty: none (the default:
    # it measured 86.2 against 86.3 without it here, see docs/simulate.md)
    companion: str = ""
    # clean training images the cloud renders like each device's environment and adds to
    # every fit (cloud/adaptation/synthetic.py). 64, not the benchmark's 192: here it gave
    # 87.3 against 86.4 without them in 426 s against 230-290 s; 192 gave no more at 853 s
    # (docs/simulate.md). Needs the clean set of the student's classes (Fashion-MNIST's);
    # 0: none, for a student of other classes
    synthetic: int = 64
    seed: int = 0
    round_timeout_s: float = 120.0  # flower engines: a round waits this long for replies
    min_devices: int = 1  # flower engines: fewest replies that still make a round
    # a straggler, to see that one slow device does not stall the fleet (flower engines):
    # device ``slow_device`` answers ``slow_delay_s`` late in its first ``slow_rounds`` rounds
    slow_device: int = -1
    slow_rounds: int = 0
    slow_delay_s: float = 0.0
    fps: float = 0.0  # grpc engine: pace each device like a camera (0: as fast as possible)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}; choose from {', '.join(ENGINES)}")
        if self.stream not in STREAMS:
            raise ConfigError(f"unknown stream {self.stream!r}; choose from {', '.join(STREAMS)}")
        if self.devices < 1 or self.per_domain < 1 or self.batch_size < 1:
            raise ConfigError("devices, per_domain and batch_size must be >= 1")
        if self.batches_per_round < 1:
            raise ConfigError("batches_per_round must be >= 1")
        if not 0 < self.budget <= 1:
            raise ConfigError(f"budget must be in (0, 1], got {self.budget}")
        if self.synthetic < 0:
            raise ConfigError(f"synthetic must be >= 0 (0: none), got {self.synthetic}")
        if not 1 <= self.min_devices <= self.devices:
            raise ConfigError("min_devices must be between 1 and devices")
        check_gate(self.prompt_gate)

    def resolved(self) -> dict[str, object]:
        """Plain data for ``config.json`` (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def load_scenario(path: Path | None, **overrides: object) -> Scenario:
    """The default, updated by a TOML file's keys, then by non-None ``overrides``."""
    values: dict[str, Any] = {}
    if path is not None:
        path = _find(Path(path))
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path} is not valid TOML: {err}") from err
        values = values.get("scenario", values)  # a [scenario] table or top-level keys
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(Scenario)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown scenario keys {unknown}; known: {sorted(known)}")
    for key in ("corruptions", "peers"):  # lists in TOML, comma-separated in Flower's run config
        value = values.get(key)
        if isinstance(value, str):
            values[key] = tuple(v.strip() for v in value.split(",") if v.strip())
        elif value is not None:
            values[key] = tuple(value)
    try:
        return replace(Scenario(), **values)
    except TypeError as err:
        raise ConfigError(f"bad scenario value: {err}") from err


def built_in_scenarios() -> list[str]:
    """Names ``--scenario`` accepts besides a file path."""
    return sorted(p.stem for p in BUILT_IN.glob("*.toml"))


def _find(path: Path) -> Path:
    if path.is_file():
        return path
    named = BUILT_IN / f"{path}.toml"
    if named.is_file():
        return named
    raise ConfigError(f"no scenario file {path}; give a TOML file or one of: "
                      f"{', '.join(built_in_scenarios())}")  # fmt: skip
