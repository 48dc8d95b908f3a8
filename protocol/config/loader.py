"""Frozen dataclasses from TOML tables and ``key=value`` overrides; stdlib only.

A project's settings arrive in layers (the dataclasses' defaults, a project file, a
scenario file, command-line flags, ``--set section.key=value``, a Flower run config of
dotted keys). ``Layers`` merges them and remembers where each value came from, so that an
error names the file (or flag) and the key; ``build`` turns the merged tables into the
nested dataclasses, checking every value against its annotation before the dataclass's
own ``__post_init__`` checks ranges. Paths are resolved against the folder of the file
that set them. ``to_toml`` and ``to_flat`` write an instance back out.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from protocol.errors import ConfigError

T = TypeVar("T")
SPEC = "spec"  # field metadata: a ``[kind:]PATH`` string whose path part is resolved
INTERNAL = "internal"  # field metadata: not a setting (not read, not written)


@dataclass(frozen=True)
class Origin:
    """Where a value came from: a label for messages and the folder its paths are relative to."""

    label: str
    base: Path


DEFAULTS = Origin("the built-in defaults", Path())  # labels only: defaults are rebased later


@dataclass
class Layers:
    """Nested tables merged in order (later wins), with the origin of every dotted key."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)

    def add(self, table: Mapping[str, Any], origin: Origin) -> None:
        """Merge ``table`` (nested dicts) over what is there."""
        _merge(self.values, table, origin, self.origins, "")

    def add_dotted(self, pairs: Mapping[str, Any], origin: Origin) -> None:
        """Merge ``{"a.b.c": value}`` pairs (a Flower run config, command-line flags)."""
        for key, value in pairs.items():
            if value is None:
                continue
            table: dict[str, Any] = {}
            node = table
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
            self.add(table, origin)

    def origin_of(self, dotted: str) -> Origin:
        """The origin of a key, or of the nearest table above it that was set."""
        while dotted:
            if dotted in self.origins:
                return self.origins[dotted]
            dotted = dotted.rpartition(".")[0]
        return DEFAULTS


def _merge(
    into: dict[str, Any],
    table: Mapping[str, Any],
    origin: Origin,
    origins: dict[str, Origin],
    prefix: str,
) -> None:
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            if not isinstance(into.get(key), dict):
                into[key] = {}
            origins.setdefault(dotted, origin)
            _merge(into[key], value, origin, origins, dotted)
        else:
            into[key] = value
            origins[dotted] = origin


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's tables; a missing or malformed file is a ``ConfigError`` naming it."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from err


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``: the value is read as TOML, else taken as a plain string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"--set needs KEY=VALUE (e.g. adaptation.device.budget=0.05), got {text!r}"
        )
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # `teacher.model=ViT-B-32` needs no quotes
    return key, value


