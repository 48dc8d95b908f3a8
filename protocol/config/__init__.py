"""The project configuration both sides read: one schema, one loader (``load_project``); stdlib only."""

from protocol.config.adaptation import AdaptationConfig, DeviceSettings
from protocol.config.project import ProjectConfig, load_project, write_resolved

__all__ = ["AdaptationConfig", "DeviceSettings", "ProjectConfig", "load_project", "write_resolved"]
