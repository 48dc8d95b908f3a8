import pytest
import torch

from cloud.coop import CoOpPromptLearner
from cloud.teacher.factory import create_teacher
from cloud.teacher.text_encoder import TextEncoder
from protocol.errors import ConfigError

NAMES = ("T-shirt/top", "trouser", "ankle boot")


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return create_teacher("builtin", device="cpu", load_weights=False)


@pytest.fixture(scope="module")
def encoder(teacher):
    return TextEncoder(teacher)


def test_word_initialised_context_reproduces_encode_text(teacher, encoder):
    learner = CoOpPromptLearner(encoder, NAMES, ctx_init="a photo of a")
    torch.testing.assert_close(
        learner.class_vectors(), teacher.class_vectors(NAMES, "a photo of a {}.")
    )


@pytest.mark.parametrize(
    "options",
    [
        {"num_ctx_tokens": 4},
        {"num_ctx_tokens": 4, "class_specific": True},
        {"num_ctx_tokens": 4, "class_token_position": "middle"},
        {"ctx_init": "a photo of a", "class_specific": True, "class_token_position": "middle"},
    ],
)
def test_gradients_reach_only_the_context(encoder, options):
    learner = CoOpPromptLearner(encoder, NAMES, **options)
    trainable = [name for name, p in learner.named_parameters() if p.requires_grad]
    assert trainable == ["ctx"]
    learner.class_vectors().sum().backward()
    assert learner.ctx.grad is not None
    assert learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())
    expected = (
        (len(NAMES), learner.num_ctx, encoder.width)
        if options.get("class_specific")
        else (learner.num_ctx, encoder.width)
    )
    assert tuple(learner.ctx.shape) == expected


def test_middle_position_puts_the_class_between_context_halves(encoder):
    learner = CoOpPromptLearner(encoder, NAMES, num_ctx_tokens=4, class_token_position="middle")
    prompts = learner()
    with torch.no_grad():
        learner.ctx.fill_(7.0)
    moved = learner()
    changed = (moved != prompts).any(dim=-1)[0]  # positions that hold context, first class
    name_len = learner.name_lengths[0]
    assert changed.nonzero().flatten().tolist() == [1, 2, 3 + name_len, 4 + name_len]


def test_reset_restores_the_initial_context(encoder):
    learner = CoOpPromptLearner(encoder, NAMES, num_ctx_tokens=4)
    before = learner.class_vectors().detach()
    with torch.no_grad():
        learner.ctx.add_(1.0)
    assert not torch.allclose(learner.class_vectors(), before)
    learner.reset()
    torch.testing.assert_close(learner.class_vectors().detach(), before)
    assert set(learner.trainable_state()) == {"ctx"}


def test_too_many_context_tokens_is_a_clear_error(encoder):
    with pytest.raises(ConfigError, match="context length"):
        CoOpPromptLearner(encoder, NAMES, num_ctx_tokens=40)
    with pytest.raises(ConfigError, match="class_token_position"):
        CoOpPromptLearner(encoder, NAMES, class_token_position="front")


@pytest.mark.usefixtures("fashion_mnist_installed", "shipped_random_teacher")
def test_learn_prompts_command_reports_zero_shot_and_learned(tmp_path):
    import json

    from simulations.cli import main

    code = main(
        [
            "cloud",
            "learn-prompts",
            "--shots",
            "1",
            "--epochs",
            "3",
            "--num-test",
            "40",
            "--set",
            f"data.shifted={tmp_path / 'none'}",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results) == {"zero-shot", "CoOp 1-shot"}
    assert 0.0 <= results["CoOp 1-shot"]["clean"] <= 1.0
    assert (tmp_path / "run" / "coop_1shot.pt").is_file()
