"""FSDP2 through StatePassingTrainer on two CPU processes (gloo), against the same run under DDP: sharded for real,
the same losses step by step, the carried state whole on each process, and exact resumes from sharded checkpoints.

The DDP reference of the Mamba-1 test runs as two "nodes" of one process each (torchrun `--nnodes 2` on localhost),
the multi-node path of docs/scale_out.md.
"""

import pytest
import torch
from safetensors.torch import load_file

from hf_longssm.training.memory_plan import plan_memory
from tests.training.launchers import accelerate_launch, losses, records, torchrun_two_nodes
from tests.utils import tiny_config


def assert_sharded(ranks: list[dict], num_heads: int | None) -> None:
    for rec in ranks:
        assert rec["world_size"] == 2 and rec["fsdp_enabled"] and rec["fsdp_module"], rec["model_class"]
        assert rec["model_class"].startswith("FSDP")  # torch's fully_shard class, not DistributedDataParallel
        assert rec["dtensor_params"] == rec["num_params"] > 0  # every parameter is a DTensor...
        assert rec["local_numel"] < 0.6 * rec["full_numel"]  # ...of which this process holds about half
        assert rec["state_kinds"] == ["Tensor"]  # the carried state is a plain local tensor, not sharded
        if num_heads is not None:  # Mamba-2: every head of the state on every process
            assert all(shape[1] == num_heads for shape in rec["state_shapes"])


@pytest.mark.multiprocess
def test_fsdp2_recipe_config_mamba2_tbtt_matches_ddp_and_resumes_from_a_sharded_checkpoint(tmp_path):
    # recipes/accelerate_configs/fsdp2.yaml as the README launches it (sharded state dict, whole blocks), in float32
    # so that the losses can be compared with DDP's exactly.
    options = {"model_type": "mamba2", "state_init": "tbtt", "max_steps": 4, "evaluate": True, "save": True}
    ddp, fsdp, part = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "part"
    accelerate_launch("cpu_2proc.yaml", ddp, options)
    accelerate_launch("fsdp2.yaml", fsdp, options, "--mixed_precision", "no")
    ddp_ranks, fsdp_ranks = records(ddp), records(fsdp)
    assert [r["model_class"] for r in ddp_ranks] == ["DistributedDataParallel"] * 2
    assert_sharded(fsdp_ranks, num_heads=8)
    for rank in (0, 1):
        assert losses(fsdp_ranks[rank]) == pytest.approx(losses(ddp_ranks[rank]), abs=1e-5), rank
        # TBTT under FSDP reads the same streams in the same order as under DDP
        assert [r["first_tokens"] for r in fsdp_ranks[rank]["records"]] == [
            r["first_tokens"] for r in ddp_ranks[rank]["records"]
        ]
        # Evaluation while training: 5 documents over 2 processes (uneven shares), the same reduced perplexities
        for ours, theirs in zip(fsdp_ranks[rank]["eval"], ddp_ranks[rank]["eval"]):
            assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=1e-5)
    # The memory plan (`hf-longssm plan`) against what each process really holds: its shard of the weights and of
    # AdamW's moments (FSDP2 pads uneven shards: within a few percent).
    plan = plan_memory(tiny_config("mamba2"), segment_length=16, per_device_batch=2, num_processes=2,
                       compute_dtype="float32").bytes  # fmt: skip
    for rec in fsdp_ranks + ddp_ranks:
        mode = "fsdp2" if rec in fsdp_ranks else "ddp"
        assert rec["local_param_bytes"] == pytest.approx(plan[mode]["weights"], rel=0.05), mode
        assert rec["local_optimizer_bytes"] == pytest.approx(plan[mode]["optimizer"], rel=0.05), mode
    # The final model is gathered from the shards and saved whole, equal to DDP's.
    gathered = load_file(fsdp / "final" / "model.safetensors")
    reference = load_file(ddp / "final" / "model.safetensors")
    assert gathered.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(gathered[name], tensor, atol=1e-6, rtol=1e-5, msg=name)

    # Killed after step 2 (a run of 2 steps), resumed from its sharded checkpoint: steps 3-4 as in the full run.
    accelerate_launch("fsdp2.yaml", part, {**options, "max_steps": 2, "evaluate": False, "save": False},
                      "--mixed_precision", "no")  # fmt: skip
    checkpoint = part / "checkpoint-2"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()
    assert not (checkpoint / "model.safetensors").exists()  # sharded: no process wrote the whole model
    accelerate_launch("fsdp2.yaml", part, {**options, "evaluate": False, "save": False, "resume": str(checkpoint)},
                      "--mixed_precision", "no")  # fmt: skip
    for rank, resumed in enumerate(records(part, "resumed")):
        assert losses(resumed) == pytest.approx(losses(fsdp_ranks[rank])[2:], abs=1e-5), rank


