"""The classes hf_longssm swaps into flash-linear-attention's models (imported only for such a model: fla imports
Triton).

fla computes its layers, norms and MLPs with Triton kernels only. Each class here keeps fla's weights and, on CUDA
(or with HF_LONGSSM_FORCE_KERNELS=1 under Triton's interpreter), runs fla's own forward; elsewhere it runs the same
maths in torch (`kernels.kernels_allowed` decides, per tensor, as for the Mamba kernels):

* the stateful layers (`StatefulGatedLinearAttention`) serve hf_longssm's `SegmentStates`; a plain call on the torch
  path runs the same segment forward from and to fla's own cache, so `model(input_ids)` works on a CPU;
* `TorchPathRMSNorm`, `TorchPathFusedRMSNormGated`, `TorchPathGatedMLP`: fla's `RMSNorm` (with its fused residual
  add), gated RMS norm and SwiGLU MLP, computed as fla's kernels compute them (statistics in float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fla.layers import GatedLinearAttention
from fla.layers.utils import get_layer_cache, update_layer_cache
from fla.models.utils import Cache
from fla.modules import FusedRMSNormGated, GatedMLP, RMSNorm
from fla.modules.activations import ACT2FN
from transformers import PretrainedConfig

from .base import SegmentStates, StatefulMixerMixin
from .kernels import gla_with_state, kernels_allowed, report_path


def rms_norm(x, weight, bias, eps, residual=None, prenorm=False, residual_in_fp32=False):
    """fla's `rms_norm` in torch: `x (+ residual)` normalized in float32, scaled, in `x`'s dtype; with `prenorm`
    also the sum (the next block's residual: in the residual's dtype, or float32 with `residual_in_fp32`)."""
    dtype = x.dtype
    if residual is not None:
        summed = x.float() + residual.float()
        residual_dtype = residual.dtype
    else:
        summed = x.float()
        residual_dtype = torch.float32 if residual_in_fp32 else dtype
    out = summed * torch.rsqrt(summed.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        out = out * weight.float()
    if bias is not None:
        out = out + bias.float()
    out = out.to(dtype)
    return (out, summed.to(residual_dtype)) if prenorm else out


_GATES = {"swish": F.silu, "silu": F.silu, "sigmoid": torch.sigmoid}


class TorchPathRMSNorm(RMSNorm):
    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        if kernels_allowed(x):
            return super().forward(x, residual, prenorm, residual_in_fp32)
        return rms_norm(x, self.weight, self.bias, self.eps, residual, prenorm, residual_in_fp32)


class TorchPathFusedRMSNormGated(FusedRMSNormGated):
    def forward(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
        if kernels_allowed(x):
            return super().forward(x, g, residual, prenorm, residual_in_fp32)
        normed = rms_norm(x, self.weight, self.bias, self.eps, residual, prenorm, residual_in_fp32)
        out, summed = normed if prenorm else (normed, None)
        out = (out.float() * _GATES[self.activation](g.float())).to(x.dtype)
        return (out, summed) if prenorm else out


class TorchPathGatedMLP(GatedMLP):
    def forward(self, x, **kwargs):
        if kernels_allowed(x):
            return super().forward(x, **kwargs)
        if self.hidden_act != "swish":
            raise NotImplementedError(f"hf_longssm's torch path has fla's swish MLP only, not {self.hidden_act!r}.")
        gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj((F.silu(gate.float()) * up.float()).to(gate.dtype))


# ----- GLA -----------------------------------------------------------------------------------------------------------
def _heads(layer: torch.nn.Module, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """`(b, l, heads * d) -> (b, l, heads, d)`, key/value heads repeated for their query heads (fla's einops
    `'... (h d) -> ... (h g) d'`: each key head serves `num_kv_groups` consecutive query heads)."""
    x = x.unflatten(-1, (-1, head_dim))
    return x.repeat_interleave(layer.num_kv_groups, dim=-2) if layer.num_kv_groups > 1 else x


def gla_forward_with_state(
    layer: torch.nn.Module, hidden_states: torch.Tensor, recurrent_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """fla's `GatedLinearAttention` layer over a segment, from and to its carried state.

    Returns `(output (b, l, hidden), recurrent_state (b, h, v, k))`.
    """
    batch, seq_len, _ = hidden_states.shape
    q = layer.q_proj(hidden_states).unflatten(-1, (-1, layer.head_k_dim))
    k = _heads(layer, layer.k_proj(hidden_states), layer.head_k_dim)
    v = _heads(layer, layer.v_proj(hidden_states), layer.head_v_dim)
    gk = _heads(layer, layer.gk_proj(hidden_states), layer.head_k_dim)
    gk = F.logsigmoid(gk.float()) / layer.gate_logit_normalizer
    if layer.clamp_min is not None:
        gk = gk.clamp_min(layer.clamp_min)

    # The op keeps the state `(k, v)` per head; fla's cache (and the carried state) keeps it `(v, k)`.
    out, recurrent_state = gla_with_state(q, k, v, gk, recurrent_state.transpose(-1, -2))
    out = out.to(v.dtype)

    if layer.use_output_gate:
        gate = layer.g_proj(hidden_states)
        if layer.fuse_norm_and_gate:  # fla's FusedRMSNormGated: RMS norm per head times swish(gate)
            out = layer.g_norm_swish_gate(out, gate.unflatten(-1, (-1, layer.head_v_dim)))
        else:
            out = layer.g_norm(out).flatten(-2) * layer.torch_gate_fn(gate)
    else:
        out = layer.g_norm(out)
    return layer.o_proj(out.reshape(batch, seq_len, -1)), recurrent_state.transpose(-1, -2)


def fla_cache(config: PretrainedConfig, states: dict[str, list[torch.Tensor]], position: int) -> Cache:
    """fla's own cache holding the carried recurrent states, as its layers read them, `position` tokens seen."""
    cache = Cache()
    for layer_idx, state in enumerate(states["recurrent_states"]):
        cache.update(recurrent_state=state.detach().clone(), layer_idx=layer_idx, offset=position)
    return cache


