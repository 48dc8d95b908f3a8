"""The contract cloud and device share: wire messages, manifest, errors, project configuration; no torch."""

from protocol.errors import CdcaError, ConfigError, DataError, UnknownNameError

__all__ = ["CdcaError", "ConfigError", "DataError", "UnknownNameError"]
