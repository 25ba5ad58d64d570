"""PEFT LoRA through the trainer: every default target trains, merging keeps the output, the adapter saves."""

import pytest
import torch
from datasets import Dataset

import hf_longssm as hl
from hf_longssm.modeling import get_architecture
from tests.utils import MODEL_TYPES, tiny_model


peft = pytest.importorskip("peft")


def lora_trainer(tmp_path, model_type, **lora):
    model = tiny_model(model_type)
    documents = Dataset.from_dict({"input_ids": torch.randint(1, 64, (8, 160)).tolist()})
    args = hl.StatePassingConfig(
        output_dir=str(tmp_path / model_type),
        state_init="state_passing",
        segment_length=16,
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    config = peft.LoraConfig(r=4, **lora)
    return hl.StatePassingTrainer(model=model, args=args, train_dataset=documents, peft_config=config)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_default_lora_target_trains(tmp_path, model_type):
    trainer = lora_trainer(tmp_path, model_type)
    targets = set(get_architecture(model_type).lora_target_modules)
    assert set(trainer.model.peft_config["default"].target_modules) == targets
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert initial and all("lora_" in n for n in initial)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in initial} == targets
    trainer.train()
    unchanged = [n for n, p in trainer.model.named_parameters() if n in initial and torch.equal(p, initial[n])]
    assert unchanged == []


def test_a_dt_proj_adapter_would_never_train(tmp_path):
    """Why `dt_proj` is not a default: the mixer reads `dt_proj.weight` directly, so its adapter gets no gradient."""
    trainer = lora_trainer(tmp_path, "mamba", target_modules=["in_proj", "dt_proj"])
    ids = torch.randint(1, 64, (2, 16))
    hl.forward_with_state(trainer.model, ids, labels=ids)[0].loss.backward()
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert all(g is None for n, g in grads.items() if "dt_proj" in n)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "in_proj" in n)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_merged_adapter_equals_unmerged_output(tmp_path, model_type):
    trainer = lora_trainer(tmp_path, model_type)
    trainer.train()
    ids = torch.randint(1, 64, (2, 40))
    with torch.no_grad():
        adapted = hl.forward_with_state(trainer.model, ids)[0].logits
        merged = trainer.model.merge_and_unload()
        after_merge = hl.forward_with_state(merged, ids)[0].logits
        plain = merged(ids).logits  # transformers' own forward on the merged weights
    torch.testing.assert_close(adapted, after_merge, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(adapted, plain, atol=1e-4, rtol=1e-4)


def test_lora_adapter_saves_without_the_base_weights(tmp_path):
    trainer = lora_trainer(tmp_path, "mamba2")
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()


def test_lora_card_keeps_peft_fields(tmp_path):
    from huggingface_hub import ModelCard

    model = tiny_model("mamba")
    model.config._name_or_path = "state-spaces/mamba-130m-hf"
    documents = Dataset.from_dict({"input_ids": torch.randint(1, 64, (8, 160)).tolist()})
    args = hl.StatePassingConfig(
        output_dir=str(tmp_path / "lora"), segment_length=16, per_device_train_batch_size=4, max_steps=1,
        use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = hl.StatePassingTrainer(model=model, args=args, train_dataset=documents, peft_config=peft.LoraConfig(r=4))
    trainer.train()
    trainer.save_model()
    trainer.create_model_card()
    card = ModelCard.load(tmp_path / "lora" / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.base_model == "state-spaces/mamba-130m-hf"
    assert "lora" in card.data.tags and "hf_longssm" in card.data.tags
    assert "AutoPeftModelForCausalLM" in card.text and "AutoTokenizer" in card.text


def test_lora_on_a_mamba_ssm_checkpoint_saves_only_the_adapter_and_reloads(tmp_path):
    # mamba_ssm's config.json says vocab_size 257; the loaded model has it padded (264). peft's "auto" check reads
    # that config.json, sees a resized vocabulary and would save the whole embedding into the adapter.
    from safetensors.torch import load_file

    from tests.hub_cache import mamba_ssm_files, tiny_mamba1_with_mamba_ssm_defaults

    base_dir = tmp_path / "mamba-tiny"
    base_dir.mkdir()
    config = {"d_model": 16, "n_layer": 2, "vocab_size": 257, "ssm_cfg": {}, "pad_vocab_size_multiple": 8}
    for name, data in mamba_ssm_files(tiny_mamba1_with_mamba_ssm_defaults(), config).items():
        (base_dir / name).write_bytes(data)
    model = hl.load_model(base_dir)
    assert model.config.vocab_size == 264
    documents = Dataset.from_dict({"input_ids": torch.randint(1, 257, (8, 160)).tolist()})
    args = hl.StatePassingConfig(
        output_dir=str(tmp_path / "adapter"), segment_length=16, per_device_train_batch_size=4, max_steps=2,
        learning_rate=1e-2, use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = hl.StatePassingTrainer(model=model, args=args, train_dataset=documents, peft_config=peft.LoraConfig(r=4))
    trainer.train()
    trainer.save_model()

    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved and all("lora_" in name for name in saved), sorted(saved)
    ids = torch.randint(1, 257, (2, 40))
    with torch.no_grad():
        trained = hl.forward_with_state(trainer.model, ids)[0].logits
        reloaded = hl.forward_with_state(hl.load_model(tmp_path / "adapter"), ids)[0].logits
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=1e-5)
