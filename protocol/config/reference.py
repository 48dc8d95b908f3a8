"""The configuration reference page (docs/configuration.md), generated from the schema's docstrings.

Each section's class docstring documents its keys (Google style ``Attributes:``); this
writes one table per section with the key, its type, its default and that text, so the
page cannot drift from the code (``tests/protocol/test_config.py`` compares them).
Regenerate with ``cdca config reference --out docs/configuration.md``.
"""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from protocol.config.loader import INTERNAL, toml_value
from protocol.config.project import ProjectConfig

INTRO = """# Configuration reference

Every setting of a cdca project, generated from the schema (`protocol/config/`) by
`cdca config reference`. A project file (`cdca.toml`, written by `cdca init`) sets any of
them; with none, the built-in Fashion-MNIST project runs. Each command reads the same file
(`--project FILE`, else `$CDCA_PROJECT`, else `./cdca.toml`); its flags override single
keys, and `--set section.key=value` any key. Relative paths are relative to the project
file's folder. `cdca config show` prints the settings a command would run with; every run
folder keeps them in `config.toml`.
"""


def reference_markdown() -> str:
    """The whole page."""
    out = [INTRO]
    for name, section in _sections(ProjectConfig, ""):
        out.append(_table(name, section))
    return "\n".join(out)


def _sections(cls: type, prefix: str) -> list[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    found: list[tuple[str, type]] = []
    for spec in fields(cls):
        tp = _unwrap(hints[spec.name])
        if spec.metadata.get(INTERNAL) or not is_dataclass(tp):
            continue
        name = f"{prefix}.{spec.name}" if prefix else spec.name
        found.append((name, tp))  # type: ignore[arg-type]
        found.extend(_sections(tp, name))  # type: ignore[arg-type]
    return found


def _table(name: str, cls: type) -> str:
    docs = attribute_docs(cls)
    summary = (inspect.getdoc(cls) or "").split("\n")[0].partition(": ")[2] or name
    rows = [f"## `[{name}]`", "", summary[0].upper() + summary[1:], ""]
    hints = typing.get_type_hints(cls)
    tables = [s.name for s in fields(cls) if is_dataclass(_unwrap(hints[s.name]))]
    if len(tables) == len(fields(cls)):  # only sub-tables
        return "\n".join([*rows, "Tables: " + ", ".join(f"`[{name}.{t}]`" for t in tables)]) + "\n"
    rows += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for spec in fields(cls):
        if is_dataclass(_unwrap(hints[spec.name])):
            continue
        default = _default(spec)
        text = docs.get(spec.name, "").replace("``", "`").replace("|", "\\|")
        rows.append(f"| `{spec.name}` | {_type_name(hints[spec.name])} | {default} | {text} |")
    return "\n".join(rows) + "\n"


def attribute_docs(cls: type) -> dict[str, str]:
    """``name: text`` entries of the class docstring's ``Attributes:`` section, joined to one line."""
    doc = inspect.getdoc(cls) or ""
    body = doc.partition("Attributes:")[2]
    entries: dict[str, str] = {}
    current = None
    for line in body.splitlines():
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            current = match.group(1)
            entries[current] = match.group(2).strip()
        elif current and line.startswith("        "):
            entries[current] += " " + line.strip()
        elif line.strip():
            current = None
    return entries


def _default(spec: Any) -> str:
    if spec.default is not MISSING:
        value = spec.default
    elif spec.default_factory is not MISSING:
        value = spec.default_factory()
    else:
        return "required"
    if value is None:
        return "(empty)"
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, Path):
        value = str(value)
    return f"`{toml_value(value)}`"


def _unwrap(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 and type(None) in typing.get_args(tp) else tp


def _type_name(tp: Any) -> str:
    optional = type(None) in typing.get_args(tp)
    tp = _unwrap(tp)
    if typing.get_origin(tp) is Literal:
        name = " \\| ".join(f"`{v}`" for v in typing.get_args(tp))
    elif typing.get_origin(tp) is tuple:
        name = "list of strings"
    else:
        name = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path"}[tp]
    return f"{name} (optional)" if optional else name
