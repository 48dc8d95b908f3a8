"""Held statistics: the exported graph, its sessions, and when the agent computes statistics."""

import dataclasses
import json

import numpy as np
import pytest

from device.agent import HELD_MIN_BATCH, DeviceAgent
from device.held_schedule import FALLBACK, PROMPTED
from device.runtime import DeviceRuntime
from protocol.config.adaptation import DeviceSettings
from protocol.errors import DataError
from protocol.manifest import manifest_from_json


@pytest.fixture
def frames():
    rng = np.random.default_rng(3)
    return [rng.integers(60, 200, (HELD_MIN_BATCH, 32, 32, 3), dtype=np.uint8) for _ in range(8)]


def _agent(exported, **settings):
    return DeviceAgent(DeviceRuntime.load(exported.manifest), DeviceSettings(**settings))


def test_the_export_names_every_norm_layer_and_a_device_downloads_both_files(exported):
    manifest = manifest_from_json(exported.manifest.read_text())
    assert manifest.held is not None
    assert len(manifest.held.layers) == len(manifest.norm_layers)
    assert {manifest.held.model_file, manifest.held.data_file} <= set(manifest.files)
    channels = sum(int(layer["channels"]) for layer in manifest.norm_layers)
    data = np.fromfile(exported.manifest.parent / manifest.held.data_file, "<f4")
    assert data.size == 4 * channels  # weight, bias, mean, var of every layer


def test_the_held_graph_answers_as_the_device_graph_with_the_same_statistics(exported, frames):
    runtime = DeviceRuntime.load(exported.manifest)
    rng = np.random.default_rng(0)
    affine = (0.2 * rng.normal(size=runtime.defaults["norm_affine"].shape)).astype(np.float32)
    runtime.set_adaptation(norm_affine=affine, stat_mix=np.ones(1, np.float32))
    x = runtime.prepare(frames[0])
    computed = runtime.predict_input(x)  # normalised with its own batch statistics
    assert runtime.held is not None
    session = runtime.held.session(affine, computed.batch_stats)
    logits, embedding = runtime.held.run(session, x, runtime.adaptation)
    np.testing.assert_allclose(logits, computed.logits, atol=1e-4)
    np.testing.assert_allclose(embedding, computed.embedding, atol=1e-5)
    # a single frame on held statistics gets the same answer as inside its batch
    alone, _ = runtime.held.run(session, x[:1], runtime.adaptation)
    np.testing.assert_allclose(alone, logits[:1], atol=1e-4)


