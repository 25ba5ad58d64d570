"""Trainer options that would silently do something else than in transformers are refused, naming what to do."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset, IterableDataset
from transformers import TrainingArguments

import hf_longssm as hl
from hf_longssm.training.config import UNSUPPORTED_OPTIONS
from tests.utils import tiny_model


def config(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"), state_init="tbtt", segment_length=16, per_device_train_batch_size=2,
        max_steps=2, use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, dataloader_drop_last=True,
    )  # fmt: skip
    kwargs.update(overrides)
    return hl.StatePassingConfig(**kwargs)


def rows(shards: list[int], per_shard: int):
    for shard in shards:
        generator = torch.Generator().manual_seed(shard)
        for _ in range(per_shard):
            yield {"input_ids": torch.randint(1, 64, (100,), generator=generator).tolist()}


def streaming(num_shards: int, docs: int = 16) -> IterableDataset:
    """A streaming dataset of `num_shards` shards (a module-level generator: spawned workers pickle it)."""
    kwargs = {"shards": list(range(num_shards)), "per_shard": docs // num_shards}
    return IterableDataset.from_generator(rows, gen_kwargs=kwargs)


def test_tbtt_with_a_streaming_dataset_and_several_workers_is_refused(tmp_path):
    """Before: each worker built its own streams and their batches alternated (segment_index 0,0,1,1,...), so a
    segment started from another worker's stream's state."""
    args = config(tmp_path, dataloader_num_workers=2)
    with pytest.raises(
        ValueError, match="TBTT with a streaming dataset and dataloader_num_workers=2.*Set dataloader_num_workers: 0"
    ):
        hl.StatePassingTrainer(model=tiny_model("mamba2"), args=args, train_dataset=streaming(2))


def test_a_streaming_dataset_of_one_shard_with_two_workers_trains(tmp_path):
    """Before: the worker given no shard raised "the streaming dataset ended before every one of 4 streams..."."""
    args = config(tmp_path, state_init="state_passing", dataloader_num_workers=2)
    trainer = hl.StatePassingTrainer(model=tiny_model("mamba2"), args=args, train_dataset=streaming(1))
    trainer.train()
    assert trainer.state.global_step == 2


def test_label_smoothing_is_refused_rather_than_ignored(tmp_path):
    """Before: the losses at 0 and 0.5 were identical (the plain Trainer's change)."""
    with pytest.raises(ValueError, match="label_smoothing_factor=0.5 is not supported.*next-token loss"):
        config(tmp_path, label_smoothing_factor=0.5)


def test_compute_metrics_is_refused_rather_than_never_called(tmp_path):
    data = Dataset.from_dict({"input_ids": torch.randint(1, 64, (8, 100)).tolist()})
    with pytest.raises(ValueError, match="compute_metrics is not called"):
        hl.StatePassingTrainer(
            model=tiny_model("mamba2"), args=config(tmp_path), train_dataset=data, compute_metrics=lambda p: {}
        )


def test_torch_compile_trains_the_same_losses(tmp_path):
    """Before: `TypeError: Expected a transformers model (possibly wrapped), got OptimizedModule`."""
    data = Dataset.from_dict({"input_ids": torch.randint(1, 64, (8, 100)).tolist()})
    losses = {}
    for compiled in (False, True):
        args = config(tmp_path, logging_steps=1, torch_compile=compiled, torch_compile_backend="eager")
        trainer = hl.StatePassingTrainer(model=tiny_model("mamba2"), args=args, train_dataset=data)
        trainer.train()
        losses[compiled] = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


# ----- every TrainingArguments field is classified (docs/trainer_options.md), every refusal raises ------------------
TABLE = Path(__file__).resolve().parents[2] / "docs" / "trainer_options.md"


def table_rows() -> dict[str, str]:
    rows = {}
    for line in TABLE.read_text().splitlines():
        if match := re.match(r"^\| `(\w+)` \| ([^|]+) \|", line):
            rows[match.group(1)] = match.group(2).strip()
    return rows


def test_the_options_table_lists_every_field_of_the_installed_transformers():
    fields = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
    assert sorted(set(fields) - set(table_rows())) == []


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_OPTIONS))
def test_each_refused_option_is_refused_naming_it(tmp_path, name):
    default = UNSUPPORTED_OPTIONS[name][0]
    value = {bool: not default, float: 0.5, type(None): 2, str: "other", list: ["inputs"]}[type(default)]
    if name == "label_names":
        value = ["labels"]
    assert "refused" in table_rows()[name]
    with pytest.raises(ValueError, match=f"{name}=.* is not supported by StatePassingTrainer"):
        config(tmp_path, **{name: value})


