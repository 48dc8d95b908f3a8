"""U-VPA's ablation rows for ``cdca bench adapt``: the project's settings with one part changed.

This is the one module that names experiments. The production path (``cloud``,
``device``, ``protocol``, ``simulations.fleet`` and ``simulations.harness``) never imports
it, which an import-linter contract checks. Each row changes settings by their keys, so
its table row shows what one part contributes: how uploads are chosen (``uvpa_random``),
the device's check on each prompt (``uvpa_no_gate``), the rendered clean samples
(``uvpa_no_synthetic``), and the device running the int8 model (``uvpa_int8``: what
quantisation costs under the cloud's prompts). ``uvpa_label_target`` is a reference, not
a method: the cloud learns from the uploads' true labels (a perfect teacher).

Rows whose result is recorded and that no default needs (disagreement scoring, unguided
updates, a teacher-only target, VDP homeostasis, no restart on shifts, every device-model
input fitted) were retired; CHANGELOG.md keeps their numbers, and each is still one
``--set`` away (e.g. ``--set adaptation.device.score=disagreement``).
"""

from __future__ import annotations

LABEL_TARGET = "uvpa_label_target"  # an upper reference, not a method: true labels as target
INT8_DEVICE = "uvpa_int8"  # the project's U-VPA with the device on the int8 model
ABLATIONS: dict[str, dict[str, object]] = {
    "uvpa_random": {"adaptation.device.score": "random"},
    "uvpa_no_gate": {"adaptation.device.gate": "off"},
    "uvpa_no_synthetic": {"adaptation.synthetic.count": 0},
    LABEL_TARGET: {"adaptation.vplu.target": "teacher"},
}
