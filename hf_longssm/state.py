"""`CarriedState`: the recurrent state of every layer of a Mamba-family model, carried between segments.

This is the only module that touches the internals of transformers' cache objects (`to_cache` / `from_cache`).
Per layer the state is the conv window and the SSM state, in transformers' own layout:

* Mamba / FalconMamba: `conv_state (batch, intermediate_size, conv_kernel)`,
  `recurrent_state (batch, intermediate_size, state_size)`;
* Mamba-2: `conv_state (batch, intermediate_size + 2 * n_groups * state_size, conv_kernel)`,
  `recurrent_state (batch, num_heads, head_dim, state_size)`.

Dimension 1 of every recurrent state is the "head" axis (a channel for Mamba-1): fitted noise is per layer and head.
Every operation returns a new object with new tensors; nothing is written in place, so a state that autograd saved
for a backward pass is never modified.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, PretrainedConfig

from .modeling import get_architecture, input_device, state_shapes, unwrap_model


def _model_info(model) -> tuple[PretrainedConfig, torch.device, torch.dtype]:
    base = unwrap_model(model)
    get_architecture(base)  # clear error for unsupported models
    # Not the first parameter's device: with a `device_map` it may be "meta" (offloaded) or another layer's device.
    return base.config, input_device(base), next(base.parameters()).dtype


class CarriedState:
    """The per-layer conv windows and SSM states of a batch of streams.

    Build one with `zeros`, `random_noise`, `fitted_noise` or `from_cache`; `forward_with_state` returns the final
    state of a segment as a new `CarriedState`.

    Args:
        conv_states (`list[torch.Tensor]`): one conv window per layer, `(batch, conv_dim, conv_kernel)`.
        recurrent_states (`list[torch.Tensor]`): one SSM state per layer (see the module docstring for shapes).
        config (`PretrainedConfig`, *optional*): the model's config, needed by `to_cache`.
    """

    def __init__(
        self,
        conv_states: Sequence[torch.Tensor],
        recurrent_states: Sequence[torch.Tensor],
        config: PretrainedConfig | None = None,
    ):
        if len(conv_states) != len(recurrent_states):
            raise ValueError(f"Got {len(conv_states)} conv states but {len(recurrent_states)} recurrent states.")
        self.conv_states = list(conv_states)
        self.recurrent_states = list(recurrent_states)
        self.config = config

    # ----- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def zeros(
        cls,
        model,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        state_dtype: torch.dtype = torch.float32,
    ) -> CarriedState:
        """A zero state, the start of a sequence.

        Args:
            model: a supported model (bare, `*ForCausalLM`, or wrapped by PEFT / DDP).
            batch_size (`int`): number of streams.
            device (*optional*): defaults to the device the model takes its inputs on (with a `device_map`, each
                layer moves its part to its own device on first use).
            dtype (`torch.dtype`, *optional*): dtype of the conv windows; defaults to the model's dtype.
            state_dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): dtype of the SSM states. The scans
                compute in float32, so float32 loses nothing between segments.
        """
        config, model_device, model_dtype = _model_info(model)
        device = model_device if device is None else device
        dtype = model_dtype if dtype is None else dtype
        shapes = state_shapes(config)
        conv = [torch.zeros(batch_size, *conv_shape, device=device, dtype=dtype) for conv_shape, _ in shapes]
        ssm = [torch.zeros(batch_size, *ssm_shape, device=device, dtype=state_dtype) for _, ssm_shape in shapes]
        return cls(conv, ssm, config)

    @classmethod
    def random_noise(
        cls, model, batch_size: int, std: float, *, generator: torch.Generator | None = None, **kwargs
    ) -> CarriedState:
        """IID Gaussian SSM states with one `std` for all layers and heads; conv windows start at zero.

        The papers' "Random Noise" intervention perturbs the SSM state, the part that accumulates over a long
        sequence; the conv window only spans `conv_kernel - 1` tokens.
        """
        state = cls.zeros(model, batch_size, **kwargs)
        ssm = [
            torch.randn(s.shape, generator=generator, device="cpu", dtype=torch.float32).to(s.device, s.dtype) * std
            for s in state.recurrent_states
        ]
        return cls(state.conv_states, ssm, state.config)

    @classmethod
    def fitted_noise(
        cls, model, batch_size: int, stats: FittedNoiseStats, *, generator: torch.Generator | None = None, **kwargs
    ) -> CarriedState:
        """Gaussian SSM states with the per-layer, per-head mean and std in `stats`; conv windows start at zero."""
        state = cls.zeros(model, batch_size, **kwargs)
        if stats.num_layers != len(state.recurrent_states):
            raise ValueError(f"Fitted statistics cover {stats.num_layers} layers, the model has {state.num_layers}.")
        ssm = []
        for layer_idx, s in enumerate(state.recurrent_states):
            mean, std = stats.mean(layer_idx), stats.std(layer_idx)
            if mean.shape[0] != s.shape[1]:
                raise ValueError(f"Fitted statistics of layer {layer_idx}: {mean.shape[0]} heads, not {s.shape[1]}.")
            view = (1, -1) + (1,) * (s.dim() - 2)
            noise = torch.randn(s.shape, generator=generator, device="cpu", dtype=torch.float32)
            ssm.append((noise * std.view(view) + mean.view(view)).to(s.device, s.dtype))
        return cls(state.conv_states, ssm, state.config)

    # ----- properties -------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.recurrent_states)

    @property
    def batch_size(self) -> int:
        return self.recurrent_states[0].shape[0]

    @property
    def device(self) -> torch.device:
        """The first layer's device. With a `device_map` spreading layers over devices each layer's state lives on
        that layer's device, so the layers may differ."""
        return self.recurrent_states[0].device

    def _map(self, fn) -> CarriedState:
        return CarriedState([fn(t) for t in self.conv_states], [fn(t) for t in self.recurrent_states], self.config)

    # ----- operations -------------------------------------------------------------------------------------------
    def detach(self) -> CarriedState:
        """Cut the autograd graph (TBTT / state passing: gradients stop at the segment boundary)."""
        return self._map(torch.Tensor.detach)

    def clone(self) -> CarriedState:
        return self._map(torch.Tensor.clone)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CarriedState:
        """Move to `device` and/or cast every tensor to `dtype`."""
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def reset(self, mask: torch.Tensor) -> CarriedState:
        """Zero the rows where `mask` (`BoolTensor[batch]`) is True: a new document starts there."""
        mask = torch.as_tensor(mask, device=self.device).bool()
        if mask.shape != (self.batch_size,):
            raise ValueError(f"reset mask must have shape ({self.batch_size},), got {tuple(mask.shape)}.")

        def zero_rows(t):  # `.to`: layers may live on different devices (a `device_map`); a no-op otherwise
            return t.masked_fill(mask.to(t.device).view(-1, *([1] * (t.dim() - 1))), 0)

        return self._map(zero_rows)

    def permute(self, index: torch.Tensor | Sequence[int]) -> CarriedState:
        """Reorder (or select) rows: row `i` of the result is row `index[i]` of this state."""
        index = torch.as_tensor(index, device=self.device, dtype=torch.long)
        return self._map(lambda t: t.index_select(0, index.to(t.device)))  # per-layer devices: see `reset`

    def norms(self) -> torch.Tensor:
        """Per-layer L2 norm of the SSM state, averaged over the batch rows: `FloatTensor[num_layers]`."""
        norms = [s.detach().float().flatten(1).norm(dim=1).mean() for s in self.recurrent_states]
        return torch.stack([n.to(self.device) for n in norms])  # per-layer devices (a `device_map`): see `reset`

    # ----- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat, contiguous tensors (`conv_states.{i}`, `recurrent_states.{i}`) for `torch.save` / safetensors."""
        out = {f"conv_states.{i}": t.detach().contiguous() for i, t in enumerate(self.conv_states)}
        out.update({f"recurrent_states.{i}": t.detach().contiguous() for i, t in enumerate(self.recurrent_states)})
        return out

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], config: PretrainedConfig | None = None):
        num_layers = sum(1 for k in state_dict if k.startswith("recurrent_states."))
        conv = [state_dict[f"conv_states.{i}"] for i in range(num_layers)]
        ssm = [state_dict[f"recurrent_states.{i}"] for i in range(num_layers)]
        return cls(conv, ssm, config)

    # ----- transformers' cache ----------------------------------------------------------------------------------
    def to_cache(self, config: PretrainedConfig | None = None) -> DynamicCache:
        """The model's own `DynamicCache`, filled with this state: `generate()` and one-token decoding continue
        from it.

        Pass it under the name the installed transformers uses, `hf_longssm.modeling.cache_argument(model)`: `cache=`
        from 5.24 on, `cache_params=` up to 5.23 (`past_key_values=` is refused by `generate` as an unused kwarg).
        Feed the next token only: the cache already holds everything before it.

        Example:
            >>> _, state = forward_with_state(model, input_ids[:, :-1])
            >>> model.generate(input_ids[:, -1:], max_new_tokens=20, **{cache_argument(model): state.to_cache()})
        """
        config = config if config is not None else self.config
        if config is None:
            raise ValueError("to_cache needs the model config: pass `config=model.config`.")
        cache = DynamicCache(config=config)
        for layer_idx, (conv, ssm) in enumerate(zip(self.conv_states, self.recurrent_states)):
            cache.update_conv_state(conv.detach().clone(), layer_idx, conv_kernel_size=conv.shape[-1])
            cache.update_recurrent_state(ssm.detach().clone(), layer_idx)
        # From transformers 5.25 a linear-attention cache layer counts the tokens it has seen, and `generate` feeds
        # only `input_ids[:, count:]` (it takes `input_ids` to be the whole sequence). A carried state has no token
        # count, and the caller passes the next token alone, so the cache reports none seen.
        for layer in cache.layers:
            if isinstance(getattr(layer, "cumulative_length_linear", None), torch.Tensor):
                layer.cumulative_length_linear.zero_()
        return cache

    @classmethod
    def from_cache(cls, cache: DynamicCache, config: PretrainedConfig | None = None) -> CarriedState:
        """Copy the states out of a filled `DynamicCache` (e.g. after a prefill with `use_cache=True`)."""
        conv, ssm = [], []
        for layer_idx in range(len(cache.layers)):
            c, s = cache.get_conv_state(layer_idx), cache.get_recurrent_state(layer_idx)
            if c is None or s is None:
                raise ValueError(f"Layer {layer_idx} of the cache holds no state yet; run a prefill first.")
            conv.append(c.detach().clone())
            ssm.append(s.detach().clone())
        return cls(conv, ssm, config)

    def __repr__(self) -> str:
        return (
            f"CarriedState(num_layers={self.num_layers}, batch_size={self.batch_size}, "
            f"conv={tuple(self.conv_states[0].shape)}, recurrent={tuple(self.recurrent_states[0].shape)}, "
            f"device={self.device})"
        )


