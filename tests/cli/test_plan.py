"""`hf-longssm plan`: the memory plan's counts are the real ones (fake-tensor counting == real tensors), and its
arithmetic per mode is what DDP, ZeRO-2, FSDP2 and ZeRO-3 shard. (Checked against the measured shards of a real FSDP2
run in tests/training/test_fsdp.py.)"""

import json
import math

import pytest
import torch

from hf_longssm.cli import main
from hf_longssm.training.memory_plan import plan_memory, saved_tensor_bytes, stateful_model
from tests.utils import MODEL_TYPES, tiny_config


# state-spaces/mamba2-2.7b's config.json (mamba_ssm format), as published
MAMBA2_2_7B = {
    "d_model": 2560, "d_intermediate": 0, "n_layer": 64, "vocab_size": 50277, "ssm_cfg": {"layer": "Mamba2"},
    "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
    "pad_vocab_size_multiple": 16, "tie_embeddings": True,
}  # fmt: skip


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_activations_counted_with_fake_tensors_equal_the_real_saved_tensors(model_type, dtype):
    config = tiny_config(model_type)
    plan = plan_memory(config, segment_length=32, per_device_batch=3, num_processes=1, compute_dtype=dtype)
    torch.manual_seed(0)
    real = saved_tensor_bytes(stateful_model(config), 3, 32, getattr(torch, dtype))
    assert plan.bytes["ddp"]["activations"] == real > 0
    # linear in the tokens per process (lengths that fill whole Mamba-2 chunks)
    double = plan_memory(config, segment_length=64, per_device_batch=3, num_processes=1, compute_dtype=dtype)
    assert double.bytes["ddp"]["activations"] == pytest.approx(2 * real, rel=0.15)


def json_from(out: str) -> dict:
    """The JSON document `--json` printed. A process whose first import of deepspeed happens here gets its
    "Setting accelerator to CPU" line on stdout too (deepspeed's logger), before it."""
    return json.loads(out[out.index("{") :])


def test_sharding_arithmetic_per_mode():
    plan = plan_memory(tiny_config("mamba2"), segment_length=16, per_device_batch=2, num_processes=4)
    params = plan.num_parameters
    assert params == sum(p.numel() for p in stateful_model(tiny_config("mamba2")).parameters())
    ddp, zero2, fsdp2, zero3 = (plan.bytes[m] for m in ("ddp", "zero2", "fsdp2", "zero3"))
    assert (ddp["weights"], ddp["gradients"], ddp["optimizer"]) == (4 * params, 4 * params, 8 * params)
    assert ddp["gathered"] == zero2["gathered"] == 0
    assert (zero2["weights"], zero2["gradients"], zero2["optimizer"]) == (4 * params, params, 2 * params)
    assert fsdp2 == zero3 and fsdp2["weights"] == params and fsdp2["gathered"] > 0
    assert len({m["activations"] for m in plan.bytes.values()}) == 1  # activations do not depend on sharding
    # the carried state, exactly: 2 rows x 2 layers x (conv window (96, 4) + SSM state (8, 8, 8)), float32
    assert fsdp2["carried_state"] == 2 * 2 * (96 * 4 + 8 * 8 * 8) * 4
    checkpointed = plan_memory(
        tiny_config("mamba2"), segment_length=16, per_device_batch=2, num_processes=4, activation_checkpointing=True
    )
    assert 0 < checkpointed.bytes["fsdp2"]["activations"] < fsdp2["activations"]


def test_cli_plans_a_2_7b_mamba2_from_its_mamba_ssm_config(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(MAMBA2_2_7B))
    main(["plan", "--model", str(config), "--segment_length", "2048", "--batch", "8", "--gpus", "16", "--json"])
    plan = json_from(capsys.readouterr().out)
    params = plan["num_parameters"]
    assert params == pytest.approx(2.7e9, rel=0.02)
    assert plan["bytes"]["ddp"]["weights"] == 4 * params
    assert plan["bytes"]["fsdp2"]["optimizer"] == math.ceil(8 * params / 16)
    main(["plan", "--model", str(config), "--batch", "1", "--gpus", "8", "--activation_checkpointing"])
    table = capsys.readouterr().out
    assert "2.70B parameters" in table and "| **total** |" in table and "fsdp2" in table


def test_cli_plan_refuses_an_adapter_and_a_missing_model(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "x"}))
    with pytest.raises(SystemExit, match="LoRA adapter: give its base model"):
        main(["plan", "--model", str(tmp_path)])
    with pytest.raises(SystemExit, match="hf-longssm plan: error"):
        main(["plan", "--model", str(tmp_path / "missing")])


def test_cli_plans_a_model_folder_saved_by_transformers(tmp_path, capsys):
    # save_pretrained writes Mamba-2's time_step_limit (0, inf) as a tagged float that plain JSON does not decode
    from tests.utils import tiny_model

    tiny_model("mamba2").save_pretrained(tmp_path)
    main(["plan", "--model", str(tmp_path), "--segment_length", "16", "--batch", "2", "--gpus", "2", "--json"])
    plan = json_from(capsys.readouterr().out)
    assert plan["num_parameters"] == sum(p.numel() for p in tiny_model("mamba2").parameters())