@pytest.mark.multiprocess
def test_fsdp2_mamba1_state_passing_with_activation_checkpointing_matches_ddp_on_two_nodes(tmp_path):
    # FSDP2 from the training arguments (no launcher config): FSDP's own activation checkpointing of whole blocks,
    # full state dict checkpoints; the DDP reference runs as 2 nodes x 1 process.
    options = {"model_type": "mamba", "state_init": "state_passing", "max_steps": 3}
    fsdp_config = {"version": 2, "transformer_layer_cls_to_wrap": ["MambaBlock"], "activation_checkpointing": True}
    torchrun_two_nodes(tmp_path / "ddp", options)
    torchrun_two_nodes(tmp_path / "fsdp", {**options, "config": {"fsdp": True, "fsdp_config": fsdp_config}})
    ddp_ranks, fsdp_ranks = records(tmp_path / "ddp"), records(tmp_path / "fsdp")
    assert [r["world_size"] for r in ddp_ranks] == [2, 2]
    assert_sharded(fsdp_ranks, num_heads=None)
    for rank in (0, 1):
        assert losses(fsdp_ranks[rank]) == pytest.approx(losses(ddp_ranks[rank]), abs=1e-5), rank
        assert all(n > 0 for r in fsdp_ranks[rank]["records"][1:] for n in r["state_norm"])  # a state is carried
    assert (tmp_path / "fsdp" / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()  # full state dict


@pytest.mark.multiprocess
def test_fsdp2_bf16_mixed_precision_policy(tmp_path):
    # bf16=True under FSDP2: MixedPrecisionPolicy computes in bfloat16 over float32 shards; the carried state keeps
    # its float32 dtypes between segments. bf16 rounding: close to the float32 run, not equal.
    # Evaluation while training too: the weights a forward without backward leaves gathered are bfloat16.
    options = {"model_type": "mamba2", "state_init": "state_passing", "max_steps": 2, "evaluate": True}
    fsdp = {"fsdp": True, "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": ["Mamba2Block"]}}
    accelerate_launch("cpu_2proc.yaml", tmp_path / "fp32", {**options, "config": fsdp})
    accelerate_launch("cpu_2proc.yaml", tmp_path / "bf16", {**options, "config": {**fsdp, "bf16": True}})
    for full, mixed in zip(records(tmp_path / "fp32"), records(tmp_path / "bf16")):
        assert mixed["param_dtype"] == "torch.bfloat16" and full["param_dtype"] == "None"
        assert mixed["state_dtypes"] == ["torch.float32"]
        assert losses(mixed) == pytest.approx(losses(full), rel=2e-2)
        assert losses(mixed) != losses(full)  # it really ran in bfloat16
        assert mixed["eval"][0]["eval_loss"] == pytest.approx(full["eval"][0]["eval_loss"], rel=2e-2)


def test_fsdp1_is_refused_with_the_fsdp2_setting():
    import hf_longssm as hl

    with pytest.raises(ValueError, match="FSDP1 is deprecated.*version: 2"):
        hl.StatePassingConfig(output_dir="unused", use_cpu=True, fsdp=True, fsdp_config={"version": 1})


def test_fsdp_in_one_process_is_refused_not_run_unsharded(tmp_path, monkeypatch):
    # `accelerate launch` with an FSDP config but one process: accelerate would set up no distribution at all.
    from accelerate.state import AcceleratorState, PartialState
    from datasets import Dataset

    import hf_longssm as hl
    from tests.utils import tiny_model

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    args = hl.StatePassingConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1, segment_length=8)
    documents = Dataset.from_dict({"input_ids": [[1] * 200]})
    try:
        with pytest.raises(ValueError, match="FSDP was requested but accelerate set up"):
            hl.StatePassingTrainer(tiny_model("mamba2"), args, train_dataset=documents)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()


@pytest.mark.multiprocess
def test_the_recipe_readme_fsdp2_command_trains_saves_and_cards_a_mamba2(tmp_path):
    # docs/scale_out.md, "Several machines": the tiny offline recipe under FSDP2 on 2 CPU processes, as written there
    # (shortened to 4 steps).
    import subprocess
    import sys

    from hf_longssm.loading import load_model
    from tests.training.launchers import CONFIGS, ENV, ROOT, free_port

    out = tmp_path / "fsdp2-cpu"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp2.yaml"),
           "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
           "recipes/post_train_sp.py", "--config", "recipes/mamba2-tiny-bytes/zero/config_pretrain.yaml",
           "--max_steps", "4", "--save_steps", "2", "--per_device_train_batch_size", "4",
           "--output_dir", str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (out / "checkpoint-4" / "pytorch_model_fsdp_0").is_dir()  # trained sharded
    model = load_model(str(out))  # the final model, gathered whole
    assert (
        model.config.model_type == "mamba2"
        and (out / "README.md").is_file()
        and (out / "train_results.json").is_file()
    )
    assert '"world_size": 2' in (out / "checkpoint-4" / "hf_longssm_checkpoint.json").read_text()