class FittedNoiseStats:
    """Running per-layer, per-head mean and std of observed final SSM states (for the "Fitted Noise" intervention).

    Call `update(state)` with the final states seen in training; `CarriedState.fitted_noise(model, b, stats)` then
    samples from N(mean, std^2) per layer and head. Sums are kept in float64 so long runs do not lose precision.
    """

    def __init__(self, num_layers: int):
        self.count = [0] * num_layers
        self.sum: list[torch.Tensor | None] = [None] * num_layers
        self.sum_sq: list[torch.Tensor | None] = [None] * num_layers

    @property
    def num_layers(self) -> int:
        return len(self.count)

    @property
    def is_empty(self) -> bool:
        return self.count[0] == 0

    @torch.no_grad()
    def update(self, state: CarriedState) -> None:
        if state.num_layers != self.num_layers:
            raise ValueError(f"State has {state.num_layers} layers, the statistics {self.num_layers}.")
        for layer_idx, s in enumerate(state.recurrent_states):
            per_head = s.detach().double().transpose(0, 1).flatten(1).cpu()  # (heads, everything else)
            if self.sum[layer_idx] is None:
                self.sum[layer_idx] = torch.zeros(per_head.shape[0], dtype=torch.float64)
                self.sum_sq[layer_idx] = torch.zeros(per_head.shape[0], dtype=torch.float64)
            self.sum[layer_idx] += per_head.sum(1)
            self.sum_sq[layer_idx] += per_head.square().sum(1)
            self.count[layer_idx] += per_head.shape[1]

    def mean(self, layer_idx: int) -> torch.Tensor:
        if self.is_empty:
            raise ValueError("No final states were accumulated yet: call `update` first.")
        return (self.sum[layer_idx] / self.count[layer_idx]).float()

    def std(self, layer_idx: int) -> torch.Tensor:
        n = self.count[layer_idx]
        mean = self.sum[layer_idx] / n
        var = (self.sum_sq[layer_idx] / n - mean.square()).clamp_min(0) * (n / max(n - 1, 1))
        return var.sqrt().float()

    def state_dict(self) -> dict:
        return {"count": list(self.count), "sum": self.sum, "sum_sq": self.sum_sq}

    @classmethod
    def from_state_dict(cls, state_dict: dict) -> FittedNoiseStats:
        stats = cls(len(state_dict["count"]))
        stats.count, stats.sum, stats.sum_sq = list(state_dict["count"]), state_dict["sum"], state_dict["sum_sq"]
        return stats