# ----- the stateful layers -------------------------------------------------------------------------------------------
class FlaStatefulLayerMixin(StatefulMixerMixin):
    """An fla layer: `SegmentStates` as its cache runs the segment forward; a plain call runs fla's forward where
    its kernels run, and on the torch path the segment forward from and to fla's cache (`fla_cache_keys` names the
    cache entry of each state kind, in order)."""

    takes_delta_transform = False  # MambaExtend and LongMamba are defined on Mamba's Δ
    fla_cache_keys: tuple[str, ...] = ("recurrent_state",)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, *args, **kwargs):
        if isinstance(past_key_values, SegmentStates):
            return past_key_values.run_layer(self, hidden_states), None, past_key_values
        if kernels_allowed(hidden_states):
            return super(StatefulMixerMixin, self).forward(
                hidden_states, attention_mask, past_key_values, use_cache, *args, **kwargs
            )
        report_path(type(self).__bases__[-1].__name__, "torch", hidden_states)
        if kwargs.get("cu_seqlens") is not None or (attention_mask is not None and not bool(attention_mask.all())):
            raise NotImplementedError(
                "hf_longssm's torch path for fla layers reads unpadded batches only: drop the padding (or "
                "cu_seqlens), or run on CUDA where fla's kernels take them."
            )
        cached = get_layer_cache(self, past_key_values)
        batch = hidden_states.shape[0]
        states = [
            cached[key]
            if cached is not None and cached.get(key) is not None
            else self.zero_state(batch, hidden_states)
            for key in self.fla_cache_keys
        ]
        out, *states = self.segment_forward(hidden_states, *states)
        if use_cache:
            update_layer_cache(
                self, past_key_values, **dict(zip(self.fla_cache_keys, states)), offset=hidden_states.shape[1]
            )
        return out, None, past_key_values


class StatefulGatedLinearAttention(FlaStatefulLayerMixin, GatedLinearAttention):
    segment_forward = gla_forward_with_state

    def zero_state(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(batch, self.num_heads, self.head_v_dim, self.head_k_dim, dtype=torch.float32)

    def torch_gate_fn(self, gate: torch.Tensor) -> torch.Tensor:
        """The output gate's activation (a config without the fused norm): fla's Triton activation where its
        kernels run, torch's otherwise."""
        if kernels_allowed(gate):
            return self.gate_fn(gate)
        for name, torch_fn in _GATES.items():
            if self.gate_fn is ACT2FN.get(name):
                return torch_fn(gate)
        raise NotImplementedError(f"hf_longssm's torch path has no {self.gate_fn} output gate (swish, sigmoid).")


TORCH_PATH_MODULES = {
    RMSNorm: TorchPathRMSNorm,
    FusedRMSNormGated: TorchPathFusedRMSNormGated,
    GatedMLP: TorchPathGatedMLP,
}
GLA_CLASSES = {GatedLinearAttention: StatefulGatedLinearAttention, **TORCH_PATH_MODULES}
