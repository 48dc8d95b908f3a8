import dataclasses

import numpy as np
import pytest

from device.agent import DeviceAgent
from device.prompt_gate import prefers_prompt
from device.runtime import DeviceRuntime
from protocol.config.adaptation import DeviceSettings
from protocol.errors import ConfigError

SURE = np.array([[8.0, 0.0, 0.0], [0.0, 8.0, 0.0]], np.float32)
UNSURE = np.array([[1.0, 0.5, 0.0], [0.2, 0.4, 0.0]], np.float32)


def test_the_surer_batch_wins_and_a_tie_keeps_the_prompt():
    assert prefers_prompt(SURE, UNSURE)
    assert not prefers_prompt(UNSURE, SURE)
    assert prefers_prompt(UNSURE, UNSURE.copy())


def test_the_gate_judges_the_batch_not_single_frames():
    # the prompt is much surer on one frame, a little less sure on the other: on average surer
    prompted = np.array([[9.0, 0.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    fallback = np.array([[1.0, 0.0, 0.0], [1.5, 0.0, 0.0]], np.float32)
    assert prefers_prompt(prompted, fallback)


def test_mismatched_logits_and_unknown_gates_are_refused():
    with pytest.raises(ValueError, match="shape"):
        prefers_prompt(SURE, SURE[:1])
    with pytest.raises(ConfigError, match="entropy"):
        DeviceSettings(gate="confidence")


def _agent(exported, gate="entropy", gate_every=1):
    # statistics on every batch: the gate's full second pass (test_held_statistics covers
    # the gate on held batches)
    settings = DeviceSettings(gate=gate, gate_every=gate_every, stats_every=1)
    return DeviceAgent(DeviceRuntime.load(exported.manifest), settings)


@pytest.fixture
def frames():
    return np.random.default_rng(5).integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)


def test_without_a_prompt_the_agent_answers_with_its_only_pass(exported, frames):
    step = _agent(exported).step(frames)
    assert step.used_prompt
    np.testing.assert_array_equal(step.logits, step.prediction.logits)


@pytest.mark.parametrize(("scale", "kept"), [(0.02, False), (5.0, True)])
def test_a_prompt_that_makes_the_device_less_sure_is_not_used(exported, frames, scale, kept):
    # class vectors scaled down flatten every softmax (less sure), scaled up sharpen it
    agent = _agent(exported)
    bare = agent.runtime.predict(frames).logits
    agent.apply({"class_vectors": agent.runtime.defaults["class_vectors"] * np.float32(scale)})
    step = agent.step(frames)
    assert step.used_prompt is kept
    np.testing.assert_allclose(step.logits, step.prediction.logits if kept else bare, atol=1e-6)
    # whatever is answered, the uploads are scored on the prompted run the cloud learns from
    assert not np.allclose(step.prediction.logits, bare)


def test_a_prompt_that_won_goes_unchecked_until_gate_every_a_new_prompt_or_a_shift(
    exported, frames
):
    agent = _agent(exported, gate_every=3)
    sharper = agent.runtime.defaults["class_vectors"] * np.float32(5.0)  # wins every check
    agent.apply({"class_vectors": sharper})
    assert [agent.step(frames).passes for _ in range(5)] == [2, 1, 1, 2, 1]
    agent.apply({"class_vectors": sharper * np.float32(1.1)})  # a new prompt: checked at once
    assert agent.step(frames).passes == 2
    decide = agent.sampler.decide
    agent.sampler.decide = lambda *args: dataclasses.replace(decide(*args), shift=True)
    assert agent.step(frames).passes == 1  # still trusted on the batch that shifted ...
    assert agent.step(frames).passes == 2  # ... checked on the next
    agent.sampler.decide = decide
    flat = agent.runtime.defaults["class_vectors"] * np.float32(0.02)  # loses every check
    agent.apply({"class_vectors": flat})
    steps = [agent.step(frames) for _ in range(3)]
    assert [(s.passes, s.used_prompt) for s in steps] == [(2, False)] * 3  # checked each batch


def test_gate_off_always_answers_with_the_prompt(exported, frames):
    agent = _agent(exported, gate="off")
    agent.apply({"class_vectors": agent.runtime.defaults["class_vectors"] * np.float32(0.02)})
    step = agent.step(frames)
    assert step.used_prompt
    np.testing.assert_array_equal(step.logits, step.prediction.logits)


@pytest.mark.parametrize(("gate", "gated"), [("entropy", 3), ("off", 0)])
def test_a_device_run_reports_the_batches_it_answered_without_the_prompt(
    exported, tmp_path, gate, gated
):
    import io
    import json

    from device.client import ClientConfig, DeviceClient
    from device.sources import Frames
    from device.spool import PromptCache

    runtime = DeviceRuntime.load(exported.manifest)
    flat = runtime.defaults["class_vectors"] * np.float32(0.02)  # a prompt that only blurs
    PromptCache(tmp_path / "prompt.npz").save(7, {"class_vectors": flat})  # restored on start
    client = DeviceClient(runtime, ClientConfig(tmp_path, DeviceSettings(gate=gate)), link=None)
    images = np.random.default_rng(6).integers(0, 255, (3, 8, 32, 32, 3), dtype=np.uint8)
    out = io.StringIO()
    summary = client.run([Frames(batch, None) for batch in images], out).summary()
    assert summary["batches_prompt_gated"] == gated
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sum(line.get("prompt_gated", False) for line in lines) == 8 * gated
    assert {line["prompt_version"] for line in lines} == {7}
