"""The classes hf_longssm swaps into flash-linear-attention's models (imported only for such a model: fla imports
Triton).

fla computes its layers, norms and MLPs with Triton kernels only. Each class here keeps fla's weights and, on CUDA
(or with HF_LONGSSM_FORCE_KERNELS=1 under Triton's interpreter), runs fla's own forward; elsewhere it runs the same
maths in torch (`kernels.kernels_allowed` decides, per tensor, as for the Mamba kernels):

* the stateful layers (GLA's attention; RWKV-7's attention and feed-forward, which carry a token shift each) serve
  hf_longssm's `SegmentStates` with the segment forwards below; a plain call on the torch path runs the same segment
  forward from and to fla's own cache, so `model(input_ids)` works on a CPU;
* `TorchPath*`: fla's RMS, layer and group norms (with their fused residual add), gated RMS norm and SwiGLU MLP,
  computed as fla's kernels compute them (statistics in float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fla.layers import GatedDeltaNet, GatedLinearAttention, RWKV6Attention, RWKV7Attention
from fla.layers.utils import get_layer_cache, update_layer_cache
from fla.models.rwkv6.modeling_rwkv6 import RWKV6FeedForward
from fla.models.rwkv7.modeling_rwkv7 import RWKV7FeedForward
from fla.models.utils import Cache
from fla.modules import FusedCrossEntropyLoss, FusedRMSNormGated, GatedMLP, GroupNorm, LayerNorm, RMSNorm
from fla.modules.activations import ACT2FN

from .base import SegmentStates, StatefulMixerMixin
from .kernels import (
    causal_conv1d_with_state,
    dplr_delta_rule_with_state,
    gated_delta_rule_with_state,
    gla_with_state,
    kernels_allowed,
    report_path,
    rwkv6_with_state,
)
from .ops.gated_delta import l2_normalize


def fla_norm(
    x, weight, bias, eps, residual=None, prenorm=False, residual_in_fp32=False, is_rms_norm=True, num_groups=1
):
    """fla's `LayerNormFunction` (its `rms_norm`, `layer_norm` and `group_norm`) in torch: `x (+ residual)`
    normalized per group in float32 (RMS, or mean and variance), scaled and shifted, in `x`'s dtype; with `prenorm`
    also the sum (the next block's residual: in the residual's dtype, or float32 with `residual_in_fp32`)."""
    dtype = x.dtype
    if residual is not None:
        summed = x.float() + residual.float()
        residual_dtype = residual.dtype
    else:
        summed = x.float()
        residual_dtype = torch.float32 if residual_in_fp32 else dtype
    groups = summed.unflatten(-1, (num_groups, -1))
    if not is_rms_norm:
        groups = groups - groups.mean(-1, keepdim=True)
    out = (groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + eps)).flatten(-2)
    if weight is not None:
        out = out * weight.float()
    if bias is not None:
        out = out + bias.float()
    out = out.to(dtype)
    return (out, summed.to(residual_dtype)) if prenorm else out


_GATES = {"swish": F.silu, "silu": F.silu, "sigmoid": torch.sigmoid}


def gate_activation(fn, gate: torch.Tensor) -> torch.Tensor:
    """An output gate's activation `fn` (one of fla's `ACT2FN`): fla's Triton activation where its kernels run,
    torch's otherwise."""
    if kernels_allowed(gate):
        return fn(gate)
    for name, torch_fn in _GATES.items():
        if fn == ACT2FN.get(name):  # `==`: fla's activations are bound methods, new objects after a deep copy
            return torch_fn(gate)
    raise NotImplementedError(f"hf_longssm's torch path has no {fn} output gate (swish, sigmoid).")


class TorchPathRMSNorm(RMSNorm):
    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        if kernels_allowed(x):
            return super().forward(x, residual, prenorm, residual_in_fp32)
        return fla_norm(x, self.weight, self.bias, self.eps, residual, prenorm, residual_in_fp32)


class TorchPathLayerNorm(LayerNorm):
    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        if kernels_allowed(x):
            return super().forward(x, residual, prenorm, residual_in_fp32)
        return fla_norm(x, self.weight, self.bias, self.eps, residual, prenorm, residual_in_fp32, is_rms_norm=False)


