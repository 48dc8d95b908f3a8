from dataclasses import replace

import numpy as np
import pytest
import torch

from cloud.adaptation.session import SessionConfig
from cloud.adaptation.synthetic import synthetic_fit
from cloud.adaptation.vplu import VPLUConfig
from cloud.data.labelled import LabelledImages
from cloud.export.device_model import DeviceModel
from cloud.students.architectures import CompactCNN
from cloud.teacher.companion import Companion
from device.sampling import SamplingConfig
from protocol.errors import ConfigError, DataError
from simulations.cloud_device import CloudDeviceWorld, CloudTeacherMethod, UVPAConfig, UVPAMethod
from simulations.label_target import LabelTargetMethod
from simulations.methods import MethodFactory, list_methods
from simulations.peers import PixelModel


@pytest.fixture
def world(distilled):
    student, vectors, info = distilled
    model = DeviceModel(student)

    def teacher(pixels):  # confident and fixed: the student on the un-normalised pixels
        inputs = model.neutral_inputs(vectors, batch=len(pixels))
        return 5 * model(**{**inputs, "x": pixels})[0]

    companion = Companion(CompactCNN(len(vectors), 4), tuple(info.class_names))
    rng = np.random.default_rng(0)
    clean = LabelledImages(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
                           rng.integers(0, len(vectors), 40), tuple(info.class_names), "clean")  # fmt: skip
    return CloudDeviceWorld(
        model, vectors, info.normalization, teacher, companion.probabilities, clean
    )


def batches(count, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 3, 32, 32, generator=g) for _ in range(count)]


def config(delay=1):
    return UVPAConfig(
        sampling=SamplingConfig(budget=0.25), vplu=VPLUConfig(steps=2),
        session=SessionConfig(buffer_size=32, min_uploads=4), delay=delay,
    )  # fmt: skip


@pytest.mark.parametrize("delay", [1, 3])
def test_a_prompt_learned_from_batch_t_is_used_from_batch_t_plus_delay(world, delay):
    method = UVPAMethod("uvpa", world, config(delay))
    arrivals = []
    for t, pixels in enumerate(batches(8)):
        before = {k: v.clone() for k, v in method.inputs.items()}
        method.step(pixels)
        due = [when for when, _ in method.in_flight]
        arrivals += [(t, when) for when in due if when == t + delay]
        changed = any(not torch.equal(before[k], method.inputs[k]) for k in before if k != "x")
        assert not changed or t >= delay  # nothing can arrive before the first delay passed
    assert method.session.updates > 0
    assert all(when - learned == delay for learned, when in arrivals)


@pytest.mark.parametrize("score", ["entropy", "disagreement"])
def test_costs_count_uploads_within_budget_and_both_directions(world, score):
    from dataclasses import replace

    base = config()
    method = UVPAMethod("uvpa", world, replace(base, sampling=replace(base.sampling, score=score)))
    for pixels in batches(6):
        logits = method.step(pixels)
        assert logits.shape == (32, len(world.class_vectors))
    costs = method.costs()
    assert 0 < costs["upload_fraction"] <= 0.25
    per_frame_up = 3 * 32 * 32  # uint8 frames dominate the uplink
    assert costs["bytes_up_per_1000"] >= costs["upload_fraction"] * 1000 * per_frame_up
    assert costs["bytes_down_per_1000"] > 0 or method.session.shipped == 0


def test_cloud_teacher_uploads_every_frame(world):
    method = CloudTeacherMethod("cloud_teacher", world)
    for pixels in batches(2):
        method.step(pixels)
    costs = method.costs()
    assert costs["upload_fraction"] == 1.0
    assert costs["bytes_up_per_1000"] > 1000 * 3 * 32 * 32


