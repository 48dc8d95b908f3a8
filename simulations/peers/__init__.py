"""On-device test-time adaptation peers: Source, BN-adapt, Tent, CoTTA and a VDP-style prompt method."""

from __future__ import annotations

from protocol.errors import unknown_name
from simulations.peers.base import AdaptationMethod, PixelModel
from simulations.peers.cotta import CoTTA
from simulations.peers.simple import BNAdapt, Source
from simulations.peers.tent import Tent
from simulations.peers.vdp import VDPStyle

PEERS: dict[str, type[AdaptationMethod]] = {
    "source": Source,
    "bn_adapt": BNAdapt,
    "tent": Tent,
    "cotta": CoTTA,
    "vdp": VDPStyle,
}

__all__ = ["PEERS", "AdaptationMethod", "PixelModel", "create_method", "list_methods"]


def list_methods() -> list[str]:
    """Registry keys, in the order the benchmark table lists them."""
    return list(PEERS)


def create_method(name: str, model: PixelModel) -> AdaptationMethod:
    """Build a method by registry key around a copy of ``model``."""
    if name not in PEERS:
        raise unknown_name("method", name, PEERS)
    return PEERS[name](model)
