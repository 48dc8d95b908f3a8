import pytest
import torch

from cloud.students import create_student
from cloud.students.preprocess import Normalization
from protocol.errors import UnknownNameError
from simulations.peers import PixelModel, create_method, list_methods
from simulations.peers.vdp import VDPStyle


@pytest.fixture
def model():
    torch.manual_seed(0)
    return PixelModel(create_student("compact_cnn", 3), Normalization((0.2,) * 3, (0.3,) * 3))


@pytest.fixture
def shifted_batch():
    torch.manual_seed(1)
    return (torch.rand(8, 3, 32, 32) * 0.3 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_predicts_then_adapts(model, shifted_batch, name):
    method = create_method(name, model)
    for _ in range(2):
        logits = method.step(shifted_batch)
    assert logits.shape == (8, 3)
    assert torch.isfinite(logits).all()
    assert not logits.requires_grad


@pytest.mark.parametrize("name", list_methods())
def test_methods_never_touch_the_callers_weights(model, shifted_batch, name):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    create_method(name, model).step(shifted_batch)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_source_does_not_change_and_bn_adapt_uses_batch_statistics(model, shifted_batch):
    source = create_method("source", model)
    first = source.step(shifted_batch)
    torch.testing.assert_close(source.step(shifted_batch), first)
    assert not torch.allclose(create_method("bn_adapt", model).step(shifted_batch), first)


def test_tent_updates_only_batchnorm_affine(model, shifted_batch):
    tent = create_method("tent", model)
    before = {k: v.clone() for k, v in tent.model.named_parameters()}
    tent.step(shifted_batch)
    changed = {k for k, v in tent.model.named_parameters() if not torch.equal(v, before[k])}
    assert changed
    bn_names = {
        f"{n}.{p}"
        for n, m in tent.model.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for p in ("weight", "bias")
    }
    assert changed <= bn_names


def test_cotta_teacher_follows_student_slowly(model, shifted_batch):
    cotta = create_method("cotta", model)
    cotta.num_augs = 2
    teacher_before = [p.clone() for p in cotta.teacher.parameters()]
    cotta.step(shifted_batch)
    moved = [
        (p - q).abs().max() for p, q in zip(cotta.teacher.parameters(), teacher_before, strict=True)
    ]
    assert max(moved) > 0
    assert max(moved) < 1e-2


def test_vdp_keeps_model_frozen_and_learns_prompts(model, shifted_batch):
    vdp = create_method("vdp", model)
    assert isinstance(vdp, VDPStyle)
    weights = {k: v.clone() for k, v in vdp.model.state_dict().items()}
    for _ in range(3):
        vdp.step(shifted_batch)
    assert vdp.teacher_prompt.abs().sum() > 0
    for key, value in vdp.model.state_dict().items():
        torch.testing.assert_close(value, weights[key])
    vdp.reset()
    assert vdp.teacher_prompt.abs().sum() == 0


def test_vdp_homeostasis_holds_back_the_most_sensitive_dap_entries(model, shifted_batch):
    vdp = create_method("vdp", model)
    student = vdp.model((shifted_batch + vdp.dsp + vdp.dap).clamp(0, 1))
    student.logsumexp(1).mean().backward()
    raw = vdp.dap.grad.abs().clone()
    vdp._homeostasis()
    held = vdp.dap.grad == 0
    assert held.float().mean() == pytest.approx(0.1, abs=0.02)
    assert raw[held].min() >= raw[~held].max()


def test_unknown_method_is_refused_with_the_list(model):
    with pytest.raises(UnknownNameError, match="Known: bn_adapt, cotta"):
        create_method("tnet", model)