def test_factory_builds_every_method_and_refuses_cloud_rows_without_a_teacher(world, distilled):
    from simulations.bench.models import ClassVectorHead

    student, vectors, info = distilled
    model = PixelModel(ClassVectorHead(student, vectors), info.normalization)
    factory = MethodFactory(model, world)
    for name in list_methods():
        method, pixels = factory.create(name), batches(1)[0]
        if isinstance(method, LabelTargetMethod):
            method.reveal_labels(pixels, np.zeros(len(pixels), dtype=np.int64))
        assert method.step(pixels).shape == (32, len(vectors))
    with pytest.raises(ConfigError, match="distilled student"):
        MethodFactory(model, None).check("uvpa")
    without_companion = replace(world, companion=None)
    with pytest.raises(ConfigError, match="cdca train companion"):
        MethodFactory(model, without_companion).check("uvpa_companion")
    MethodFactory(model, without_companion).create("uvpa")  # the other rows do not need one
    with pytest.raises(ConfigError, match="CDCA_DATA"):
        MethodFactory(model, replace(world, clean=None)).check("uvpa_synthetic")
    with pytest.raises(ConfigError, match="delay"):
        MethodFactory(model, world, delay=0)
    every_norm = MethodFactory(model, world, fit_norms="all").variants
    assert {c.vplu.fit_norms for c in every_norm.values()} == {"all"}
    # the synthetic row fits with the step its samples bear; every other row as `uvpa`
    lrs = {name: c.vplu.lr for name, c in every_norm.items()}
    assert lrs.pop("uvpa_synthetic") == synthetic_fit(every_norm["uvpa"].vplu).lr
    assert set(lrs.values()) == {every_norm["uvpa"].vplu.lr}


def test_label_target_teaches_each_upload_its_revealed_label(world):
    method = LabelTargetMethod("uvpa_label_target", world, config())
    plain = UVPAMethod("uvpa", world, config())
    g = torch.Generator().manual_seed(1)
    revealed = {}
    for t, pixels in enumerate(batches(4)):
        labels = torch.randint(0, len(world.class_vectors), (len(pixels),), generator=g).numpy()
        method.reveal_labels(pixels, labels)
        frames = (pixels * 255).round().to(torch.uint8).numpy()
        revealed.update({f.tobytes(): int(y) for f, y in zip(frames, labels, strict=True)})
        logits = method.step(pixels)
        if t == 0:  # no prompt has arrived yet: the labels cannot touch this prediction
            assert torch.equal(logits, plain.step(pixels))
    assert method.session.uploads > 0
    for sample in method.session.buffer:
        assert int(sample.teacher_logits.argmax()) == revealed[sample.frame.numpy().tobytes()]


def test_label_target_refuses_uploads_whose_labels_were_not_revealed(world):
    method = LabelTargetMethod("uvpa_label_target", world, config())
    with pytest.raises(DataError, match="reveal_labels"):
        method.step(batches(1)[0])


@pytest.mark.parametrize(("gate", "scale", "answers_with_prompt"),
                         [("entropy", 0.02, False), ("entropy", 5.0, True), ("off", 0.02, True)])  # fmt: skip
def test_the_bench_device_gates_prompts_like_the_device_agent(
    world, gate, scale, answers_with_prompt
):
    method = UVPAMethod("uvpa", world, replace(config(), gate=gate))
    pixels = batches(1)[0]
    x = world.normalize(pixels)
    with torch.no_grad():
        bare = world.device_model(**{**method.inputs, "x": x})[0]
        method.inputs["class_vectors"] = world.class_vectors * scale  # a prompt in force
        prompted = world.device_model(**{**method.inputs, "x": x})[0]
    answer = method.step(pixels)
    torch.testing.assert_close(answer, prompted if answers_with_prompt else bare)


def test_an_unknown_gate_is_refused():
    with pytest.raises(ConfigError, match="prompt gate"):
        UVPAConfig(gate="vote")


def test_synthetic_samples_join_the_cloud_fit_of_the_synthetic_row(world):
    method = UVPAMethod("uvpa_synthetic", world, replace(config(), synthetic=8))
    assert method.session.synthetic is not None
    assert method.session.synthetic.config.count == 8
    rendered = []
    render = method.session.synthetic.render
    method.session.synthetic.render = lambda frames: rendered.append(len(frames)) or render(frames)
    for pixels in batches(4):
        method.step(pixels)
    assert method.session.updates == len(rendered) > 0
    assert UVPAMethod("uvpa", world, config()).session.synthetic is None
    torch.manual_seed(5)  # as `cdca bench adapt --seed 5` does before building each method
    assert (
        UVPAMethod(
            "uvpa_synthetic", world, replace(config(), synthetic=8)
        ).session.synthetic.config.seed
        == 5
    )
    with pytest.raises(ConfigError, match="synthetic"):
        UVPAConfig(synthetic=-1)
