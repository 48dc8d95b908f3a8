"""The contract shared by cloud and device: errors today, wire messages later; imports no torch."""

from protocol.errors import CdcaError, ConfigError, DataError, UnknownNameError

__all__ = ["CdcaError", "ConfigError", "DataError", "UnknownNameError"]
