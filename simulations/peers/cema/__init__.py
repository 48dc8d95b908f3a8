"""CEMA, the cloud-edge peer: the edge uploads reliable, non-redundant frames; the cloud distils.

Chen, Niu, Wang, Xu, Song, Tan, "Towards Robust and Efficient Cloud-Edge Elastic Model
Adaptation via Selective Entropy Distillation", ICLR 2024
(https://openreview.net/forum?id=vePdNU3u6n); code chenyaofo/CEMA
(``codebase/core/tta/cema.py``, ``codebase/criterion/distillation.py``, ``conf/cema.conf``).
``selection`` is the edge's filter, ``cloud`` the cloud's two steps; both plug into the same
ONNX device and wire format U-VPA uses, so each can be swapped for U-VPA's part.
"""

from simulations.peers.cema.cloud import CemaCloud, CemaSettings
from simulations.peers.cema.selection import CemaSampler

__all__ = ["CemaCloud", "CemaSampler", "CemaSettings"]
