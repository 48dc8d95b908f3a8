import pytest
import torch
import torch.nn.functional as F

from cloud.adaptation.vplu import VPLU, FitRequest, Uploads, VPLUConfig
from cloud.export.device_model import DeviceModel
from protocol.errors import ConfigError


def device_view(vplu: VPLU, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the device would upload: its batch statistics (stat_mix = 1) and logits."""
    inputs = vplu.model.neutral_inputs(vplu.class_vectors, batch=len(x))
    inputs.update({"x": x, "stat_mix": torch.ones(1)})
    logits, _, stats = vplu.model(**inputs)
    return stats, logits


def test_replayed_statistics_reproduce_the_device(distilled):
    student, vectors, _ = distilled
    vplu = VPLU(DeviceModel(student), vectors, VPLUConfig(precision="fp32"))
    x = torch.randn(16, 3, 32, 32) * 0.4 + 1.0
    stats, device_logits = device_view(vplu, x)
    replay = vplu.logits(x, vplu.neutral_prompt(), vplu.replay_stats(stats))
    torch.testing.assert_close(replay, device_logits, atol=1e-4, rtol=1e-4)


def test_update_learns_a_prompt_that_moves_the_device_towards_the_teacher(distilled):
    student, vectors, _ = distilled
    torch.manual_seed(0)
    clean = torch.randn(48, 3, 32, 32)
    teacher_logits = (
        student(clean, vectors).detach() * 3
    )  # a confident teacher that sees clean data
    shifted = 0.2 * clean + 0.8 * torch.randn(1, 3, 32, 32)  # low contrast plus a fixed pattern
    config = VPLUConfig(
        parts=("prompt", "input_affine"), steps=40, lr=5e-2, ema_base=0.0, ema_scale=0.0
    )
    vplu = VPLU(DeviceModel(student), vectors, config)
    stats, _ = device_view(vplu, shifted)
    uploads = Uploads(shifted, stats, torch.full((48,), 0.5), teacher_logits)
    result = vplu.update(uploads, vplu.neutral_prompt())
    assert result.losses[-1] < result.losses[0]
    assert result.shipped
    assert result.agreement_after > result.agreement_before
    assert result.prompt["prompt"].abs().sum() > 0


def test_the_safety_valve_ships_only_what_the_held_out_uploads_agree_with_no_less(distilled):
    student, vectors, _ = distilled
    vplu = VPLU(DeviceModel(student), vectors, VPLUConfig(steps=5))
    x = torch.randn(32, 3, 32, 32)
    stats, device_logits = device_view(vplu, x)
    uploads = Uploads(x, stats, torch.zeros(32), device_logits.detach())  # teacher already agrees
    old = vplu.neutral_prompt()
    result = vplu.update(uploads, old)
    assert result.agreement_before == pytest.approx(1.0)
    assert result.shipped == (result.agreement_after >= result.agreement_before)
    if not result.shipped:
        assert all(torch.equal(result.prompt[k], old[k]) for k in old)


def test_uncertain_uploads_move_the_prompt_faster(distilled):
    student, vectors, _ = distilled
    vplu = VPLU(DeviceModel(student), vectors, VPLUConfig(steps=1, ema_base=0.9, ema_scale=0.8))
    x = torch.randn(8, 3, 32, 32)
    stats, logits = device_view(vplu, x)
    calm = vplu.update(Uploads(x, stats, torch.zeros(8), logits.detach()), vplu.neutral_prompt())
    stormy = vplu.update(Uploads(x, stats, torch.ones(8), logits.detach()), vplu.neutral_prompt())
    assert stormy.momentum < calm.momentum


def test_ensemble_target_sits_between_teacher_and_device(distilled):
    student, vectors, _ = distilled
    vplu = VPLU(DeviceModel(student), vectors, VPLUConfig(target="ensemble", precision="fp32"))
    x = torch.randn(8, 3, 32, 32)
    stats, device_logits = device_view(vplu, x)
    teacher_logits = torch.zeros_like(device_logits)
    teacher_logits[:, 0] = 10.0  # a confident teacher that always says class 0
    uploads = Uploads(x, stats, torch.zeros(8), teacher_logits)
    target = vplu.targets(uploads, vplu.replay_stats(stats), vplu.neutral_prompt())
    torch.testing.assert_close(target.sum(1), torch.ones(8))
    device_p, teacher_p = device_logits.softmax(1), teacher_logits.softmax(1)
    low = torch.minimum(device_p, teacher_p) - 1e-5
    high = torch.maximum(device_p, teacher_p) + 1e-5
    assert torch.all((target >= low) & (target <= high))


def test_config_rejects_unknown_parts_and_targets():
    with pytest.raises(ConfigError, match="subset"):
        VPLUConfig(parts=("weights",))
    with pytest.raises(ConfigError, match="target"):
        VPLUConfig(target="oracle")


def test_the_fit_moves_the_encoders_batchnorms_and_keeps_the_projectors_as_shipped(distilled):
    student, vectors, _ = distilled
    vplu = VPLU(DeviceModel(student), vectors, VPLUConfig(steps=3, lr=5e-2))
    x = torch.randn(16, 3, 32, 32)
    stats, logits = device_view(vplu, x)
    start = vplu.neutral_prompt()
    start["norm_affine"] = 0.01 * torch.randn_like(start["norm_affine"])  # a shipped prompt
    target = (-logits).softmax(1).detach()
    [learned], _ = vplu._fit_many([(x, target)], [vplu.replay_stats(stats)], [start])
    moved = (learned["norm_affine"] != start["norm_affine"]).any(dim=0)
    for layer in vplu.model.norm_layers:
        span = moved[layer.offset : layer.offset + layer.channels]
        assert bool(span.any()) == layer.name.startswith("encoder."), layer.name


def test_extra_samples_join_the_fit_but_never_the_safety_valve(distilled):
    student, vectors, _ = distilled
    torch.manual_seed(0)
    vplu = VPLU(DeviceModel(student), vectors, VPLUConfig(steps=3))
    x = torch.randn(24, 3, 32, 32)
    stats, device_logits = device_view(vplu, x)
    uploads = Uploads(x, stats, torch.full((24,), 0.5), device_logits.detach() * 2)
    extra_x = torch.randn(16, 3, 32, 32)
    extra_target = torch.nn.functional.one_hot(torch.arange(16) % 4, 4).float()
    plain = vplu.update(uploads, vplu.neutral_prompt())
    with_extra = vplu.update(uploads, vplu.neutral_prompt(), (extra_x, extra_target))
    assert with_extra.losses != plain.losses  # the fit saw them
    assert with_extra.agreement_before == plain.agreement_before  # held out: uploads only


def fleet_requests(vplu: VPLU, student, devices: int) -> list[FitRequest]:
    """Devices in different environments, with different prompts, buffers and extra samples."""
    requests = []
    for d in range(devices):
        g = torch.Generator().manual_seed(d)
        clean = torch.randn(20 + 6 * d, 3, 32, 32, generator=g)
        x = clean * (0.2 + 0.1 * d) + 0.3  # each device its own low-contrast environment
        stats, _ = device_view(vplu, x)
        teacher = student(clean, vplu.class_vectors).detach() * 3  # sees the clean images
        shipped = vplu.neutral_prompt()
        shipped["norm_affine"] = 0.02 * d * torch.randn(shipped["norm_affine"].shape, generator=g)
        uncertainty = torch.rand(len(x), generator=g)
        extra = None
        if d % 2:  # some devices fit on rendered samples too
            extra = (x[:8] * 0.5, teacher[:8].softmax(1))
        requests.append(
            FitRequest(Uploads(x, stats.detach(), uncertainty, teacher), shipped, extra)
        )
    return requests


@pytest.mark.parametrize("chunk_samples", [64, 10_000])  # several passes, or one for all
def test_a_fleet_fitted_at_once_gets_what_each_device_gets_alone(distilled, chunk_samples):
    student, vectors, _ = distilled
    config = VPLUConfig(steps=4, lr=5e-2, precision="fp32")
    alone = VPLU(DeviceModel(student), vectors, config)
    together = VPLU(DeviceModel(student), vectors, config, chunk_samples=chunk_samples)
    requests = fleet_requests(alone, student, 5)
    expected = [alone.update(r.uploads, r.shipped, r.extra) for r in requests]
    results = together.update_many(requests)
    for one, many in zip(expected, results, strict=True):
        assert many.shipped == one.shipped
        assert many.momentum == one.momentum
        assert many.agreement_before == one.agreement_before
        assert many.agreement_after == one.agreement_after
        torch.testing.assert_close(many.losses, one.losses, atol=1e-4, rtol=1e-4)
        for k in one.prompt:
            torch.testing.assert_close(many.prompt[k], one.prompt[k], atol=1e-5, rtol=1e-4)
    moved = [
        not torch.equal(r.prompt["norm_affine"], q.shipped["norm_affine"])
        for r, q in zip(results, requests, strict=True)
    ]
    assert any(moved)  # the fits learned something, so equality is not of untouched prompts


def test_auto_precision_is_bfloat16_only_where_the_cpu_computes_it_natively(monkeypatch):
    from cloud.adaptation import precision

    cpu = torch.device("cpu")
    assert precision.fit_dtype("fp32", cpu) == torch.float32
    assert precision.fit_dtype("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.fit_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.fit_dtype("auto", cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match="precision"):
        VPLUConfig(precision="fp8")


def test_a_bfloat16_fit_learns_the_prompt_a_float32_fit_learns(distilled):
    student, vectors, _ = distilled
    learned = {}
    for name in ("fp32", "bf16"):
        vplu = VPLU(DeviceModel(student), vectors, VPLUConfig(steps=4, precision=name))
        assert vplu.dtype == (torch.bfloat16 if name == "bf16" else torch.float32)
        requests = fleet_requests(vplu, student, 3)
        stats = [vplu.replay_stats(r.uploads.batch_stats) for r in requests]
        trains = [(r.uploads.x, r.uploads.teacher_logits.softmax(1)) for r in requests]
        prompts, _ = vplu._fit_many(trains, stats, [r.shipped for r in requests])
        learned[name] = [
            p["norm_affine"] - r.shipped["norm_affine"]
            for p, r in zip(prompts, requests, strict=True)
        ]
    for exact, rounded in zip(learned["fp32"], learned["bf16"], strict=True):
        # Adam's first steps go by the gradient's sign, so channels whose gradient is
        # near zero may flip under bfloat16's rounding; the prompt as a whole may not
        assert F.cosine_similarity(exact.flatten(), rounded.flatten(), dim=0) > 0.9
        assert float(rounded.norm()) == pytest.approx(float(exact.norm()), rel=0.05)


def test_fits_run_where_the_config_says_and_a_bad_device_is_refused(distilled):
    student, vectors, _ = distilled
    vplu = VPLU(DeviceModel(student), vectors, VPLUConfig(device="cpu"))
    assert vplu.device == torch.device("cpu")
    assert vplu.running_stats.device == vplu.neutral["norm_affine"].device == torch.device("cpu")
    for name in ("cuda", "cuda:1", "auto"):
        assert VPLUConfig(device=name).device == name
    with pytest.raises(ConfigError, match="device"):
        VPLUConfig(device="gpu")
