"""Position-wise perplexity: equals one pass, bounded memory."""

import subprocess
import sys

import pytest
import torch

from hf_longssm import evaluation
from tests.utils import HYBRID_TYPES, MODEL_TYPES, tiny_hybrid, tiny_model


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("segment_length", [1, 7, 16, 200])
def test_position_nll_equals_one_pass(model_type, segment_length):
    model = tiny_model(model_type).eval()
    ids = torch.randint(0, 64, (3, 70))
    result = evaluation.position_perplexity(model, ids, segment_length=segment_length)
    with torch.no_grad():
        logits = model(ids).logits
    direct = -torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0].mean(0)
    assert result.nll.shape == (69,)
    assert (result.nll - direct).abs().max().item() < 1e-4
    buckets = result.perplexity([(0, 10), (10, 69)])
    assert abs(buckets[1]["nll"] - direct[10:].double().mean().item()) < 1e-5
    assert [(b["start"], b["end"]) for b in result.perplexity()][-1] == (64, 69)


def test_position_perplexity_memory_grows_sublinearly():
    script = """
import resource, sys, torch
sys.path.insert(0, ".")
from tests.utils import tiny_model
from hf_longssm import evaluation
model = tiny_model("mamba2").eval()
length = int(sys.argv[1])
ids = torch.randint(0, 64, (1, length))
evaluation.position_perplexity(model, ids[:, :2048], segment_length=1024)  # warm up allocator and kernels
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
evaluation.position_perplexity(model, ids, segment_length=1024)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""
    growth = {}
    for length in (8192, 65536):
        out = subprocess.run([sys.executable, "-c", script, str(length)], capture_output=True, text=True, check=True)
        growth[length] = int(out.stdout.strip().splitlines()[-1])  # KiB above the warmed-up peak
    # 8x the tokens: the extra peak must stay far below 8x (it is the input and the per-position sums only).
    assert growth[65536] < 2 * growth[8192] + 8 * 1024, growth


@pytest.mark.parametrize("model_type", HYBRID_TYPES)
@pytest.mark.parametrize("segment_length", [7, 16])
def test_hybrid_position_nll_with_every_key_equals_one_pass(model_type, segment_length):
    model = tiny_hybrid(model_type).eval()
    ids = torch.randint(1, 64, (2, 50))
    with torch.no_grad():
        logits = model(ids).logits
    direct = -torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0].mean(0)
    full = evaluation.position_perplexity(model, ids, segment_length=segment_length, attention_state="full")
    assert (full.nll - direct).abs().max().item() < 1e-4
    # The default keeps one segment of keys: the same for the first two segments, then its own numbers.
    window = evaluation.position_perplexity(model, ids, segment_length=segment_length)
    assert (window.nll[: 2 * segment_length - 1] - direct[: 2 * segment_length - 1]).abs().max().item() < 1e-4
    assert (window.nll - direct).abs().max().item() > 1e-5


def test_hybrid_position_perplexity_at_64k_peaks_within_10_percent_of_8k():
    # The default attention policy keeps a window of keys: memory does not grow with the input.
    script = """
import resource, sys, torch
sys.path.insert(0, ".")
from tests.utils import tiny_hybrid
from hf_longssm import evaluation
model = tiny_hybrid("bamba").eval()
ids = torch.randint(1, 64, (1, int(sys.argv[1])))
evaluation.position_perplexity(model, ids, segment_length=1024)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    peak = {}
    for length in (8192, 65536):
        out = subprocess.run([sys.executable, "-c", script, str(length)], capture_output=True, text=True, check=True)
        peak[length] = int(out.stdout.strip().splitlines()[-1])  # KiB
    assert peak[65536] <= 1.1 * peak[8192], peak
