import numpy as np
import pytest
import torch

from cloud.distill.student import DistilledStudent
from cloud.distill.training import DistillConfig, distill, distillation_loss, teacher_logits
from cloud.students import create_student
from cloud.students.preprocess import Normalization
from cloud.teacher.factory import create_teacher
from tests.conftest import CLASS_NAMES, make_images


def test_distillation_loss_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(4, 3)
    assert float(distillation_loss(logits, logits, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(logits, logits.flip(1), 1.0)) > 0


def test_student_logits_are_scaled_cosines_to_class_vectors():
    student = DistilledStudent(
        create_student("compact_cnn", 3), embed_dim=16, logit_scale=10.0
    ).eval()
    vectors = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    logits = student(torch.randn(2, 3, 32, 32), vectors)
    assert logits.shape == (2, 5)
    assert logits.abs().max() <= 10.0 + 1e-4


def test_distillation_loss_decreases_on_a_tiny_run_without_labels(tmp_path):
    torch.manual_seed(0)
    teacher = create_teacher("builtin", device="cpu", load_weights=False)
    images, _ = make_images(64)
    vectors = teacher.class_vectors(CLASS_NAMES)
    targets = torch.cat(
        [
            teacher_logits(teacher, images, vectors),
            teacher_logits(teacher, images[:, :, ::-1], vectors),
        ]
    )
    student = DistilledStudent(
        create_student("compact_cnn", 3), teacher.embed_dim, float(teacher.logit_scale())
    )
    norm = Normalization.fit(images)
    config = DistillConfig(epochs=6, batch_size=16, lr=5e-3, threads=1)
    history = distill(student, images, targets, vectors, norm, config, tmp_path / "state.pt")
    assert len(history) == 6
    assert history[-1] < 0.5 * history[0]
    assert np.isfinite(history).all()


@pytest.mark.usefixtures("fashion_mnist_installed", "shipped_random_teacher")
def test_distill_command_saves_a_student_that_reloads(tmp_path):
    from cloud.distill.checkpoint import load_distilled
    from simulations.cli import main

    out = tmp_path / "distilled.safetensors"
    args = [
        "cloud",
        "distill",
        "--limit",
        "64",
        "--epochs",
        "1",
        "--num-test",
        "50",
        "--set",
        f"data.shifted={tmp_path / 'none'}",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    student, vectors, info = load_distilled(out)
    assert vectors.shape == (10, info.embed_dim)
    assert info.trained["train_images"] == 64
    assert student(torch.zeros(2, 3, 32, 32), vectors).shape == (2, 10)
    assert "distilled student" in out.with_suffix(".report.md").read_text()