def test_statistics_are_computed_every_k_th_batch_and_when_the_input_jumps(exported, frames):
    agent = _agent(exported, stats_every=3)
    fresh = [agent.step(batch).fresh_stats for batch in frames[:7]]
    assert fresh == [True, False, False, True, False, False, True]
    held_step = agent.step(frames[7])
    assert not held_step.fresh_stats
    np.testing.assert_array_equal(held_step.prediction.batch_stats, agent.held.stats[PROMPTED])
    darker = (frames[0] // 4).astype(np.uint8)  # a new environment: the input's statistics jump
    assert agent.step(darker).fresh_stats


def test_a_prompt_with_another_norm_affine_makes_the_next_batch_compute_statistics(
    exported, frames
):
    agent = _agent(exported, stats_every=4, gate="off")
    assert [agent.step(batch).fresh_stats for batch in frames[:2]] == [True, False]
    # new class vectors leave every BatchNorm's input as it was: the held statistics stay
    vectors = agent.runtime.defaults["class_vectors"] * np.float32(2.0)
    agent.apply({"class_vectors": vectors})
    assert not agent.step(frames[2]).fresh_stats
    # a new BatchNorm scale/shift changes what every later layer sees: computed afresh
    affine = agent.runtime.defaults["norm_affine"] + np.float32(0.1)
    agent.apply({"norm_affine": affine})
    step = agent.step(frames[3])
    assert step.fresh_stats
    x = agent.runtime.prepare(frames[3])
    np.testing.assert_array_equal(step.prediction.batch_stats, agent.held.stats[PROMPTED])
    np.testing.assert_allclose(
        agent.held.stats[PROMPTED], agent.runtime.predict_input(x).batch_stats, atol=1e-6
    )
    assert not agent.step(frames[4]).fresh_stats  # and held again under the new prompt


def test_a_small_batch_computes_its_own_statistics_and_leaves_none_held(exported, frames):
    agent = _agent(exported, stats_every=4)
    assert [agent.step(batch).fresh_stats for batch in frames[:2]] == [True, False]
    assert agent.step(frames[2][:4]).fresh_stats
    assert agent.held.stats == {}
    assert agent.step(frames[3]).fresh_stats  # a full batch again: statistics of its own
    assert not agent.step(frames[4]).fresh_stats


def test_every_batch_computes_statistics_by_setting_or_without_a_held_graph(exported, frames):
    assert _agent(exported, stats_every=1).held is None
    assert _agent(exported, stats_every=4, stat_mix=0.5).held is None  # a blend needs the graph
    plain = json.loads(exported.manifest.read_text())
    plain["held"] = None
    folder = exported.manifest.parent
    (folder / "no_held.manifest.json").write_text(json.dumps(plain))
    runtime = DeviceRuntime.load(folder / "no_held.manifest.json")
    agent = DeviceAgent(runtime, DeviceSettings(stats_every=4))
    assert agent.held is None
    assert all(agent.step(batch).fresh_stats for batch in frames[:3])


@pytest.mark.parametrize(("scale", "kept", "passes"), [(5.0, True, 1.25), (0.02, False, 2.0)])
def test_on_held_statistics_the_gate_checks_a_quarter_of_the_batch(
    exported, frames, scale, kept, passes
):
    agent = _agent(exported, stats_every=4)
    vectors = agent.runtime.defaults["class_vectors"] * np.float32(scale)
    agent.apply({"class_vectors": vectors})
    assert agent.step(frames[0]).fresh_stats  # both runs compute and hold their statistics
    assert set(agent.held.stats) == {PROMPTED, FALLBACK}
    step = agent.step(frames[1])
    assert not step.fresh_stats
    assert step.used_prompt is kept
    assert step.passes == passes
    fallback = agent.held.session(FALLBACK, agent.fallback["norm_affine"])
    x = agent.runtime.prepare(frames[1])
    expected = (
        step.prediction.logits if kept else agent.held.model.run(fallback, x, agent.fallback)[0]
    )
    np.testing.assert_allclose(step.logits, expected, atol=1e-5)


def test_a_tampered_held_data_file_is_refused(exported, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(exported.manifest.parent, folder)
    manifest = manifest_from_json(exported.manifest.read_text())
    data = folder / manifest.held.data_file
    data.write_bytes(data.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(DataError, match="does not match its manifest"):
        DeviceRuntime.load(folder / exported.manifest.name)


def test_a_manifest_whose_held_graph_misses_a_layer_is_refused(exported):
    raw = json.loads(exported.manifest.read_text())
    raw["held"]["layers"] = raw["held"]["layers"][:-1]
    with pytest.raises(DataError, match="every one of the norm_layers"):
        manifest_from_json(json.dumps(raw))
    raw = json.loads(exported.manifest.read_text())
    raw["held"]["data_file"] = "../elsewhere.bin"
    with pytest.raises(DataError, match="plain names"):
        manifest_from_json(json.dumps(raw))
    raw = json.loads(exported.manifest.read_text())
    raw["held"]["data_sha256"] = 5
    with pytest.raises(DataError, match="64 lowercase hex"):
        manifest_from_json(json.dumps(raw))


def test_stats_every_below_one_is_refused():
    with pytest.raises(Exception, match="stats_every must be >= 1"):
        dataclasses.replace(DeviceSettings(), stats_every=0)
