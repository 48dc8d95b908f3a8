"""Every on-device peer under the benchmark's protocol: it adapts, answers before adapting, never sees labels."""

import numpy as np
import pytest
import torch

from cloud.data.formats import open_benchmark
from cloud.students import create_student
from cloud.students.preprocess import Normalization
from simulations.online import run_method
from simulations.peers import PEERS, PixelModel, create_method
from simulations.peers.roid import _prior_corrected
from simulations.streams import parse_stream

ADAPTIVE = [name for name in PEERS if name not in ("source", "bn_adapt")]
# what each peer's first answer must equal: the unadapted model it starts from
FIRST_ANSWER = {
    "forward_only": "bn_adapt",
    "tent": "bn_adapt",
    "eata": "bn_adapt",
    "sar": "bn_adapt",
    "roid": "bn_adapt",  # then prior-corrected
    "rotta": "source",  # the teacher, robust BN still at the source statistics
}


@pytest.fixture
def confident_model():
    """A compact CNN whose answers are confident enough to pass EATA/SAR's entropy filters."""
    torch.manual_seed(0)
    student = create_student("compact_cnn", 3)
    with torch.no_grad():
        student.classifier.weight.mul_(40)
    return PixelModel(student, Normalization((0.2,) * 3, (0.3,) * 3))


def shifted(seed, n=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 32, 32, generator=g) * 0.4 + 0.4).clamp(0, 1)


@pytest.fixture
def source():
    g = torch.Generator().manual_seed(9)
    return torch.rand(40, 3, 32, 32, generator=g)


@pytest.mark.parametrize("name", list(FIRST_ANSWER))
def test_the_first_answer_comes_before_any_adaptation(confident_model, source, name):
    batch = shifted(1)
    answer = create_method(name, confident_model, source).step(batch)
    reference = create_method(FIRST_ANSWER[name], confident_model).step(batch)
    if name == "roid":
        reference = _prior_corrected(reference)
    torch.testing.assert_close(answer, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_every_adaptive_peer_changes_its_answer_as_it_adapts(confident_model, source, name):
    method = create_method(name, confident_model, source)
    if name == "cotta":
        method.num_augs = 2
    if name == "sar":
        method.reset_below = 0.0  # this model is so sure that SAR would reset it every step
    probe = shifted(1)
    first = method.step(probe)
    for seed in range(2, 6):
        method.step(shifted(seed))
    assert not torch.allclose(method.step(probe), first, atol=1e-5)
    costs = method.costs()
    assert costs["device_forwards_per_frame"] >= 1
    assert method.hyperparameters, "the run must record the settings"


def test_gradient_free_peers_never_train_and_training_peers_count_backward(confident_model, source):
    for name in ("source", "bn_adapt", "forward_only"):
        method = create_method(name, confident_model, source)
        method.step(shifted(1))
        assert method.costs()["device_backwards_per_frame"] == 0
        assert not method.uses_backprop
    for name in ("tent", "eata", "sar", "roid"):
        method = create_method(name, confident_model, source)
        method.step(shifted(1))
        assert method.costs()["device_backwards_per_frame"] > 0
        assert method.uses_backprop


def test_forward_only_costs_two_passes_and_keeps_no_activations(
    confident_model, source, tiny_benchmark
):
    dataset = open_benchmark(tiny_benchmark)
    stream = parse_stream("continual", ["gaussian_noise", "contrast"], 5, 12, 4)[0]
    model = confident_model
    make = lambda name: create_method(name, model, source)  # noqa: E731
    result = run_method("forward_only", make, dataset, stream)
    assert result.costs["device_forwards_per_frame"] == 2
    assert result.costs["device_activations_mb"] == 0
    tent = run_method("tent", make, dataset, stream)
    assert tent.costs["device_activations_mb"] > 0
    assert result.hyperparameters["source_images"] == 40


def test_eata_without_source_images_runs_as_eta(confident_model):
    eata = create_method("eata", confident_model)
    eata.step(shifted(1))
    assert eata.hyperparameters["fisher_weight"] == 0.0


def test_sar_recovers_the_source_when_its_loss_collapses(confident_model):
    sar = create_method("sar", confident_model)
    sar.reset_below = 10.0  # any loss counts as collapsed
    sar.step(shifted(1))
    assert sar.resets == 1
    for key, value in sar.model.state_dict().items():
        torch.testing.assert_close(value, sar._adapted_state[key])


def test_rotta_memory_keeps_classes_balanced():
    from simulations.peers.rotta import BalancedMemory

    memory = BalancedMemory(capacity=6, num_classes=3, lambda_t=1.0, lambda_u=1.0)
    for i in range(30):
        memory.add(torch.full((1,), float(i)), label=0, uncertainty=0.1)
    memory.add(torch.zeros(1), label=1, uncertainty=0.1)
    images, ages = memory.contents()
    assert len(images) <= 6
    assert sum(len(s) for s in memory.slots[:1]) <= 6
    assert len(memory.slots[1]) == 1  # a minority class always finds room
    assert all(a >= 0 for a in ages)


@pytest.mark.parametrize("name", list(PEERS))
def test_no_peer_sees_labels(confident_model, source, tiny_benchmark, tmp_path, name):
    """Scrambling the labels changes the score, never a prediction."""
    import shutil

    scrambled = tmp_path / "scrambled"
    shutil.copytree(tiny_benchmark, scrambled)
    labels = np.load(scrambled / "labels.npy")
    np.save(scrambled / "labels.npy", np.roll(labels, 1))
    stream = parse_stream("continual", ["gaussian_noise", "contrast"], 5, 12, 4)[0]
    predictions = []
    for folder in (tiny_benchmark, scrambled):
        seen: list[np.ndarray] = []

        def make(method_name, seen=seen):
            method = create_method(method_name, confident_model, source)
            if method_name == "cotta":
                method.num_augs = 2
            step = method.step
            method.step = lambda pixels: (
                seen.append(step(pixels).argmax(1).numpy())
                or torch.from_numpy(  # type: ignore[method-assign]
                    np.eye(3)[seen[-1]]
                )
            )
            return method

        run_method(name, make, open_benchmark(folder), stream, seed=0)
        predictions.append(np.concatenate(seen))
    np.testing.assert_array_equal(predictions[0], predictions[1])


def test_the_fleet_report_offers_every_on_device_peer():
    from protocol.config.fleet import ON_DEVICE_PEERS

    assert tuple(PEERS) == ON_DEVICE_PEERS


def test_a_peer_setting_replaces_the_papers_value_and_typos_are_refused(confident_model):
    from protocol.errors import ConfigError
    from simulations.peers import parse_peer_settings

    settings = parse_peer_settings(["tent.lr=0.01", "cema.lr_scale=1", "forward_only.lr=3e-2"])
    assert settings == {"tent": {"lr": 0.01}, "cema": {"lr_scale": 1}, "forward_only": {"lr": 0.03}}
    assert create_method("tent", confident_model, **settings["tent"]).hyperparameters["lr"] == 0.01
    with pytest.raises(ConfigError, match="tent has no setting"):
        create_method("tent", confident_model, learning_rate=0.1)
    with pytest.raises(ConfigError, match="METHOD.KEY=VALUE"):
        parse_peer_settings(["lr=0.1"])
