"""GPU: training throughput with carried state vs transformers' fused training path, and long evaluation.

    python benchmarks/gpu_throughput.py [--output benchmarks/results/gpu_throughput.json]

1. Tokens/s of a training step (forward + backward + AdamW) for 130m-sized random Mamba-2 and Mamba-1 at segment
   2048, batch 8, bf16 autocast: `forward_with_state` from a carried state (kernel path) vs the plain model in
   training mode with no cache, which transformers runs through the fused `mamba2_split_conv1d_scan_combined` /
   `mamba_inner_fn` kernels and a zero state. Aim: >= 0.9x (Mamba-2) and >= 0.8x (Mamba-1).
2. `evaluation.position_perplexity` of the Mamba-2 model at 32k and 128k tokens: tokens/s and peak CUDA memory.
Medians of timed steps after warm-up, with CUDA synchronisation. The JSON records the load average before and after;
`python benchmarks/run_all.py --gpu_json <it>` turns it into the benchmarks' summary format (env "gpu", the device
named in every row), so its figures join the tables in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

import hf_longssm as hl  # noqa: E402
from hf_longssm import evaluation  # noqa: E402
from hf_longssm.modeling import kernel_availability  # noqa: E402


def model_130m(model_type):
    torch.manual_seed(0)
    if model_type == "mamba2":  # state-spaces/mamba2-130m's shape
        config = Mamba2Config(
            vocab_size=50288,
            hidden_size=768,
            num_hidden_layers=24,
            state_size=128,
            head_dim=64,
            num_heads=24,
            expand=2,
            n_groups=1,
            chunk_size=256,
        )
        return Mamba2ForCausalLM(config)
    config = MambaConfig(
        vocab_size=50280,
        hidden_size=768,
        num_hidden_layers=24,
        state_size=16,
        intermediate_size=1536,
        time_step_rank=48,
    )  # state-spaces/mamba-130m-hf's shape
    return MambaForCausalLM(config)


def cuda_time(fn, warmup=3, steps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def training_throughput(model_type, batch, length):
    model = model_130m(model_type).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, 50000, (batch, length + 1), device="cuda")
    carried = {"state": None}

    def ours():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, state = hl.forward_with_state(model, ids[:, :-1], carried["state"], shift_labels=ids[:, 1:])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        carried["state"] = state.detach()

    def plain():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids[:, :-1], labels=ids[:, :-1])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = {}
    for name, fn in (("plain_fused", plain), ("hf_longssm_carried", ours), ("plain_fused_again", plain)):
        torch.cuda.reset_peak_memory_stats()
        median, times = cuda_time(fn)
        result[name] = {
            "median_step_s": median,
            "tokens_per_s": batch * length / median,
            "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30,
            "steps_s": times,
        }
    plain_tps = max(result["plain_fused"]["tokens_per_s"], result["plain_fused_again"]["tokens_per_s"])
    result["throughput_ratio"] = result["hf_longssm_carried"]["tokens_per_s"] / plain_tps
    return result


def evaluation_throughput(lengths, segment_length):
    model = model_130m("mamba2").cuda().eval()
    rows = []
    for length in lengths:
        ids = torch.randint(0, 50000, (1, length), device="cuda")
        torch.cuda.reset_peak_memory_stats()
        median, _ = cuda_time(
            lambda ids=ids: evaluation.position_perplexity(model, ids, segment_length=segment_length),
            warmup=1,
            steps=3,
        )
        rows.append(
            {
                "length": length,
                "tokens_per_s": length / median,
                "median_s": median,
                "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30,
            }
        )
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--segment_length", type=int, default=2048)
    parser.add_argument("--eval_lengths", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--eval_segment_length", type=int, default=8192)
    parser.add_argument("--output", default="benchmarks/results/gpu_throughput.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("This benchmark needs a CUDA device.")
    start, load_before = time.perf_counter(), os.getloadavg()
    results = {"device": torch.cuda.get_device_name(), "kernels": kernel_availability(), "training": {}}
    for model_type in ("mamba2", "mamba"):
        results["training"][model_type] = training_throughput(model_type, args.batch, args.segment_length)
        torch.cuda.empty_cache()
        print(model_type, results["training"][model_type]["throughput_ratio"], flush=True)
    results["evaluation"] = evaluation_throughput(args.eval_lengths, args.eval_segment_length)
    results.update(load_average_before=load_before, load_average_after=os.getloadavg())
    results["duration_s"] = round(time.perf_counter() - start, 1)
    write_results(args.output, results)


if __name__ == "__main__":
    main()