def test_group_by_length_is_refused(tmp_path):
    with pytest.raises(ValueError, match="group_by_length' is not supported"):
        config(tmp_path, train_sampling_strategy="group_by_length")


def test_dataloader_in_order_false_is_refused_only_with_tbtt(tmp_path):
    config(tmp_path, state_init="state_passing", dataloader_in_order=False)
    with pytest.raises(ValueError, match="dataloader_in_order=False"):
        config(tmp_path, dataloader_in_order=False)


def test_split_batches_with_tbtt_is_refused(tmp_path):
    """Before (2 processes): rank 0 read rows of streams 0 and 2, so segment 1 of stream 0 started from stream 2's."""
    with pytest.raises(ValueError, match="split_batches with TBTT"):
        config(tmp_path, accelerator_config={"split_batches": True})
    config(tmp_path, state_init="state_passing", accelerator_config={"split_batches": True})


def test_an_interventions_own_setting_with_another_intervention_is_warned_about(tmp_path, caplog):
    """Before: silently ignored. Warned, not refused, so one config can serve a sweep over state_init."""
    with caplog.at_level("WARNING"):
        config(tmp_path, state_init="state_passing", noise_std=0.3)
        config(tmp_path, state_init="zero", reset_state_on_eos=False)
        config(tmp_path, state_init="random_noise", noise_std=0.4)
    assert "noise_std=0.3 has no effect with state_init='state_passing'" in caplog.text
    assert "reset_state_on_eos=False has no effect with state_init='zero'" in caplog.text
    assert "noise_std=0.4" not in caplog.text


def test_model_init_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match="model_init is not supported"):
        hl.StatePassingTrainer(model=None, args=config(tmp_path), model_init=lambda: tiny_model("mamba2"))


def test_a_streaming_dataset_trains_with_spawned_workers(tmp_path):
    """Before: `Can't pickle local object 'build_segment_dataset.<locals>._Documents'`."""
    args = config(tmp_path, state_init="state_passing", dataloader_num_workers=1,
                  dataloader_multiprocessing_context="spawn", max_steps=1)  # fmt: skip
    trainer = hl.StatePassingTrainer(model=tiny_model("mamba2"), args=args, train_dataset=streaming(1))
    trainer.train()
    assert trainer.state.global_step == 1


def test_training_a_model_with_offloaded_weights_is_refused(tmp_path):
    # device_map offload loads weights for each forward and drops them after it: their updates would be lost.
    from transformers import AutoModelForCausalLM

    tiny_model("mamba2").save_pretrained(tmp_path / "model")
    device_map = {"backbone.embeddings": "cpu", "backbone.layers.0": "disk", "backbone.layers.1": "cpu",
                  "backbone.norm_f": "cpu", "lm_head": "cpu"}  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", device_map=device_map, offload_folder=tmp_path)
    documents = Dataset.from_dict({"input_ids": [[1] * 200]})
    with pytest.raises(ValueError, match="offloads weights.*shard it with FSDP2"):
        hl.StatePassingTrainer(model, config(tmp_path), train_dataset=documents)


def test_resuming_a_checkpoint_saved_without_fsdp_under_fsdp_is_refused(tmp_path):
    from types import SimpleNamespace

    from hf_longssm.training.distributed import check_checkpoint_sharding

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "model.safetensors").touch()
    with pytest.raises(ValueError, match="saved without FSDP"):
        check_checkpoint_sharding(SimpleNamespace(is_fsdp_enabled=True), str(tmp_path / "checkpoint-2"))
    check_checkpoint_sharding(SimpleNamespace(is_fsdp_enabled=False), str(tmp_path / "checkpoint-2"))  # DDP: fine
    (tmp_path / "checkpoint-2" / "pytorch_model_fsdp_0").mkdir()
    check_checkpoint_sharding(SimpleNamespace(is_fsdp_enabled=True), str(tmp_path / "checkpoint-2"))
