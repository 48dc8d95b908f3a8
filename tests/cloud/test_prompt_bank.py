import pytest
import torch

from cloud.adaptation.prompt_bank import PromptBank
from protocol.config.adaptation import PromptBankConfig as BankConfig
from protocol.errors import ConfigError


def neutral():
    return {"norm_affine": torch.zeros(2, 10), "class_vectors": torch.ones(3, 4)}


def test_starts_at_the_unadapted_student_and_accepts_absolute_prompts():
    bank = PromptBank(neutral())
    assert all(torch.equal(bank.current()[k], v) for k, v in neutral().items())
    learned = {"norm_affine": torch.full((2, 10), 0.3), "class_vectors": torch.full((3, 4), 2.0)}
    bank.accept(learned)
    assert all(torch.allclose(bank.current()[k], v) for k, v in learned.items())


def test_new_environment_keeps_the_shared_part_and_holds_back_sensitive_entries():
    bank = PromptBank(neutral(), BankConfig(shared_rate=0.5, sensitive_quantile=0.8))
    delta = torch.linspace(0.1, 1.0, 20).view(2, 10)  # the top 20 % are "domain-sensitive"
    bank.accept({"norm_affine": delta, "class_vectors": torch.ones(3, 4)})
    after = bank.new_environment()["norm_affine"]
    small = delta <= torch.quantile(delta.flatten(), 0.8)
    torch.testing.assert_close(after[small], 0.5 * delta[small])
    assert torch.all(after[~small] == 0)  # held back: they described the old environment
    assert bank.environments == 2
    assert torch.all(bank.specific["norm_affine"] == 0)


def test_bad_config_is_refused():
    with pytest.raises(ConfigError):
        BankConfig(shared_rate=1.5)