def build(cls: type[T], layers: Layers, prefix: str = "") -> T:
    """The dataclass ``cls`` from the merged tables at ``prefix`` (every value checked)."""
    raw = _table_at(layers.values, prefix)
    settable = {f.name: f for f in fields(cls) if f.init and not f.metadata.get(INTERNAL)}  # type: ignore[arg-type]
    unknown = [k for k in raw if k not in settable]
    if unknown:
        raise _unknown_key(unknown[0], prefix, sorted(settable), layers)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(hints[name], value, key, settable[name], layers)
    for name in settable:  # nested sections left out of every layer: defaults
        if name not in kwargs and is_dataclass(hints[name]):
            kwargs[name] = build(hints[name], layers, f"{prefix}.{name}" if prefix else name)
    missing = [n for n, s in settable.items() if n not in kwargs and _required(s)]
    if missing:
        where = _section_origins(raw, prefix, layers)
        raise ConfigError(f"{where}: [{prefix}] needs {' and '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        where = _section_origins(raw, prefix, layers)
        raise ConfigError(f"{where}: [{prefix or 'project'}] {err}") from err


def _required(spec: dataclasses.Field) -> bool:  # type: ignore[type-arg]
    no_default = spec.default is dataclasses.MISSING
    return no_default and spec.default_factory is dataclasses.MISSING


def _table_at(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    node: Any = values
    for part in prefix.split(".") if prefix else []:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def _section_origins(raw: Mapping[str, Any], prefix: str, layers: Layers) -> str:
    labels = []
    for name in raw:
        label = layers.origin_of(f"{prefix}.{name}" if prefix else name).label
        if label not in labels:
            labels.append(label)
    return ", ".join(labels) or DEFAULTS.label


def _unknown_key(key: str, prefix: str, known: list[str], layers: Layers) -> ConfigError:
    dotted = f"{prefix}.{key}" if prefix else key
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
    return ConfigError(
        f"{layers.origin_of(dotted).label}: unknown setting {dotted!r}{hint} "
        f"[{prefix or 'project'}] takes: {', '.join(known)}"
    )


def _convert(tp: Any, value: Any, key: str, spec: dataclasses.Field, layers: Layers) -> Any:  # type: ignore[type-arg]
    origin = layers.origin_of(key)
    optional, tp = _unwrap_optional(tp)
    if optional and value == "":
        return None
    if is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _wrong(origin, key, value, f"a [{key}] table")
        return build(tp, layers, key)  # type: ignore[arg-type]
    if typing.get_origin(tp) is Literal:
        return _choice(typing.get_args(tp), value, key, origin)
    if typing.get_origin(tp) is tuple:
        return _strings(value, key, origin)
    return _scalar(tp, value, key, origin, bool(spec.metadata.get(SPEC)))


def _unwrap_optional(tp: Any) -> tuple[bool, Any]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return True, args[0]
    return False, tp


def _choice(choices: tuple[str, ...], value: Any, key: str, origin: Origin) -> str:
    if value in choices:
        return str(value)
    raise ConfigError(f"{origin.label}: {_not_a_choice(key, value, choices)}")


def _not_a_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{key} must be one of {', '.join(choices)}, got {value!r}.{hint}"


def _strings(value: Any, key: str, origin: Origin) -> tuple[str, ...]:
    if isinstance(value, str):  # flat configs (Flower, --set) carry lists comma-separated
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _wrong(origin, key, value, "a list of strings")


def _scalar(tp: Any, value: Any, key: str, origin: Origin, spec: bool) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise _wrong(origin, key, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(origin, key, value, "a whole number")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong(origin, key, value, "a number")
        return float(value)
    if tp is Path:
        if not isinstance(value, str):
            raise _wrong(origin, key, value, "a path (a string)")
        return _resolve(Path(value), origin.base)
    if tp is str:
        if not isinstance(value, str):
            raise _wrong(origin, key, value, "a string")
        return resolve_spec(value, origin.base) if spec else value
    raise TypeError(f"the config loader cannot read {tp!r} ({key})")  # a schema bug


def check_choices(obj: Any) -> None:
    """Every ``Literal`` field of ``obj`` holds one of its choices (for instances built in code)."""
    for name, tp in typing.get_type_hints(type(obj)).items():
        if typing.get_origin(tp) is Literal and getattr(obj, name) not in typing.get_args(tp):
            raise ConfigError(_not_a_choice(name, getattr(obj, name), typing.get_args(tp)))


def _wrong(origin: Origin, key: str, value: Any, wanted: str) -> ConfigError:
    return ConfigError(
        f"{origin.label}: {key} must be {wanted}, got {value!r} ({type(value).__name__})"
    )


def _resolve(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else base / path


def resolve_spec(value: str, base: Path) -> str:
    """``kind:PATH`` or ``PATH`` with the path made absolute; plain words stay as they are.

    ``npz:data/x.npz`` -> ``npz:/project/data/x.npz``; ``data/shifted`` -> absolute;
    ``fashion-mnist``, ``builtin`` and ``ViT-B-32`` are names, not paths, and are kept.
    """
    kind, sep, rest = value.partition(":")
    if sep and rest and "/" not in kind and kind:
        return f"{kind}:{_resolve(Path(rest), base)}"
    if value and ("/" in value or value.startswith(".")):
        return str(_resolve(Path(value), base))
    return value


def to_plain(obj: Any) -> dict[str, Any]:
    """A settings dataclass as nested dicts of TOML values (None as "", paths as strings)."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(type(obj))
    for spec in fields(obj):
        if spec.metadata.get(INTERNAL):
            continue
        value = getattr(obj, spec.name)
        if value is None and is_dataclass(_unwrap_optional(hints[spec.name])[1]):
            continue  # an absent optional table, e.g. no [server.tls]
        if is_dataclass(value):
            out[spec.name] = to_plain(value)
        elif value is None:
            out[spec.name] = ""
        elif isinstance(value, Path):
            out[spec.name] = str(value)
        elif isinstance(value, tuple):
            out[spec.name] = list(value)
        else:
            out[spec.name] = value
    return out


def to_flat(obj: Any) -> dict[str, str | int | float | bool]:
    """Dotted keys with scalar values (lists comma-joined): a Flower run config, a wire map."""
    flat: dict[str, str | int | float | bool] = {}

    def walk(table: Mapping[str, Any], prefix: str) -> None:
        for key, value in table.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if isinstance(value, Mapping):
                walk(value, dotted)
            else:
                flat[dotted] = ",".join(value) if isinstance(value, list) else value

    walk(to_plain(obj), "")
    return flat


def to_toml(obj: Any, header: str = "") -> str:
    """A settings dataclass as a TOML document: scalar keys first, then one table per section."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]

    def emit(table: Mapping[str, Any], name: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
        if name and scalars:
            lines.extend(["", f"[{name}]"])
        lines.extend(f"{k} = {toml_value(v)}" for k, v in scalars.items())
        for key, value in table.items():
            if isinstance(value, Mapping):
                emit(value, f"{name}.{key}" if name else key)

    emit(to_plain(obj), "")
    return "\n".join(lines).lstrip("\n") + "\n"


def toml_value(value: Any) -> str:
    """One TOML literal: strings quoted and escaped, lists of them, numbers, booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
