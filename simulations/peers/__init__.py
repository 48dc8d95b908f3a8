"""On-device test-time adaptation peers, each run as its paper's code runs it (see each file's top).

Gradient-free: Source, BN-adapt and the forward-only SPSA peer. Training on the device:
Tent, EATA, SAR, RoTTA, ROID, CoTTA and a VDP-style prompt method.
"""

from __future__ import annotations

import inspect

import torch

from protocol.errors import ConfigError, unknown_name
from simulations.peers.base import AdaptationMethod, PixelModel
from simulations.peers.cotta import CoTTA
from simulations.peers.eata import EATA
from simulations.peers.forward_only import ForwardOnly
from simulations.peers.roid import ROID
from simulations.peers.rotta import RoTTA
from simulations.peers.sar import SAR
from simulations.peers.simple import BNAdapt, Source
from simulations.peers.tent import Tent
from simulations.peers.vdp import VDPStyle

PEERS: dict[str, type[AdaptationMethod]] = {
    "source": Source,
    "bn_adapt": BNAdapt,
    "forward_only": ForwardOnly,
    "tent": Tent,
    "eata": EATA,
    "sar": SAR,
    "rotta": RoTTA,
    "roid": ROID,
    "cotta": CoTTA,
    "vdp": VDPStyle,
}

__all__ = [
    "PEERS",
    "AdaptationMethod",
    "PixelModel",
    "create_method",
    "list_methods",
    "parse_peer_settings",
]


def list_methods() -> list[str]:
    """Registry keys, in the order the benchmark table lists them."""
    return list(PEERS)


def create_method(
    name: str, model: PixelModel, source: torch.Tensor | None = None, **settings: object
) -> AdaptationMethod:
    """Build a method by registry key around a copy of ``model``.

    ``source``: clean (N, 3, H, W) images in [0, 1] for the methods that read source data
    before the stream (EATA's Fisher information, the forward-only peer's feature
    statistics); without them those methods run without that part. ``settings``: keyword
    arguments of the method's constructor (e.g. ``lr``), instead of its paper's values.
    """
    if name not in PEERS:
        raise unknown_name("method", name, PEERS)
    peer = PEERS[name]
    known = [
        p
        for p in inspect.signature(peer.__init__).parameters
        if p not in ("self", "model", "source")
    ]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ConfigError(f"{name} has no setting {unknown}; it takes {known}")
    if peer.needs_source:
        return peer(model, source=source, **settings)  # type: ignore[call-arg]
    return peer(model, **settings)


def parse_peer_settings(pairs: list[str]) -> dict[str, dict[str, object]]:
    """``["cema.lr_scale=10", "forward_only.lr=0.3"]`` -> ``{"cema": {"lr_scale": 10}, ...}``.

    Values are read as int, then float, else kept as text.
    """
    settings: dict[str, dict[str, object]] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise ConfigError(
                f"--peer-setting takes METHOD.KEY=VALUE, e.g. tent.lr=0.01; got {pair!r}"
            )
        settings.setdefault(method, {})[name] = _value(text)
    return settings


def _value(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
