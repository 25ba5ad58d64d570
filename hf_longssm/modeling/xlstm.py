"""xLSTM (`model_type="xlstm"`, NX-AI's xLSTM-7B): mLSTM layers, each carrying three states per head, all accumulating
over the sequence: the matrix memory `c_states (num_heads, qk_head_dim, v_head_dim)`, the normalizer `n_states
(num_heads, qk_head_dim)` and the stabilizer `m_states (num_heads, 1)` (the running max of the log gates), the
layout of transformers' `xLSTMCache.rnn_state`.

The model's forward hands each block `cache.rnn_state[layer_idx]` and copies the block's new states into it in place.
`SegmentStates.rnn_state` answers with a `LayerSlot` per layer: the stateful layer runs transformers' own mLSTM layer
from the carried states and records fresh final states; the in-place copy into the slot writes nothing.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.models.xlstm.modeling_xlstm import xLSTMCache, xLSTMLayer

from .base import Architecture, LayerSlot, StatefulMixerMixin, StateKind, StateShapes


MLSTM_STATES = (StateKind("c_states"), StateKind("n_states"), StateKind("m_states"))


def xlstm_state_shapes(config: PretrainedConfig) -> StateShapes:
    # The layer's own sizes (`xLSTMLayer.__init__`); `config.qk_head_dim` rounds the width up to a multiple of 64,
    # which differs from the layer's below a width of 64 per factor.
    heads = config.num_heads
    qk_head_dim = int(config.hidden_size * config.qk_dim_factor) // heads
    v_head_dim = int(config.hidden_size * config.v_dim_factor) // heads
    return (heads, qk_head_dim, v_head_dim), (heads, qk_head_dim), (heads, 1)


def mlstm_layer_forward_with_state(
    layer: xLSTMLayer, hidden_states: torch.Tensor, c: torch.Tensor, n: torch.Tensor, m: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """transformers' mLSTM layer over a segment from the carried `(c, n, m)`; returns the output and the final
    states (its kernels read the initial states and return new ones)."""
    config = layer.config
    if config.mode == "train_with_padding" or (config.mode == "train" and not config.return_last_states):
        raise ValueError(
            f"xLSTM's mode={config.mode!r} (return_last_states={config.return_last_states}) returns no final "
            "states, which a carried state needs: set model.config.mode = 'inference' (or 'train' with "
            "return_last_states=True)."
        )
    if config.mode == "train" and hidden_states.shape[1] % config.chunk_size:
        raise ValueError(
            f"xLSTM's mode='train' reads whole chunks of {config.chunk_size} tokens; this segment has "
            f"{hidden_states.shape[1]}. Use a segment_length that is a multiple of config.chunk_size, or set "
            "model.config.mode = 'inference' (any length, differentiable)."
        )
    # The carried states are float32; the kernels multiply them with the layer's queries and keys, in the model's
    # dtype (bfloat16 weights: bfloat16, as transformers' own xLSTMCache keeps them).
    c, n, m = (t.to(hidden_states.dtype) for t in (c, n, m))
    out, (c, n, m) = xLSTMLayer.forward(layer, hidden_states, (c, n, m))
    return out, c, n, m


def xlstm_cache(config: PretrainedConfig, states: dict[str, list[torch.Tensor]], position: int = 0) -> xLSTMCache:
    """transformers' `xLSTMCache` holding the carried states (float32, as the inference kernels keep them); it
    counts no tokens (`position` is not kept)."""
    batch = states["c_states"][0].shape[0]
    cache = xLSTMCache(config, batch, dtype=torch.float32, device=states["c_states"][0].device)
    cache.rnn_state = {
        layer_idx: tuple(states[kind.name][layer_idx].detach().float().clone() for kind in MLSTM_STATES)
        for layer_idx in range(len(states["c_states"]))
    }
    cache.rnn_state_initial = False
    # transformers' generate (5.25) asks any cache whether it compiles; xLSTMCache does not say (it does not).
    cache.is_compileable = False
    return cache


class StatefulxLSTMLayer(StatefulMixerMixin, xLSTMLayer):
    segment_forward = mlstm_layer_forward_with_state
    takes_delta_transform = False  # no Δ: MambaExtend and LongMamba do not apply

    def forward(self, x: torch.Tensor, state=None):
        if isinstance(state, LayerSlot):  # the block's state is hf_longssm's slot: the segment's carried state
            return state.segment.run_layer(self, x, layer_idx=state.layer_idx), state
        return xLSTMLayer.forward(self, x, state)


ARCHITECTURE = Architecture(
    model_types=("xlstm",),
    display_name="xLSTM",
    lora_target_modules=("q", "k", "v", "ogate_preact", "out_proj"),
    state_shapes=xlstm_state_shapes,
    stateful_mixers={xLSTMLayer: StatefulxLSTMLayer},
    state_kinds=MLSTM_STATES,
    to_cache=xlstm_cache,
    generate_from_cache=False,  # transformers' generate asks an xLSTMCache for get_seq_length (5.25), which it lacks
)
