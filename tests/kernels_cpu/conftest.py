"""The kernel path on CPU: mamba-ssm's and causal-conv1d's real Python wrappers, run without a GPU.

Active only when the run selects the `kernels_cpu` marker (`python -m pytest -m kernels_cpu tests/kernels_cpu`, the
kernels job of `.ci/run`, in a virtual environment with `requirements/kernels_cpu.txt`). Elsewhere (`make test`, the
GPU tests) it changes nothing and the tests marked `kernels_cpu` are deselected. When active, before anything imports
triton or mamba_ssm:

1. `TRITON_INTERPRET=1`: mamba-ssm's Triton kernels (Mamba-2) run in Triton's interpreter on CPU tensors.
2. `stand_ins/` goes first on `sys.path`: CPU stand-ins of the two compiled extensions (`selective_scan_cuda`,
   `causal_conv1d_cuda`) that keep their C++ checks and compute with the packages' own torch references.
3. Four adjustments torch 2.13 needs for CPU tensors in mamba-ssm's launchers: `torch.cuda.device(None)` (a CPU
   tensor's `device.index`) is a no-op; Triton's `Autotuner` keeps one config per kernel (the interpreter cannot
   benchmark; the cheapest one, by mamba-ssm's own rule in `mamba_ssm.utils.determinism`); and
   `torch.cuda.get_device_properties(<cpu device>).multi_processor_count` answers 132 (an H100/H200's count, so the
   backward kernels split work as they do there); fla's DPLR kernels take their branch without `tl.gather`.

An explicit `-m kernels_cpu` run without those packages is an error, not a silent skip.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import types
from pathlib import Path

import pytest
import torch


STAND_INS = Path(__file__).resolve().parent / "stand_ins"
REQUIRED = ("triton", "einops", "mamba_ssm", "causal_conv1d", "fla")
SM_COUNT = 132

_active = False


def _selected(config) -> bool:
    markexpr = config.getoption("markexpr", "") or ""
    return "kernels_cpu" in markexpr and "not kernels_cpu" not in markexpr


def _one_config_autotuner(init):
    """Triton's `Autotuner` (behind `triton.autotune` and fla's own `CachedAutotuner`) keeping one config."""

    def cost(cfg):  # mamba_ssm.utils.determinism._estimate_config_cost; ties (fla's block names): the first
        blocks = math.prod(v for k, v in cfg.kwargs.items() if k.startswith("BLOCK_SIZE_"))
        return blocks * (getattr(cfg, "num_stages", 1) or 1)

    def init_one(self, fn, arg_names, configs, *args, **kwargs):
        init(self, fn, arg_names, [min(configs, key=cost)] if configs else configs, *args, **kwargs)

    return init_one


def _tensor_induction_variables(transformer_cls):
    """In compiled Triton the variable of a `for ... in range(...)` loop is a tensor (`i.to(tl.int64)` works, as
    fla's kernels use it); the interpreter runs the loop in Python and hands out ints. Rewrite each such loop's body
    to start with `i = interpreter_semantic.to_tensor(i, False)` (builtin `range` only: `tl.static_range` stays a
    constant, as compiled)."""
    import ast

    def visit_for(self, node):
        self.generic_visit(node)
        iterates_range = isinstance(node.iter, ast.Call) and getattr(node.iter.func, "id", None) == "range"
        if iterates_range and isinstance(node.target, ast.Name):
            to_tensor = ast.Attribute(ast.Name("interpreter_semantic", ast.Load()), "to_tensor", ast.Load())
            value = ast.Call(to_tensor, [ast.Name(node.target.id, ast.Load()), ast.Constant(False)], [])
            node.body.insert(0, ast.Assign([ast.Name(node.target.id, ast.Store())], value))
        return node

    transformer_cls.visit_For = visit_for


def _cpu_tolerant_device(device_cls):
    def device(index):
        if index is None or (isinstance(index, torch.device) and index.type == "cpu"):
            return contextlib.nullcontext()
        return device_cls(index)

    return device


def _cpu_device_properties(get_device_properties):
    def device_properties(device=None):
        if device is not None and torch.device(device).type == "cpu":
            return types.SimpleNamespace(multi_processor_count=SM_COUNT, name="CPU (tests/kernels_cpu)")
        return get_device_properties(device)

    return device_properties


def pytest_configure(config):
    global _active
    if not _selected(config):
        return
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            f"-m kernels_cpu needs {', '.join(missing)}: run it in the kernels environment (`.ci/run` builds one from "
            "requirements/kernels_cpu.txt)."
        )
    if "mamba_ssm" in sys.modules or "triton" in sys.modules:
        raise pytest.UsageError("tests/kernels_cpu must configure Triton before triton or mamba_ssm is imported.")
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, str(STAND_INS))
    from triton.runtime import interpreter
    from triton.runtime.autotuner import Autotuner

    Autotuner.__init__ = _one_config_autotuner(Autotuner.__init__)
    _tensor_induction_variables(interpreter.ASTTransformer)
    torch.cuda.device = _cpu_tolerant_device(torch.cuda.device)
    torch.cuda.get_device_properties = _cpu_device_properties(torch.cuda.get_device_properties)
    _no_gather_in_fla_dplr()
    _active = True


def _no_gather_in_fla_dplr():
    """fla's DPLR kernels (RWKV-7) pick a row with `gather`, an alias of `tl.gather` taken when fla.ops.utils was
    imported, which the interpreter does not patch (it raises "Did you forget to add @triton.jit ?"). Their
    `GATHER_SUPPORTED=False` branch picks the row with `tl.where` and `tl.sum` instead, as on GPUs without gather."""
    from fla.ops.generalized_delta_rule.dplr import chunk_A_bwd, chunk_A_fwd, wy_fast_fwd

    for module in (chunk_A_fwd, chunk_A_bwd, wy_fast_fwd):
        module.IS_GATHER_SUPPORTED = False


def pytest_collection_modifyitems(config, items):
    """Outside a `-m kernels_cpu` run, the tests marked `kernels_cpu` are deselected (they need the stand-ins)."""
    if _active:
        return
    kept, deselected = [], []
    for item in items:
        (deselected if item.get_closest_marker("kernels_cpu") is not None else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(autouse=True)
def _needs_kernels_cpu(request):
    if request.node.get_closest_marker("kernels_cpu") is not None and not _active:
        pytest.skip("kernel path on CPU: run `python -m pytest -m kernels_cpu tests/kernels_cpu` (.ci/run)")


# fla's forward / backward entry points counted by `kernel_calls`, per module that calls them by name
FLA_COUNTED = {
    "fla.ops.gated_delta_rule.chunk": ("chunk_gated_delta_rule_fwd", "chunk_gated_delta_rule_bwd"),  # Gated DeltaNet
    "fla.ops.gla.chunk": ("chunk_gla_fwd", "chunk_gla_bwd"),  # GLA
    "fla.ops.generalized_delta_rule.dplr.chunk": ("chunk_dplr_fwd", "chunk_dplr_bwd_dhu"),  # RWKV-7
    "fla.ops.rwkv6.chunk": ("chunk_rwkv6_fwd", "chunk_rwkv6_bwd"),  # RWKV-6
}


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts of the kernel calls made during the test: the stand-ins' forward / backward and mamba-ssm's Triton
    chunk scan (`chunk_scan_fwd`, `chunk_scan_bwd`). Assert them to prove that the kernel branch really ran."""
    import causal_conv1d_cuda
    import selective_scan_cuda
    from mamba_ssm.ops.triton import ssd_combined

    triton_calls = {"chunk_scan_fwd": 0, "chunk_scan_bwd": 0}

    def counting(key, original):
        def spy(*args, **kwargs):
            triton_calls[key] += 1
            return original(*args, **kwargs)

        return spy

    for key, name in (("chunk_scan_fwd", "_mamba_chunk_scan_combined_fwd"),
                      ("chunk_scan_bwd", "_mamba_chunk_scan_combined_bwd")):  # fmt: skip
        monkeypatch.setattr(ssd_combined, name, counting(key, getattr(ssd_combined, name)))
    if importlib.util.find_spec("fla") is not None:  # fla's kernels (the [fla] extra), by the module calling them
        for module, names in FLA_COUNTED.items():
            chunk = importlib.import_module(module)
            for name in names:
                triton_calls[name] = 0
                monkeypatch.setattr(chunk, name, counting(name, getattr(chunk, name)))
    selective_scan_cuda.CALLS.clear()
    causal_conv1d_cuda.CALLS.clear()

    def counts() -> dict[str, int]:
        return {**selective_scan_cuda.CALLS, **causal_conv1d_cuda.CALLS, **triton_calls}

    return counts
