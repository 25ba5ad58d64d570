"""Per-GPU memory of a post-training run under DDP, DeepSpeed ZeRO-2, FSDP2 and ZeRO-3, from the model's config.

Counted, not guessed where it can be counted:

* parameters: the model built with fake tensors (torch's `FakeTensorMode`: shapes, dtypes and a CPU device, no memory,
  no weights read);
* weights, gradients, AdamW's two moments: float32 (transformers' `bf16=True` keeps float32 weights and computes
  under autocast; FSDP2's `MixedPrecisionPolicy` keeps float32 shards), divided over the processes by what each mode
  shards (ZeRO-2: gradients and optimizer; FSDP2 and ZeRO-3: all three);
* gathered: FSDP2 / ZeRO-3 also hold the whole weights of the block that runs and of the next one (prefetch), in the
  compute dtype;
* activations: every tensor autograd saves for the backward of one training forward (the loss included), counted by
  running that forward with fake tensors at the run's shape, under autocast in the compute dtype (the torch path,
  `ops/`: the CUDA kernels save less). Fake CPU tensors, not `meta` ones: autocast applies to them as to real ones.
  With activation checkpointing, one block's input per layer plus one block's saved tensors (its recomputation);
* the carried state: `per_device_train_batch_size` rows of every layer's state (conv windows in the weights' dtype,
  float32; SSM states in `state_dtype`).

Not counted: the CUDA context and allocator slack, communication buffers, temporaries that are not saved for backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode  # what torch.compile traces with; no public path
from transformers import AutoModelForCausalLM, PretrainedConfig

from ..modeling import SegmentStates, cache_argument, prepare_model, state_kinds, state_shapes


MODES = ("ddp", "zero2", "fsdp2", "zero3")
PARTS = ("weights", "gradients", "optimizer", "gathered", "activations", "carried_state")
_SHARDED = {"ddp": (), "zero2": ("gradients", "optimizer"), "fsdp2": PARTS[:3], "zero3": PARTS[:3]}
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class MemoryPlan:
    """Bytes per process for each mode (`ddp`, `zero2`, `fsdp2`, `zero3`) and part (`PARTS`), and the run it is for."""

    num_parameters: int
    num_processes: int
    per_device_batch: int
    segment_length: int
    activation_checkpointing: bool
    bytes: dict[str, dict[str, int]]

    def total(self, mode: str) -> int:
        return sum(self.bytes[mode].values())

    def table(self) -> str:
        """A markdown table in GiB: one row per part, one column per mode."""
        gib = 2**30
        lines = ["| GiB per GPU | " + " | ".join(MODES) + " |", "|---" * (len(MODES) + 1) + "|"]
        for part in PARTS:
            lines.append(f"| {part} | " + " | ".join(f"{self.bytes[m][part] / gib:.2f}" for m in MODES) + " |")
        lines.append("| **total** | " + " | ".join(f"**{self.total(m) / gib:.2f}**" for m in MODES) + " |")
        return "\n".join(lines)


def stateful_model(config: PretrainedConfig) -> torch.nn.Module:
    """The model for `config`, training mode, stateful mixers (called inside `FakeTensorMode`, it takes no memory)."""
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    prepare_model(model)
    return model.train()


def saved_tensor_bytes(model: torch.nn.Module, batch_size: int, length: int, dtype: torch.dtype) -> int:
    """Bytes autograd saves for the backward of one training forward of `model` (with labels, from a zero carried
    state, under autocast to `dtype` unless float32): each storage counted once, the parameters not at all. Real or
    fake (`FakeTensorMode`) CPU tensors; fake ones cost nothing and count the same."""
    parameters = {_storage_key(p) for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in parameters:
            saved[key] = max(saved.get(key, 0), tensor.untyped_storage().nbytes())
        return tensor

    shapes, kinds = state_shapes(model.config), state_kinds(model.config)
    states = SegmentStates([[torch.zeros(batch_size, *layer[k]) for layer in shapes] for k in range(len(kinds))])
    ids = torch.zeros(batch_size, length, dtype=torch.long)
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        model(input_ids=ids, labels=ids, use_cache=False, **{cache_argument(model): states})
    return sum(saved.values())


def _storage_key(tensor: torch.Tensor) -> int:
    storage = tensor.untyped_storage()
    return storage._cdata if isinstance(tensor, FakeTensor) else storage.data_ptr()  # fake storages have no address


def plan_memory(
    config: PretrainedConfig,
    *,
    segment_length: int,
    per_device_batch: int,
    num_processes: int,
    compute_dtype: str = "bfloat16",
    state_dtype: str = "float32",
    activation_checkpointing: bool = False,
) -> MemoryPlan:
    """Bytes per process of a post-training run with AdamW (see the module docstring for what is counted).

    Args:
        config (`PretrainedConfig`): the model's (`loading.load_config` reads one from a Hub id or folder).
        segment_length (`int`): tokens per training segment.
        per_device_batch (`int`): `per_device_train_batch_size` (streams per process).
        num_processes (`int`): GPUs over all machines (what sharding divides by).
        compute_dtype (`str`): `"bfloat16"` (`bf16=True`), `"float16"` or `"float32"`.
        state_dtype (`str`): the carried SSM states' dtype (`StatePassingConfig.state_dtype`).
        activation_checkpointing (`bool`): blocks recomputed in the backward.
    """
    if min(segment_length, per_device_batch, num_processes) < 1:
        raise ValueError("segment_length, per_device_batch and num_processes must all be >= 1.")
    for name, value in (("compute_dtype", compute_dtype), ("state_dtype", state_dtype)):
        if value not in _BYTES:
            raise ValueError(f"{name} must be one of {list(_BYTES)}, got {value!r}.")
    dtype = getattr(torch, compute_dtype)
    with FakeTensorMode():
        model = stateful_model(config)
        num_parameters = sum(p.numel() for p in model.parameters())
        layers = model.base_model.layers
        largest_block = max(sum(p.numel() for p in layer.parameters()) for layer in layers)
        activations = saved_tensor_bytes(model, per_device_batch, segment_length, dtype)
        if activation_checkpointing:  # every block's input, plus one block's saved tensors while it is recomputed
            one_block = _one_block_bytes(config, per_device_batch, segment_length, dtype)
            inputs = len(layers) * per_device_batch * segment_length * config.hidden_size * _BYTES[compute_dtype]
            activations = activations - len(layers) * one_block + inputs + one_block

    carried = sum(
        per_device_batch * math.prod(shape) * (4 if kind.window else _BYTES[state_dtype])
        for layer in state_shapes(config)
        for kind, shape in zip(state_kinds(config), layer)
    )
    full = {"weights": 4 * num_parameters, "gradients": 4 * num_parameters, "optimizer": 8 * num_parameters}
    plans = {}
    for mode in MODES:
        parts = {part: _shard(full[part], num_processes) if part in _SHARDED[mode] else full[part] for part in full}
        sharded_weights = "weights" in _SHARDED[mode] and num_processes > 1
        parts["gathered"] = 2 * largest_block * _BYTES[compute_dtype] if sharded_weights else 0
        parts["activations"] = activations
        parts["carried_state"] = carried
        plans[mode] = {part: parts[part] for part in PARTS}
    return MemoryPlan(num_parameters, num_processes, per_device_batch, segment_length, activation_checkpointing, plans)


def _shard(nbytes: int, num_processes: int) -> int:
    return math.ceil(nbytes / num_processes)


def _one_block_bytes(config: PretrainedConfig, batch_size: int, length: int, dtype: torch.dtype) -> int:
    """Saved bytes of one block: the model with one layer minus the model with none (embedding, norm, loss)."""
    one, none = (
        saved_tensor_bytes(stateful_model(_with_layers(config, n)), batch_size, length, dtype) for n in (1, 0)
    )
    return one - none


def _with_layers(config: PretrainedConfig, num_layers: int) -> PretrainedConfig:
    return config.__class__.from_dict({**config.to_dict(), "num_hidden_layers": num_layers})
