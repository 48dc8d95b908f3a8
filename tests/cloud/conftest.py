"""The cloud side's shared fixture: one device's adaptation session over the tiny student."""

import pytest

from cloud.adaptation.session import AdaptationSession, SessionConfig
from cloud.adaptation.vplu import VPLU, VPLUConfig
from cloud.export.device_model import DeviceModel


@pytest.fixture
def session(distilled):
    """A session with a buffer of 8, fitting from 4 uploads, 2 Adam steps per fit."""
    student, vectors, _ = distilled
    model = DeviceModel(student)
    vplu = VPLU(model, vectors, VPLUConfig(steps=2))

    def teacher(pixels):  # a confident teacher: the student itself on un-shifted inputs
        inputs = model.neutral_inputs(vectors, batch=len(pixels))
        return 3 * model(**{**inputs, "x": pixels * 2 - 1})[0]

    return AdaptationSession(vplu, teacher, lambda p: p * 2 - 1, config=SessionConfig(8, 4))
