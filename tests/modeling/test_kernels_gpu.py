"""The CUDA path (mamba-ssm, causal-conv1d) against the torch path: marked `gpu`, skipped without CUDA.

Run on a GPU machine: `python -m pytest -m gpu tests/modeling/test_kernels_gpu.py -v`.
"""

import os
from contextlib import contextmanager

import pytest
import torch

import hf_longssm as hl
from hf_longssm.modeling import kernel_availability
from tests.utils import MODEL_TYPES, tiny_model


pytestmark = pytest.mark.gpu

# bf16 carries ~3 significant digits: states and logits are compared relative to their scale.
TOLERANCES = {torch.float32: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=8e-2, rtol=5e-2)}


@contextmanager
def torch_path():
    os.environ["HF_LONGSSM_DISABLE_KERNELS"] = "1"
    try:
        yield
    finally:
        os.environ.pop("HF_LONGSSM_DISABLE_KERNELS")


def needs_kernels():
    available = {
        name: ok for name, ok in kernel_availability().items() if name.startswith(("selective", "mamba", "causal"))
    }
    if not all(available.values()):
        pytest.skip(f"kernels not importable: {available}")


def gpu_model(model_type, dtype):
    if model_type == "mamba2":
        overrides = {"hidden_size": 64, "num_heads": 4, "head_dim": 32, "n_groups": 2, "chunk_size": 64}
    else:
        overrides = {"hidden_size": 64, "intermediate_size": 128}
    return tiny_model(model_type, **overrides).to("cuda", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_kernel_path_matches_torch_path_segmented_and_one_pass(model_type, dtype):
    needs_kernels()
    model = gpu_model(model_type, dtype).eval()
    ids = torch.randint(0, 64, (2, 300), device="cuda")
    with torch.no_grad():
        one_pass, _ = hl.forward_with_state(model, ids)
        state, logits = None, []
        for start, end in [(0, 77), (77, 78), (78, 200), (200, 300)]:
            out, state = hl.forward_with_state(model, ids[:, start:end], state)
            logits.append(out.logits)
        with torch_path():
            ref, ref_state = hl.forward_with_state(model, ids)
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(torch.cat(logits, 1), one_pass.logits, **tol)
    torch.testing.assert_close(one_pass.logits, ref.logits, **tol)
    for ours, theirs in zip(state.recurrent_states, ref_state.recurrent_states):
        scale = theirs.abs().max().item() + 1e-6
        assert (ours.float() - theirs.float()).abs().max().item() / scale < tol["rtol"] * 5


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_kernel_path_gradients_match_torch_path(model_type):
    needs_kernels()
    model = gpu_model(model_type, torch.float32).train()
    ids = torch.randint(0, 64, (2, 257), device="cuda")
    with torch.no_grad():
        _, state = hl.forward_with_state(model, ids[:, :100])

    def grads():
        model.zero_grad()
        out, _ = hl.forward_with_state(model, ids[:, 100:-1], state.detach(), shift_labels=ids[:, 101:])
        out.loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast = grads()
    with torch_path():
        ref = grads()
    for name in fast:
        torch.testing.assert_close(fast[name], ref[name], atol=1e-3, rtol=1e-2, msg=name)


def test_torch_path_runs_on_cuda_without_kernels():
    model = gpu_model("mamba", torch.float32).eval()
    ids = torch.randint(0, 64, (2, 100), device="cuda")
    with torch.no_grad(), torch_path():
        seg_a, state = hl.forward_with_state(model, ids[:, :33])
        seg_b, _ = hl.forward_with_state(model, ids[:, 33:], state)
        full, _ = hl.forward_with_state(model, ids)
    torch.testing.assert_close(torch.cat([seg_a.logits, seg_b.logits], 1), full.logits, atol=1e-4, rtol=1e-4)


def test_position_perplexity_memory_is_bounded_on_gpu():
    from hf_longssm import evaluation

    model = gpu_model("mamba2", torch.float32).eval()
    peaks = {}
    for length in (8192, 65536):
        ids = torch.randint(0, 64, (1, length), device="cuda")
        torch.cuda.reset_peak_memory_stats()
        evaluation.position_perplexity(model, ids, segment_length=2048)
        peaks[length] = torch.cuda.max_memory_allocated()
    assert peaks[65536] < 1.5 * peaks[8192], peaks
