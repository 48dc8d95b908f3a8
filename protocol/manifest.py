"""``ModelManifest``: the JSON that travels with every device model file.

The device never guesses: input names, shapes and dtypes, preprocessing, class names,
versions and the SHA-256 of the model bytes all come from here. Written by the cloud's
exporter, read and checked by the device (stdlib only, so both sides share it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.errors import DataError

MANIFEST_VERSION = 1
MANIFEST_FILE = "student.manifest.json"  # what `cdca cloud export` writes, devices look for
INT8_MANIFEST_FILE = "student.int8.manifest.json"  # its int8 copy's
SAMPLE_FILE = "student.sample.npz"  # labelled held-out images `cdca device bench` scores
HEX = frozenset("0123456789abcdef")
ALLOWED_DTYPES = frozenset({"float32", "float16", "int64", "uint8"})
# onnxruntime graph rewrites an int8 model runs without. QDQPropagationTransformer moves a
# QuantizeLinear above the MaxPool before it, and onnxruntime's uint8 MaxPool is several
# times slower than its float one (4.9 against 1.0 ms on 64x32x32x32, 2-core Xeon): with
# it the int8 student is no faster than fp32, without it 1.36x faster.
INT8_DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, shape (str for symbolic dims) and dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    description: str = ""


@dataclass(frozen=True)
class Preprocess:
    """Pixels (uint8, H x W x 3) -> model input: resize, scale to [0, 1], normalise, NCHW."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1 / 255
    layout: str = "NCHW"


@dataclass(frozen=True)
class HeldGraph:
    """The student with its BatchNorms' parameters in a separate file, for held statistics.

    ``data_file`` is float32, per norm layer in ``norm_layers`` order: the BatchNorm's
    weight, bias, mean and variance (``channels`` values each). A device that normalises
    with statistics it holds opens this graph with those four replaced
    (``add_external_initializers``), so onnxruntime folds them into the convolutions and
    the run costs what the plain student costs. ``layers`` names each layer's four
    initializers.
    """

    model_file: str
    sha256: str
    data_file: str
    data_sha256: str
    layers: tuple[tuple[str, str, str, str], ...]


@dataclass(frozen=True)
class ModelManifest:
    """Everything a device needs to run a model file correctly."""

    model_file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocess: Preprocess
    class_names: tuple[str, ...]
    model_version: str
    defaults_file: str | None = None  # .npz with the default value of every non-image input
    norm_layers: tuple[dict[str, Any], ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    quantization: str = "fp32"
    parity: dict[str, float] = field(default_factory=dict)
    held: HeldGraph | None = None  # absent: the device runs ``model_file`` on every batch
    manifest_version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        """Pretty JSON text."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @property
    def disabled_optimizers(self) -> list[str]:
        """The onnxruntime optimisers a session of this model should run without."""
        return list(INT8_DISABLED_OPTIMIZERS) if self.quantization.startswith("int8") else []

    @property
    def files(self) -> tuple[str, ...]:
        """Every file this manifest names (what a device downloads beside it)."""
        names = [self.model_file, *([self.defaults_file] if self.defaults_file else [])]
        return (*names, *(name for name in self.digests if name != self.model_file))

    @property
    def digests(self) -> dict[str, str]:
        """The SHA-256 of each file the manifest names with one (all but the defaults)."""
        out = {self.model_file: self.sha256}
        if self.held is not None:
            out.update(
                {self.held.model_file: self.held.sha256, self.held.data_file: self.held.data_sha256}
            )
        return out

    def input(self, name: str) -> TensorSpec:
        """The input called ``name``."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise DataError(f"model has no input {name!r}; it has {[s.name for s in self.inputs]}")


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_from_json(text: str, source: str = "manifest") -> ModelManifest:
    """Parse and validate manifest JSON; every problem is a ``DataError`` naming the field."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{source} is not valid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise DataError(f"{source} must be a JSON object")
    if raw.get("manifest_version") != MANIFEST_VERSION:
        raise DataError(
            f"{source}: manifest_version {raw.get('manifest_version')!r} is not {MANIFEST_VERSION}"
        )
    try:
        manifest = ModelManifest(
            **{
                **raw,
                "inputs": tuple(_spec(s) for s in raw["inputs"]),
                "outputs": tuple(_spec(s) for s in raw["outputs"]),
                "preprocess": Preprocess(
                    **{
                        **raw["preprocess"],
                        "mean": tuple(raw["preprocess"]["mean"]),
                        "std": tuple(raw["preprocess"]["std"]),
                    }
                ),
                "class_names": tuple(raw["class_names"]),
                "norm_layers": tuple(raw.get("norm_layers", ())),
                "held": _held(raw.get("held")),
            }
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{source} is missing or has a malformed field: {err}") from err
    _check(manifest, source)
    return manifest


def _held(raw: dict[str, Any] | None) -> HeldGraph | None:
    if raw is None:
        return None
    layers = tuple(tuple(str(name) for name in layer) for layer in raw["layers"])
    if any(len(layer) != 4 for layer in layers):
        raise ValueError("held.layers: each layer names weight, bias, mean and variance")
    return HeldGraph(**{**raw, "layers": layers})


def _spec(raw: dict[str, Any]) -> TensorSpec:
    return TensorSpec(raw["name"], tuple(raw["shape"]), raw["dtype"], raw.get("description", ""))


def _check(manifest: ModelManifest, source: str) -> None:
    held = manifest.held
    for digest in manifest.digests.values():
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= HEX:
            raise DataError(f"{source}: every sha256 must be 64 lowercase hex digits")
    if any(Path(name).name != name or not name for name in manifest.files):
        raise DataError(f"{source}: file names must be plain names, not paths")
    if held is not None and len(held.layers) != len(manifest.norm_layers):
        raise DataError(f"{source}: held.layers must name every one of the norm_layers")
    for spec in (*manifest.inputs, *manifest.outputs):
        if spec.dtype not in ALLOWED_DTYPES:
            raise DataError(
                f"{source}: {spec.name} has dtype {spec.dtype!r}; allowed: {sorted(ALLOWED_DTYPES)}"
            )
        if not all((isinstance(d, int) and d > 0) or isinstance(d, str) for d in spec.shape):
            raise DataError(f"{source}: {spec.name} has an invalid shape {spec.shape}")
    if not manifest.class_names:
        raise DataError(f"{source}: class_names is empty")
    if manifest.preprocess.image_size < 1 or min(manifest.preprocess.std) <= 0:
        raise DataError(f"{source}: preprocess needs image_size >= 1 and positive std")


def load_manifest(path: str | Path) -> ModelManifest:
    """Read a manifest file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} not found; export one with `cdca cloud export`")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"manifest {path} is not UTF-8 text (a corrupt or wrong file): {err}"
        ) from err
    return manifest_from_json(text, str(path))


def verify_model_file(manifest: ModelManifest, model_path: str | Path) -> Path:
    """Check the model file exists and its bytes match the manifest's SHA-256; return its path."""
    return verify_file(model_path, manifest.sha256)


def verify_file(file_path: str | Path, sha256: str) -> Path:
    """Check a file the manifest names exists and its bytes match ``sha256``; return its path."""
    path = Path(file_path)
    if not path.is_file():
        raise DataError(f"model file {path} named by the manifest is missing")
    actual = sha256_of(path)
    if actual != sha256:
        raise DataError(
            f"{path} does not match its manifest (sha256 {actual[:12]}... != {sha256[:12]}...); "
            "the file is corrupt or was tampered with: download or export it again"
        )
    return path
