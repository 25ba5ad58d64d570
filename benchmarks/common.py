"""Shared helpers: model configs, timing (median of interleaved repeats), JSON with the command and machine."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from provenance import cpu_model, git_commit
from transformers import (
    FalconMambaConfig,
    FalconMambaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
)


SIZES = {
    # ~0.1M parameters: what the tests use.
    "tiny": {
        "mamba": dict(
            vocab_size=256, hidden_size=64, num_hidden_layers=2, state_size=16, intermediate_size=128, time_step_rank=8
        ),
        "mamba2": dict(
            vocab_size=256,
            hidden_size=64,
            num_hidden_layers=2,
            state_size=32,
            head_dim=16,
            num_heads=8,
            expand=2,
            n_groups=1,
            chunk_size=64,
        ),
    },
    # ~8-9M parameters.
    "10m": {
        "mamba": dict(
            vocab_size=4096,
            hidden_size=256,
            num_hidden_layers=16,
            state_size=16,
            intermediate_size=512,
            time_step_rank=16,
        ),
        "mamba2": dict(
            vocab_size=4096,
            hidden_size=256,
            num_hidden_layers=16,
            state_size=64,
            head_dim=32,
            num_heads=16,
            expand=2,
            n_groups=1,
            chunk_size=256,
        ),
    },
}
# Hybrids: three recurrent layers per attention layer, as Qwen3.5 (18 + 6) and LFM2; sizes like the Mamba ones.
for _size, (_hidden, _layers, _vocab) in {"tiny": (64, 4, 256), "10m": (256, 16, 4096)}.items():
    _heads = _hidden // 32
    _common = dict(
        vocab_size=_vocab, hidden_size=_hidden, num_hidden_layers=_layers, num_attention_heads=_heads,
        num_key_value_heads=max(1, _heads // 2), head_dim=32, intermediate_size=2 * _hidden,
        layer_types=(["linear_attention"] * 3 + ["full_attention"]) * (_layers // 4), attn_implementation="sdpa",
    )  # fmt: skip
    SIZES[_size]["qwen3_5_text"] = dict(
        _common, linear_num_key_heads=_heads, linear_num_value_heads=2 * _heads, linear_key_head_dim=32,
        linear_value_head_dim=32, linear_conv_kernel_dim=4,
    )  # fmt: skip
    SIZES[_size]["lfm2"] = dict(
        _common, layer_types=(["conv"] * 3 + ["full_attention"]) * (_layers // 4), conv_L_cache=3
    )  # fmt: skip


def build_model(model_type: str, size: str, seed: int = 0):
    torch.manual_seed(seed)
    if model_type in ("qwen3_5_text", "lfm2"):
        from transformers import AutoConfig, AutoModelForCausalLM

        return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **SIZES[size][model_type]))
    family = "mamba2" if model_type == "mamba2" else "mamba"
    config_cls, model_cls = {
        "mamba": (MambaConfig, MambaForCausalLM),
        "falcon_mamba": (FalconMambaConfig, FalconMambaForCausalLM),
        "mamba2": (Mamba2Config, Mamba2ForCausalLM),
    }[model_type]
    return model_cls(config_cls(**SIZES[size][family]))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_medians(fns: dict, repeats: int, max_seconds: float = float("inf")) -> dict[str, dict]:
    """Run each function once to warm up, then `repeats` rounds of A B .. B A; median seconds per function.

    Each round runs the functions in turn and then in reverse: whichever runs first after the other pays for what the
    other left behind (measured: the first of two 10m Mamba-2 forwards ran 15% slower, whichever it was), so each
    runs first as often as last. A function whose warm-up took longer than `max_seconds` is not repeated (its single
    time is reported).
    """
    times = {name: [timed(fn)] for name, fn in fns.items()}
    slow = {name for name, t in times.items() if t[0] > max_seconds}
    times = {name: (t if name in slow else []) for name, t in times.items()}
    names = [name for name in fns if name not in slow]
    for _ in range(repeats):
        for name in names + names[::-1]:
            times[name].append(timed(fns[name]))
    return {
        name: {"median_s": statistics.median(t), "runs": len(t), "all_s": [round(x, 4) for x in t]}
        for name, t in times.items()
    }


def _status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (Linux) in MiB, or None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident memory (MiB). Linux: the kernel's high-water mark VmHWM, which
    `reset_peak_rss_mib` can restart; `ru_maxrss` is kept over fork and exec, so a subprocess started by a large
    benchmark process would read its parent's peak and measure nothing."""
    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss_mib() -> float:
    """Restart the peak at the current resident memory and return that (MiB): `peak_rss_mib() - base` is then what
    the code after it adds, whatever imports or loading peaked at before. Without /proc: the peak so far."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the high-water mark to the current RSS
        return _status_mib("VmRSS")
    except OSError:
        return peak_rss_mib()


def environment() -> dict:
    versions = {}
    for name in ("hf-longssm", "torch", "transformers", "accelerate"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "versions": versions,
        "git": git_commit(),
        "load_average_at_write": os.getloadavg(),
    }


def write_results(path: str | Path, results: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": "python " + shlex.join(sys.argv), "environment": environment(), **results}
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path
