"""``ProjectConfig``: every setting of a cdca deployment, from one project file (``cdca.toml``).

With no file the built-in project is the project: Fashion-MNIST, the shipped teacher and
student, the main job's fleet. Layers, later ones winning: the defaults, the project
file, scenario files, command-line flags, ``--set KEY=VALUE``. Relative paths are relative
to the project file's folder (the working folder when there is none), so a project moves
as a whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from protocol.config.adaptation import AdaptationConfig
from protocol.config.data import DataConfig
from protocol.config.fleet import FleetConfig
from protocol.config.loader import (
    INTERNAL,
    SPEC,
    Layers,
    Origin,
    build,
    parse_assignment,
    read_toml,
    resolve_spec,
    to_plain,
    to_toml,
)
from protocol.config.models import StudentConfig, TeacherConfig
from protocol.config.server import ServerConfig
from protocol.errors import ConfigError
from protocol.files import atomic_write

PROJECT_FILE = "cdca.toml"  # found in the working folder when --project is not given
PROJECT_ENV = "CDCA_PROJECT"
RESOLVED_FILE = "config.toml"  # what every run folder records
T = TypeVar("T")


@dataclass(frozen=True)
class ProjectConfig:
    """A cdca project (docs/configuration.md lists every key).

    Attributes:
        data: the labelled images and the shifted test data.
        teacher: the cloud's CLIP teacher.
        student: the device model.
        adaptation: U-VPA on the devices and in the cloud.
        server: ``cdca cloud serve``.
        fleet: ``cdca simulate``'s devices.
    """

    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    file: Path | None = field(default=None, compare=False, metadata={INTERNAL: True})

    @property
    def root(self) -> Path:
        """The project's folder: where its relative paths start."""
        return self.file.parent if self.file else Path.cwd()

    @property
    def is_builtin_project(self) -> bool:
        """Whether the data is the built-in project (Fashion-MNIST), which the shipped models know."""
        return self.data.train == "fashion-mnist"


def find_project_file(path: str | Path | None) -> Path | None:
    """``path``, else ``$CDCA_PROJECT``, else ``./cdca.toml`` if present, else None."""
    if path is not None and str(path):
        found = Path(path)
        if not found.is_file():
            raise ConfigError(f"project file {found} not found (create one with `cdca init`)")
        return found.resolve()
    if os.environ.get(PROJECT_ENV):
        return find_project_file(os.environ[PROJECT_ENV])
    default = Path(PROJECT_FILE)
    return default.resolve() if default.is_file() else None


def load_project(
    path: str | Path | None = None,
    *,
    overlays: Sequence[Path] = (),
    flags: Mapping[str, Any] | None = None,
    assignments: Sequence[str] = (),
    dotted: Mapping[str, Any] | None = None,
    dotted_origin: str = "the Flower run config",
) -> ProjectConfig:
    """The project's settings, every layer checked; errors name the file (or flag) and key.

    Args:
        path: the project file; None: ``find_project_file``'s choice.
        overlays: further TOML files over it (e.g. a built-in scenario).
        flags: dotted keys from a command's own flags (None values are skipped).
        assignments: ``KEY=VALUE`` strings from ``--set``.
        dotted: dotted keys from elsewhere (a Flower run config).
        dotted_origin: how errors name where ``dotted`` came from.
    """
    file = find_project_file(path)
    cwd = Path.cwd()
    layers = Layers()
    if file is not None:
        layers.add(read_toml(file), Origin(str(file), file.parent))
    for overlay in overlays:
        layers.add(read_toml(overlay), Origin(str(overlay), overlay.resolve().parent))
    if dotted:
        layers.add_dotted(dotted, Origin(dotted_origin, cwd))
    if flags:
        layers.add_dotted(flags, Origin("the command line", cwd))
    for text in assignments:
        key, value = parse_assignment(text)
        layers.add_dotted({key: value}, Origin(f"--set {text}", cwd))
    config = build(ProjectConfig, layers)
    return rebase(replace(config, file=file), file.parent if file else cwd)


def with_settings(config: ProjectConfig, pairs: Mapping[str, Any], origin: str) -> ProjectConfig:
    """``config`` with some settings changed by their dotted keys (checked as in a file)."""
    layers = Layers()
    layers.add(to_plain(config), Origin("the project", config.root))
    layers.add_dotted(pairs, Origin(origin, Path.cwd()))
    return replace(build(ProjectConfig, layers), file=config.file)


def rebase(obj: T, root: Path) -> T:
    """Every relative path (and path part of a ``kind:PATH`` setting) made absolute under ``root``."""
    changes: dict[str, Any] = {}
    for spec in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, spec.name)
        if spec.metadata.get(INTERNAL) or value is None:
            continue
        if is_dataclass(value):
            changes[spec.name] = rebase(value, root)
        elif isinstance(value, Path) and not value.is_absolute():
            changes[spec.name] = root / value
        elif isinstance(value, str) and spec.metadata.get(SPEC):
            changes[spec.name] = resolve_spec(value, root)
    return replace(obj, **changes) if changes else obj  # type: ignore[type-var]


def write_resolved(config: ProjectConfig, folder: Path, what: str) -> Path:
    """Record the settings a run used in ``folder/config.toml`` (usable as ``--project``)."""
    path = folder / RESOLVED_FILE
    source = str(config.file) if config.file else "none: the built-in project"
    header = (
        f"The settings {what} ran with (project file: {source}).\n"
        f"Run it again with --project {path}."
    )
    atomic_write(path, to_toml(config, header).encode("utf-8"))
    return path
