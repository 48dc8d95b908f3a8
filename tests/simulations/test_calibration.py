"""Calibration sanity on real data: the shipped clean-trained student keeps 40-75 % at severity 5."""

import numpy as np
import pytest

from cloud.data import fashion_mnist
from cloud.data.corruptions import TEST_CORRUPTIONS, corrupt_batch
from cloud.shipped import SHIPPED_STUDENT as DEFAULT_STUDENT
from cloud.students.checkpoint import load_student
from cloud.students.preprocess import pixels_from_uint8
from simulations.peers import PixelModel, create_method

pytestmark = pytest.mark.usefixtures("fashion_mnist_installed")


def test_shipped_student_is_accurate_on_clean_data_and_hurt_but_alive_at_severity_5():
    student, info = load_student(DEFAULT_STUDENT)
    test = fashion_mnist.load_fashion_mnist("test", allow_download=False).take(300)
    source = create_method("source", PixelModel(student, info.normalization))

    def accuracy(images: np.ndarray) -> float:
        pixels = pixels_from_uint8(images)
        return float((source.step(pixels).argmax(1).numpy() == test.labels).mean())

    assert accuracy(test.images) > 0.88
    per_domain = {c: accuracy(corrupt_batch(test.images, c, 5)) for c in TEST_CORRUPTIONS}
    assert 0.40 <= np.mean(list(per_domain.values())) <= 0.75, per_domain
    assert all(acc < 0.95 for acc in per_domain.values())
