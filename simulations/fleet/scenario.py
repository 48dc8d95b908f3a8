"""Built-in scenarios: TOML files over the project (``cdca simulate --scenario NAME``).

A scenario is a partial project file, usually a ``[fleet]`` table and sometimes an
``[adaptation]`` one, layered over the project file and under the command's flags; its
keys are checked like the project's.
"""

from __future__ import annotations

from pathlib import Path

from protocol.errors import ConfigError

BUILT_IN = Path(__file__).resolve().parent / "scenarios"  # `--scenario NAME` finds NAME.toml here


def built_in_scenarios() -> list[str]:
    """Names ``--scenario`` accepts besides a file path."""
    return sorted(p.stem for p in BUILT_IN.glob("*.toml"))


def find_scenario(name: str | Path) -> Path:
    """A scenario file by path, or a built-in one by name."""
    path = Path(name)
    if path.is_file():
        return path
    named = BUILT_IN / f"{name}.toml"
    if named.is_file():
        return named
    raise ConfigError(
        f"no scenario file {name}; give a TOML file or one of: {', '.join(built_in_scenarios())}"
    )
