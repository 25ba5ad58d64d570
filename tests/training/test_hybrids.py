"""Post-training hybrids (Mamba-2 + attention) with StatePassingTrainer: every state init trains; TBTT carries the
attention window with the SSM states and resumes exactly; LoRA targets the attention projections too."""

import pytest
import torch
from datasets import Dataset

import hf_longssm as hl
from tests.utils import HYBRID_TYPES, tiny_hybrid


DOCUMENTS = Dataset.from_dict({"input_ids": [[1 + (d * 7 + i) % 60 for i in range(150 + 13 * d)] for d in range(12)]})


def config(tmp_path, name, **overrides):
    settings = dict(
        output_dir=str(tmp_path / name), segment_length=16, per_device_train_batch_size=2, learning_rate=1e-3,
        lr_scheduler_type="constant", report_to=[], use_cpu=True, logging_steps=1, disable_tqdm=True, seed=0,
    )  # fmt: skip
    return hl.StatePassingConfig(**{**settings, **overrides})


def losses(trainer):
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


@pytest.mark.parametrize("model_type", HYBRID_TYPES)
def test_tbtt_carries_the_attention_window_and_resumes_exactly(tmp_path, model_type):
    def run(name, max_steps, resume=None):
        args = config(tmp_path, name, state_init="tbtt", max_steps=max_steps, save_strategy="steps", save_steps=2)
        trainer = hl.StatePassingTrainer(tiny_hybrid(model_type), args, train_dataset=DOCUMENTS)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run("full", 4)
    carried = full.intervention.carried
    assert carried.num_keys == 16 and carried.position == 4 * 16  # the window: the last segment's keys
    run("part", 2)
    resumed = run("part", 4, resume=str(tmp_path / "part" / "checkpoint-2"))
    assert losses(resumed)[2:] == pytest.approx(losses(full)[2:], abs=1e-5)
    assert torch.equal(resumed.intervention.carried.keys[0], carried.keys[0])


@pytest.mark.parametrize("state_init", ["zero", "random_noise", "fitted_noise", "state_passing"])
def test_every_state_init_trains_a_hybrid(tmp_path, state_init):
    model = tiny_hybrid("bamba")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = config(tmp_path, state_init, state_init=state_init, max_steps=3, fitted_noise_warmup_steps=1)
    trainer = hl.StatePassingTrainer(model, args, train_dataset=DOCUMENTS)
    trainer.train()
    assert all(torch.isfinite(torch.tensor(losses(trainer))))
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    carried = trainer.intervention.carried
    if state_init == "state_passing":  # another sequence's keys come with its SSM states
        assert carried.num_keys == 16


def test_full_attention_state_keeps_every_key_and_none_keeps_none_and_the_card_says_so(tmp_path):
    for policy, expected in (("full", 3 * 16), ("none", 0)):
        args = config(tmp_path, policy, state_init="tbtt", max_steps=3, attention_state=policy)
        trainer = hl.StatePassingTrainer(tiny_hybrid("nemotron_h"), args, train_dataset=DOCUMENTS)
        trainer.train()
        assert trainer.intervention.carried.num_keys == expected
        trainer.create_model_card()
        card = (tmp_path / policy / "README.md").read_text()
        assert f"| attention_state | `{policy}` |" in card and "Nemotron-H" in card


def test_lora_targets_the_mamba_and_attention_projections(tmp_path):
    from peft import LoraConfig

    args = config(tmp_path, "lora", state_init="tbtt", max_steps=2)
    trainer = hl.StatePassingTrainer(
        tiny_hybrid("granitemoehybrid"),
        args,
        train_dataset=DOCUMENTS,
        peft_config=LoraConfig(r=4, task_type="CAUSAL_LM"),
    )
    trainer.train()
    adapted = {n.split(".")[-2] for n, _ in trainer.model.named_parameters() if "lora_A" in n}
    assert {"in_proj", "q_proj", "k_proj", "v_proj", "o_proj"} <= {n for n in adapted} | {
        n.split(".lora_A")[0].split(".")[-1] for n, _ in trainer.model.named_parameters() if "lora_A" in n
    }
