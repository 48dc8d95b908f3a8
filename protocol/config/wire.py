"""``[adaptation.device]`` over the wire: TOML literals keyed by setting, read back through the schema.

The server hands each device the project's device settings at ``Register``
(``RegisterResponse.device_settings``), the Flower ServerApp in its messages. Each value
travels as its TOML literal and is validated on arrival by the same ``DeviceSettings`` the
cloud holds, so a new device setting needs no new message field. Keys the device does not
know (a newer cloud) are returned, not fatal. A cloud whose settings name no image format
predates encoded uploads: its devices send raw pixels and float32 statistics with every
upload, which every cloud decodes.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

from protocol.config.adaptation import DeviceSettings
from protocol.config.loader import Layers, Origin, build, to_flat, toml_value
from protocol.errors import ConfigError
from protocol.images import UploadEncoding

WIRE_ORIGIN = "the cloud's device settings"
# What a device sends to a cloud whose settings name no image format (an older one)
OLDER_CLOUD_ENCODING = UploadEncoding("raw", stats_dtype="float32", stats_resend_distance=0.0)


def settings_to_wire(settings: DeviceSettings) -> dict[str, str]:
    """Setting name -> TOML literal."""
    return {key: toml_value(value) for key, value in to_flat(settings).items()}


def settings_from_wire(values: Mapping[str, str]) -> tuple[DeviceSettings, list[str]]:
    """The validated settings and the names of keys this version does not know.

    Raises:
        ConfigError: a value that is not a TOML literal or fails the schema.
    """
    known = {spec.name for spec in fields(DeviceSettings)}
    table: dict[str, object] = {}
    if values and "image_format" not in values:
        table.update(
            image_format=OLDER_CLOUD_ENCODING.image_format,
            stats_dtype=OLDER_CLOUD_ENCODING.stats_dtype,
            stats_resend_distance=OLDER_CLOUD_ENCODING.stats_resend_distance,
        )
    for key, text in values.items():
        if key in known:
            try:
                table[key] = tomllib.loads(f"value = {text}")["value"]
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(f"{WIRE_ORIGIN}: {key} = {text!r} is not a TOML value") from err
    layers = Layers()
    layers.add({"adaptation": {"device": table}}, Origin(WIRE_ORIGIN, Path.cwd()))
    return build(DeviceSettings, layers, "adaptation.device"), sorted(set(values) - known)


def encoding_from_wire(values: Mapping[str, str]) -> UploadEncoding:
    """How to send uploads to a cloud that handed out these settings at ``Register``.

    Raw pixels and float32 statistics with every upload, which every cloud decodes, unless
    the cloud's own settings name an encoding (none, or settings this device refuses, also
    mean raw).
    """
    if not values:
        return OLDER_CLOUD_ENCODING
    try:
        return settings_from_wire(values)[0].encoding
    except ConfigError:
        return OLDER_CLOUD_ENCODING