class TorchPathGroupNorm(GroupNorm):
    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        if kernels_allowed(x):
            return super().forward(x, residual, prenorm, residual_in_fp32)
        return fla_norm(
            x, self.weight, self.bias, self.eps, residual, prenorm, residual_in_fp32, self.is_rms_norm, self.num_groups
        )


class TorchPathFusedRMSNormGated(FusedRMSNormGated):
    def forward(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
        if kernels_allowed(x):
            return super().forward(x, g, residual, prenorm, residual_in_fp32)
        normed = fla_norm(x, self.weight, self.bias, self.eps, residual, prenorm, residual_in_fp32)
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


class CrossEntropy:
    """fla's `criterion` for a model's own loss (`model(input_ids, labels=...)`): fla's fused cross-entropy where its
    kernels run (it is Triton-only), torch's elsewhere. A plain object, not a module: nothing enters the state dict."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean"):
        self.ignore_index, self.reduction = ignore_index, reduction

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if kernels_allowed(logits):
            fused = FusedCrossEntropyLoss(inplace_backward=True, reduction=self.reduction)
            return fused(logits, target)
        return F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction=self.reduction)


def use_dispatching_criterion(model: torch.nn.Module) -> None:
    """Give an fla `*ForCausalLM` the criterion above when it would pick fla's fused cross-entropy itself."""
    config = getattr(model, "config", None)
    if getattr(model, "criterion", "absent") is None and getattr(config, "fuse_cross_entropy", False):
        if not getattr(config, "fuse_linear_cross_entropy", False):
            model.criterion = CrossEntropy()


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


# ----- RWKV-7 --------------------------------------------------------------------------------------------------------
RWKV7_LOG_DECAY = -0.6065306597126334  # w = -exp(-0.5) * sigmoid(...): RWKV-7's log decay, in (-0.607, 0)


def _token_shift(x: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fla's `token_shift`: `[last, x[:-1]] - x`, and the window to carry (the segment's last token)."""
    shifted = torch.cat([last[:, None].to(x.dtype), x[:, :-1]], dim=1)
    return shifted - x, x[:, -1]


def rwkv7_attention_forward_with_state(
    layer: torch.nn.Module,
    hidden_states: torch.Tensor,
    shift_state: torch.Tensor,
    recurrent_state: torch.Tensor,
    v_first: torch.Tensor | None = None,
):
    """fla's `RWKV7Attention` over a segment, from and to its carried token shift and matrix state.

    Returns `((output (b, l, hidden), v_first), shift_state (b, hidden), recurrent_state (b, h, k, v))`; `v_first`
    is the first layer's values, which every later layer mixes in (within the segment: nothing to carry).
    """
    batch, seq_len, _ = hidden_states.shape
    delta, shift_state = _token_shift(hidden_states, shift_state)
    xr, xw, xk, xv, xa, xg = (
        hidden_states.addcmul(delta, mix) for mix in (layer.x_r, layer.x_w, layer.x_k, layer.x_v, layer.x_a, layer.x_g)
    )
    r = layer.r_proj(xr)
    w = RWKV7_LOG_DECAY * layer.w_lora(xw).sigmoid()
    k, v = layer.k_proj(xk), layer.v_proj(xv)
    if layer.layer_idx == 0:
        v_first = v
    else:
        v = torch.lerp(v, v_first, layer.v_lora(xv).sigmoid())
    a = layer.a_lora(xa).sigmoid()
    g = layer.g_lora(xg)
    kk = (k * layer.k_k).unflatten(-1, (-1, layer.head_dim))
    # fla's l2_norm with its fused norms (x / sqrt(|x|^2 + 1e-6)), torch's F.normalize without
    kk = l2_normalize(kk) if layer.fuse_norm else F.normalize(kk, dim=-1, p=2.0)
    k = k.addcmul(k * (a - 1), layer.k_a)
    r, w, k, a = (x.unflatten(-1, (-1, layer.head_dim)) for x in (r, w, k, a))
    v = v.unflatten(-1, (-1, layer.head_v_dim))

    out, recurrent_state = dplr_delta_rule_with_state(r, k, v, -kk, kk * a, w, recurrent_state, scale=1.0)
    out = out.to(v.dtype)
    if layer.fuse_norm:
        out = layer.g_norm(out.flatten(-2))
    else:
        out = layer.g_norm(out.reshape(batch * seq_len, -1)).view(batch, seq_len, -1)
    # fla's gate_output_correction: the bonus (r . (k * r_k)) v per head, then the gate
    bonus = ((r * k * layer.r_k).sum(-1, keepdim=True) * v).flatten(-2)
    return (layer.o_proj((out + bonus) * g), v_first), shift_state, recurrent_state


def rwkv7_ffn_forward_with_state(
    ffn: torch.nn.Module, hidden_states: torch.Tensor, shift_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """fla's `RWKV7FeedForward` (channel mixing) over a segment, from and to its carried token shift."""
    delta, shift_state = _token_shift(hidden_states, shift_state)
    return ffn.value(ffn.act_fn(ffn.key(hidden_states.addcmul(delta, ffn.x_k)))), shift_state


# ----- RWKV-6 --------------------------------------------------------------------------------------------------------
def rwkv6_attention_forward_with_state(
    layer: torch.nn.Module, hidden_states: torch.Tensor, shift_state: torch.Tensor, recurrent_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fla's `RWKV6Attention` over a segment, from and to its carried token shift and matrix state.

    Returns `(output (b, l, hidden), shift_state (b, hidden), recurrent_state (b, h, k, v))`.
    """
    batch, seq_len, hidden = hidden_states.shape
    delta, shift_state = _token_shift(hidden_states, shift_state)
    # the data-dependent token-shift mixes (ddlerp) of r, w, k, v, g, as fla's layer computes them
    x = layer.x_proj[0](hidden_states, delta).view(batch, seq_len, -1, layer.proj_low_rank_dim)
    x = torch.einsum("btnr,hnr->btnh", layer.x_proj[1](x), layer.x_proj[2].weight.view(hidden, 5, -1))
    r, w, k, v, g = (x + layer.x_bias).unbind(-2)
    r, w, k, v, g = (
        proj(hidden_states, mix, delta)
        for proj, mix in zip((layer.r_proj, layer.w_proj, layer.k_proj, layer.v_proj, layer.g_proj), (r, w, k, v, g))
    )
    r, w, k = (t.unflatten(-1, (-1, layer.head_k_dim)) for t in (r, w, k))
    v = v.unflatten(-1, (-1, layer.head_v_dim))
    out, recurrent_state = rwkv6_with_state(r, k, v, -torch.exp(w.float()), layer.bonus, recurrent_state, scale=1.0)
    out = layer.g_norm(out.to(v.dtype).flatten(-2)) * gate_activation(layer.gate_fn, g)
    return layer.o_proj(out), shift_state, recurrent_state


def rwkv6_ffn_forward_with_state(
    ffn: torch.nn.Module, hidden_states: torch.Tensor, shift_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """fla's `RWKV6FeedForward` (channel mixing with a receptance gate) over a segment, from and to its token shift."""
    delta, shift_state = _token_shift(hidden_states, shift_state)
    value = ffn.value(ffn.act_fn(ffn.key(hidden_states, delta)))
    return ffn.receptance(hidden_states, delta).sigmoid() * value, shift_state


# ----- fla's GatedDeltaNet -------------------------------------------------------------------------------------------
def fla_gated_deltanet_forward_with_state(
    layer: torch.nn.Module,
    hidden_states: torch.Tensor,
    q_conv_state: torch.Tensor,
    k_conv_state: torch.Tensor,
    v_conv_state: torch.Tensor,
    recurrent_state: torch.Tensor,
):
    """fla's `GatedDeltaNet` layer over a segment: its three short convs and the gated delta rule from their carried
    windows and state. Returns the output, the three windows `(b, dim, conv_size)` and the state `(b, h, v, k)`."""
    convs = []
    for proj, conv, window in (
        (layer.q_proj, layer.q_conv1d, q_conv_state),
        (layer.k_proj, layer.k_conv1d, k_conv_state),
        (layer.v_proj, layer.v_conv1d, v_conv_state),
    ):
        out, window = causal_conv1d_with_state(
            proj(hidden_states).transpose(1, 2), window, conv.weight, conv.bias, "silu"
        )
        convs.append((out.transpose(1, 2), window))
    (q, q_conv_state), (k, k_conv_state), (v, v_conv_state) = convs
    q, k = (t.unflatten(-1, (-1, layer.head_k_dim)) for t in (q, k))
    v = v.unflatten(-1, (-1, layer.head_v_dim))
    beta = layer.b_proj(hidden_states).sigmoid()
    if layer.allow_neg_eigval:  # eigenvalues of the transition in (-1, 1): beta in (0, 2)
        beta = beta * 2
    g = -layer.A_log.float().exp() * F.softplus(layer.a_proj(hidden_states).float() + layer.dt_bias)
    # The op keeps the state `(k, v)` per head; fla's cache (and the carried state) keeps it `(v, k)`.
    out, recurrent_state = gated_delta_rule_with_state(q, k, v, g, beta, recurrent_state.transpose(-1, -2))
    out = out.to(v.dtype)
    if layer.use_gate:
        out = layer.o_norm(out, layer.g_proj(hidden_states).unflatten(-1, (-1, layer.head_v_dim)))
    else:
        out = layer.o_norm(out)
    return layer.o_proj(out.flatten(-2)), q_conv_state, k_conv_state, v_conv_state, recurrent_state.transpose(-1, -2)


# ----- fla's cache ---------------------------------------------------------------------------------------------------
def fla_cache(
    states: dict[str, list[torch.Tensor]], position: int, entries: dict[str, str | tuple[str, ...]]
) -> Cache:
    """fla's own cache holding the carried states as its layers read them, `position` tokens seen. `entries` names,
    per cache entry (`recurrent_state`, `conv_state`, `ffn_state`), the state kind it holds, or the kinds of a
    tuple entry (fla's GatedDeltaNet keeps its three conv windows as one `conv_state` tuple)."""

    def held(kinds: str | tuple[str, ...], layer_idx: int):
        if isinstance(kinds, str):
            return states[kinds][layer_idx].detach().clone()
        return tuple(states[kind][layer_idx].detach().clone() for kind in kinds)

    cache = Cache()
    for layer_idx in range(len(next(iter(states.values())))):
        layer = {entry: held(kinds, layer_idx) for entry, kinds in entries.items()}
        cache.update(**layer, layer_idx=layer_idx, offset=position)
    return cache


# ----- the stateful layers -------------------------------------------------------------------------------------------
class FlaStatefulLayerMixin(StatefulMixerMixin):
    """An fla layer: with `SegmentStates` as its cache it runs its segment forward; a plain call runs fla's own
    forward where fla's kernels run, and on the torch path `torch_path_call`. `forward` takes the arguments of GLA's
    and GatedDeltaNet's layers; RWKV's attention and feed-forward blocks, called otherwise, override it."""

    takes_delta_transform = False  # MambaExtend and LongMamba are defined on Mamba's Δ
    fla_cache_keys: tuple[str, ...]  # the cache entry of each state this module carries, in order

    def zero_states(self, batch: int, like: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, *args, **kwargs):
        if isinstance(past_key_values, SegmentStates):
            return past_key_values.run_layer(self, hidden_states), None, past_key_values
        if kernels_allowed(hidden_states):
            return super(StatefulMixerMixin, self).forward(
                hidden_states, attention_mask, past_key_values, use_cache, *args, **kwargs
            )
        out = self.torch_path_call(
            hidden_states, past_key_values, use_cache, attention_mask, kwargs.get("cu_seqlens"), hidden_states.shape[1]
        )
        return out, None, past_key_values

    def torch_path_call(self, hidden_states, cache, use_cache, attention_mask, cu_seqlens, offset, **kwargs):
        """The segment forward from and to fla's cache (zeros where it holds nothing), as fla's forward does."""
        report_path(type(self).__bases__[-1].__name__, "torch", hidden_states)
        if cu_seqlens is not None or (attention_mask is not None and not bool(attention_mask.all())):
            raise NotImplementedError(
                "hf_longssm's torch path for fla layers reads unpadded batches only: drop the padding (or "
                "cu_seqlens), or run on CUDA where fla's kernels take them."
            )
        cached = get_layer_cache(self, cache) or {}
        states = self.states_from_cache(cached, self.zero_states(hidden_states.shape[0], hidden_states))
        out, *states = self.segment_forward(hidden_states, *states, **kwargs)
        if use_cache and cache is not None:
            update_layer_cache(self, cache, **self.cache_entries(states), offset=offset)
        return out

    def states_from_cache(self, cached: dict, zeros: list[torch.Tensor]) -> list[torch.Tensor]:
        """The states this module carries, from its layer's entries in fla's cache (`fla_cache_keys`)."""
        keys = self.fla_cache_keys
        return [cached[key] if cached.get(key) is not None else zero for key, zero in zip(keys, zeros)]

    def cache_entries(self, states: list[torch.Tensor]) -> dict:
        """fla's cache entries holding this module's final states (`fla_cache_keys`)."""
        return dict(zip(self.fla_cache_keys, states))


class StatefulGatedLinearAttention(FlaStatefulLayerMixin, GatedLinearAttention):
    segment_forward = gla_forward_with_state
    fla_cache_keys = ("recurrent_state",)

    def zero_states(self, batch: int, like: torch.Tensor) -> list[torch.Tensor]:
        return [like.new_zeros(batch, self.num_heads, self.head_v_dim, self.head_k_dim, dtype=torch.float32)]

    def torch_gate_fn(self, gate: torch.Tensor) -> torch.Tensor:
        return gate_activation(self.gate_fn, gate)


class StatefulRWKV7Attention(FlaStatefulLayerMixin, RWKV7Attention):
    segment_forward = rwkv7_attention_forward_with_state
    fla_cache_keys = ("conv_state", "recurrent_state")
    carried_kinds = (0, 1)  # the family's token shift and matrix state (`rwkv7.RWKV7_STATES`)

    def forward(
        self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, output_attentions=False,
        v_first=None, cu_seqlens=None, **kwargs,
    ):  # fmt: skip
        if isinstance(past_key_values, SegmentStates):
            out, v_first = past_key_values.run_layer(self, hidden_states, kinds=self.carried_kinds, v_first=v_first)
            return out, None, past_key_values, v_first
        if kernels_allowed(hidden_states):
            return RWKV7Attention.forward(
                self, hidden_states, attention_mask, past_key_values, use_cache, output_attentions, v_first,
                cu_seqlens, **kwargs,
            )  # fmt: skip
        out, v_first = self.torch_path_call(
            hidden_states, past_key_values, use_cache, attention_mask, cu_seqlens, hidden_states.shape[1],
            v_first=v_first,
        )  # fmt: skip
        return out, None, past_key_values, v_first

    def zero_states(self, batch: int, like: torch.Tensor) -> list[torch.Tensor]:
        heads = self.num_heads
        return [
            like.new_zeros(batch, self.hidden_size),
            like.new_zeros(batch, heads, self.head_dim, self.head_v_dim, dtype=torch.float32),
        ]


class StatefulTokenShiftFeedForwardMixin(FlaStatefulLayerMixin):
    """RWKV's channel-mixing feed-forward block (RWKV-6, RWKV-7): it carries its own token shift, the family's third
    state kind."""

    fla_cache_keys = ("ffn_state",)
    carried_kinds = (2,)

    def forward(self, x, attention_mask=None, state=None, cu_seqlens=None, **kwargs):
        if isinstance(state, SegmentStates):
            return state.run_layer(self, x, kinds=self.carried_kinds), state
        if kernels_allowed(x):
            return super(StatefulMixerMixin, self).forward(x, attention_mask, state, cu_seqlens, **kwargs)
        # fla's feed-forward writes its window with offset 0: the attention counted the tokens
        return self.torch_path_call(x, state, state is not None, attention_mask, cu_seqlens, 0), state

    def zero_states(self, batch: int, like: torch.Tensor) -> list[torch.Tensor]:
        return [like.new_zeros(batch, self.hidden_size)]


class StatefulRWKV7FeedForward(StatefulTokenShiftFeedForwardMixin, RWKV7FeedForward):
    segment_forward = rwkv7_ffn_forward_with_state


class StatefulRWKV6Attention(FlaStatefulLayerMixin, RWKV6Attention):
    segment_forward = rwkv6_attention_forward_with_state
    fla_cache_keys = ("conv_state", "recurrent_state")
    carried_kinds = (0, 1)  # the family's token shift and matrix state (`rwkv6.RWKV6_STATES`)

    def forward(
        self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, output_attentions=False,
        cu_seqlens=None, **kwargs,
    ):  # fmt: skip
        if isinstance(past_key_values, SegmentStates):
            return past_key_values.run_layer(self, hidden_states, kinds=self.carried_kinds), None, past_key_values
        if kernels_allowed(hidden_states):
            return RWKV6Attention.forward(
                self, hidden_states, attention_mask, past_key_values, use_cache, output_attentions, cu_seqlens,
                **kwargs,
            )  # fmt: skip
        out = self.torch_path_call(
            hidden_states, past_key_values, use_cache, attention_mask, cu_seqlens, hidden_states.shape[1]
        )
        return out, None, past_key_values

    def zero_states(self, batch: int, like: torch.Tensor) -> list[torch.Tensor]:
        return [
            like.new_zeros(batch, self.hidden_size),
            like.new_zeros(batch, self.num_heads, self.head_k_dim, self.head_v_dim, dtype=torch.float32),
        ]


class StatefulRWKV6FeedForward(StatefulTokenShiftFeedForwardMixin, RWKV6FeedForward):
    segment_forward = rwkv6_ffn_forward_with_state


class StatefulFlaGatedDeltaNet(FlaStatefulLayerMixin, GatedDeltaNet):
    segment_forward = fla_gated_deltanet_forward_with_state

    def zero_states(self, batch: int, like: torch.Tensor) -> list[torch.Tensor]:
        windows = [like.new_zeros(batch, dim, self.conv_size) for dim in (self.key_dim, self.key_dim, self.value_dim)]
        state = like.new_zeros(batch, self.num_v_heads, self.head_v_dim, self.head_k_dim, dtype=torch.float32)
        return [*windows, state]

    def states_from_cache(self, cached: dict, zeros: list[torch.Tensor]) -> list[torch.Tensor]:
        windows = cached.get("conv_state")
        windows = zeros[:3] if windows is None else list(windows)
        state = cached.get("recurrent_state")
        return [*windows, zeros[3] if state is None else state]

    def cache_entries(self, states: list[torch.Tensor]) -> dict:
        return {"conv_state": tuple(states[:3]), "recurrent_state": states[3]}


TORCH_PATH_MODULES = {
    RMSNorm: TorchPathRMSNorm,
    LayerNorm: TorchPathLayerNorm,
    GroupNorm: TorchPathGroupNorm,
    FusedRMSNormGated: TorchPathFusedRMSNormGated,
    GatedMLP: TorchPathGatedMLP,
}
GLA_CLASSES = {GatedLinearAttention: StatefulGatedLinearAttention, **TORCH_PATH_MODULES}
RWKV6_CLASSES = {
    RWKV6Attention: StatefulRWKV6Attention,
    RWKV6FeedForward: StatefulRWKV6FeedForward,
    **TORCH_PATH_MODULES,
}
GATED_DELTANET_CLASSES = {GatedDeltaNet: StatefulFlaGatedDeltaNet, **TORCH_PATH_MODULES}
RWKV7_CLASSES = {
    RWKV7Attention: StatefulRWKV7Attention,
    RWKV7FeedForward: StatefulRWKV7FeedForward,
    **TORCH_PATH_MODULES,
}
