"""Two processes through `accelerate launch` (gloo, CPU): distinct streams per rank, state carried, save, resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "training" / "scripts" / "two_process_train.py"


def launch(*args, script=SCRIPT):
    # `accelerate launch --cpu` starts one process in accelerate 1.15; the config's torchrun launcher starts two,
    # and the script's `use_cpu=True` makes them gloo CPU ranks.
    config = ROOT / "recipes" / "accelerate_configs" / "cpu_2proc.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--main_process_port",
           "29517", str(script), *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]


def records(out, kind):
    return [json.loads((out / f"records_rank{r}_{kind}.json").read_text()) for r in (0, 1)]


@pytest.mark.multiprocess
def test_two_processes_train_save_and_resume(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    launch(str(full), "4")
    ranks = records(full, "fresh")
    assert [r["world_size"] for r in ranks] == [2, 2]
    streams = ranks[0]["streams"]  # 4 streams = 2 rows x 2 ranks, identical layout on both ranks
    assert ranks[1]["streams"] == streams and len(streams) == 4
    for rank, rec in enumerate(ranks):
        assert len(rec["records"]) == 4
        for step, r in enumerate(rec["records"]):
            # Row b of rank r always reads stream 2r + b, segment `step`: distinct streams per rank, in order.
            expected = [streams[2 * rank + b][16 * step] for b in range(2)]
            assert r["first_tokens"] == expected, (rank, step)
            if step:  # the boundary token: last label of step k is the first input of step k+1
                assert rec["records"][step - 1]["last_labels"] == r["first_tokens"]
        assert all(n > 0 for r in rec["records"] for n in r["state_norm"])  # a state is carried

    launch(str(part), "2")
    assert (part / "checkpoint-2" / "hf_longssm_state_rank0.pt").is_file()
    assert (part / "checkpoint-2" / "hf_longssm_state_rank1.pt").is_file()
    launch(str(part), "4", str(part / "checkpoint-2"))
    resumed = records(part, "resumed")
    for rank in (0, 1):
        after = [r["loss"] for r in resumed[rank]["records"]]
        uninterrupted = [r["loss"] for r in ranks[rank]["records"][2:]]
        assert after == pytest.approx(uninterrupted, abs=1e-5), rank


@pytest.mark.multiprocess
def test_two_processes_evaluate_their_shares_and_reduce_the_metrics(tmp_path):
    import torch

    from hf_longssm import evaluation
    from tests.utils import tiny_model

    launch(str(tmp_path), script=ROOT / "tests" / "training" / "scripts" / "two_process_eval.py")
    ranks = [json.loads((tmp_path / f"eval_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    metrics = [{k: v for k, v in r["metrics"].items() if k != "eval_runtime"} for r in ranks]
    assert metrics[0] == metrics[1]  # every rank reports the reduced numbers
    # One process over all 5 documents gives the same perplexities.
    ids = torch.tensor(ranks[0]["rows"])
    expected = evaluation.position_perplexity(tiny_model("mamba2"), ids, segment_length=8)
    for bucket in expected.perplexity(evaluation.log_buckets(63, start=1)):
        value = ranks[0]["metrics"][f"eval_ppl_{bucket['start']}_{bucket['end']}"]
        assert value == pytest.approx(bucket["perplexity"], rel=1e-4)
