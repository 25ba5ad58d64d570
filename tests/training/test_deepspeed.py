"""DeepSpeed ZeRO-3 and ZeRO-2 through StatePassingTrainer on two CPU processes (gloo; DeepSpeed's CPU accelerator),
against the same run under DDP: partitioned for real, the same losses step by step, the carried state whole on each
process, and an exact resume from a ZeRO-3 checkpoint. The configs are the recipes'
(recipes/accelerate_configs/zero3.yaml, recipes/deepspeed/zero2.json)."""

import pytest

from tests.training.launchers import ROOT, accelerate_launch, losses, records


pytest.importorskip("deepspeed")
ZERO = ROOT / "recipes" / "deepspeed"


@pytest.mark.multiprocess
def test_zero3_mamba2_tbtt_matches_ddp_and_resumes_exactly(tmp_path):
    options = {"model_type": "mamba2", "state_init": "tbtt", "max_steps": 4, "evaluate": True}
    # recipes/accelerate_configs/zero3.yaml as the README launches it, in float32 to compare with DDP exactly
    zero3 = ("zero3.yaml", "--mixed_precision", "no")
    accelerate_launch("cpu_2proc.yaml", tmp_path / "ddp", options)
    accelerate_launch(zero3[0], tmp_path / "zero3", options, *zero3[1:])
    ddp_ranks, zero_ranks = records(tmp_path / "ddp"), records(tmp_path / "zero3")
    for rank in (0, 1):
        rec = zero_ranks[rank]
        assert rec["model_class"] == "DeepSpeedEngine"
        assert rec["local_numel"] < 0.6 * rec["full_numel"]  # ZeRO-3: this process holds about half the weights
        assert rec["state_kinds"] == ["Tensor"] and all(shape[1] == 8 for shape in rec["state_shapes"])
        assert losses(rec) == pytest.approx(losses(ddp_ranks[rank]), abs=1e-5), rank
        # evaluation while training (5 documents over 2 processes: uneven shares, weights gathered collectively)
        for ours, theirs in zip(rec["eval"], ddp_ranks[rank]["eval"]):
            assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=1e-5)

    part = tmp_path / "part"
    accelerate_launch(zero3[0], part, {**options, "max_steps": 2, "evaluate": False}, *zero3[1:])
    checkpoint = part / "checkpoint-2"
    assert any(checkpoint.glob("global_step*"))  # DeepSpeed's own partitioned checkpoint
    accelerate_launch(zero3[0], part, {**options, "evaluate": False, "resume": str(checkpoint)}, *zero3[1:])
    for rank, resumed in enumerate(records(part, "resumed")):
        assert losses(resumed) == pytest.approx(losses(zero_ranks[rank])[2:], abs=1e-5), rank


@pytest.mark.multiprocess
def test_zero2_mamba1_state_passing_matches_ddp(tmp_path):
    options = {"model_type": "mamba", "state_init": "state_passing", "max_steps": 3}
    accelerate_launch("cpu_2proc.yaml", tmp_path / "ddp", options)
    accelerate_launch(
        "cpu_2proc.yaml", tmp_path / "zero2", {**options, "config": {"deepspeed": str(ZERO / "zero2.json")}}
    )
    for ddp, zero2 in zip(records(tmp_path / "ddp"), records(tmp_path / "zero2")):
        assert zero2["model_class"] == "DeepSpeedEngine" and zero2["local_numel"] == zero2["full_numel"]
        assert losses(zero2) == pytest.approx(losses(ddp), abs=1e-5)
        assert all(n > 0 for r in zero2["records"][1:] for n in r["state_norm"])  # a state is carried
