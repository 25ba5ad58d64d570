"""`CarriedState`: the recurrent state of every layer of a supported model, carried between segments.

This is the only module that touches the internals of transformers' cache objects (`to_cache` / `from_cache`).
Each stateful layer carries the tensors its family's state kinds name (`Architecture.state_kinds`), in transformers'
own layout; `state.states[name]` is the list over layers of one kind:

* Mamba / FalconMamba: `conv_states (batch, intermediate_size, conv_kernel)`,
  `recurrent_states (batch, intermediate_size, state_size)`;
* Mamba-2: `conv_states (batch, intermediate_size + 2 * n_groups * state_size, conv_kernel)`,
  `recurrent_states (batch, num_heads, head_dim, state_size)`;
* Gated DeltaNet (Qwen3-Next, Qwen3.5, OLMo-Hybrid): `conv_states (batch, 2 * key_dim + value_dim, conv_kernel)`,
  `recurrent_states (batch, value_heads, key_head_dim, value_head_dim)`;
* LFM2's short convolutions: `conv_states (batch, hidden_size, conv_L_cache)` alone.

A kind is a *window* (recent inputs: conv windows) or accumulates over the sequence (recurrent states). Every init
starts windows at zero; the noise inits perturb the accumulating kinds, per layer and head.

Hybrids (stateful layers with attention layers) carry, besides those states, each attention layer's keys and
values `(batch, num_key_value_heads, carried, head_dim)` (rotated at their own positions), which of them are valid
(`key_valid (batch, carried)`: False where a row's document restarted) and the tokens read so far (`position`, for
the positions of the next segment). How many keys are kept is `attention_state`: `"window"` (the last
`attention_window` tokens, default: a segment's length; memory stays bounded), `"none"` (attention sees its segment
only) or `"full"` (every key: exact, memory grows with the input).

Dimension 1 of every accumulating state is the "head" axis (a channel for Mamba-1): fitted noise is per layer and
head. Every operation returns a new object with new tensors; nothing is written in place, so a state that autograd
saved for a backward pass is never modified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import DynamicCache, PretrainedConfig

from .modeling import (
    attention_layers,
    get_architecture,
    input_device,
    kv_shape,
    ssm_layers,
    state_kinds,
    state_shapes,
    unwrap_model,
    window_state_names,
)


ATTENTION_STATES = ("window", "none", "full")
# `state_dict` keys that are not per-layer states
_ATTENTION_KEYS = ("keys", "values", "key_valid", "position", "attention_policy")


def _model_info(model) -> tuple[PretrainedConfig, torch.device, torch.dtype]:
    base = unwrap_model(model)
    get_architecture(base)  # clear error for unsupported models
    # Not the first parameter's device: with a `device_map` it may be "meta" (offloaded) or another layer's device.
    return base.config, input_device(base), next(base.parameters()).dtype


class CarriedState:
    """The per-layer states (conv windows, recurrent states...) of a batch of streams.

    Build one with `zeros`, `random_noise`, `fitted_noise` or `from_cache`; `forward_with_state` returns the final
    state of a segment as a new `CarriedState`.

    Args:
        conv_states (`list[torch.Tensor]`, *optional*): one conv window per layer, `(batch, conv_dim, conv_kernel)`.
        recurrent_states (`list[torch.Tensor]`, *optional*): one recurrent state per layer (see the module
            docstring for shapes).
        config (`PretrainedConfig`, *optional*): the model's config, needed by `to_cache`.
        states (`Mapping[str, list[torch.Tensor]]`, *optional*): every kind by name, in the family's order, instead
            of `conv_states` and `recurrent_states` (a family whose layers carry other kinds).
    """

    def __init__(
        self,
        conv_states: Sequence[torch.Tensor] | None = None,
        recurrent_states: Sequence[torch.Tensor] | None = None,
        config: PretrainedConfig | None = None,
        *,
        states: Mapping[str, Sequence[torch.Tensor]] | None = None,
        keys: Sequence[torch.Tensor] = (),
        values: Sequence[torch.Tensor] = (),
        key_valid: torch.Tensor | None = None,
        position: int = 0,
        attention_state: str = "window",
        attention_window: int | None = None,
    ):
        if states is None:
            if conv_states is None or recurrent_states is None:
                raise ValueError("Pass conv_states and recurrent_states, or states={kind name: per-layer tensors}.")
            states = {"conv_states": conv_states, "recurrent_states": recurrent_states}
        elif conv_states is not None or recurrent_states is not None:
            raise ValueError("Pass either states= or conv_states and recurrent_states, not both.")
        self.states = {name: list(tensors) for name, tensors in states.items()}
        if not self.states:
            raise ValueError("A state needs at least one state kind.")
        lengths = {name: len(tensors) for name, tensors in self.states.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Every state kind needs one tensor per layer; got {lengths}.")
        if len(keys) != len(values):
            raise ValueError(f"Got {len(keys)} key tensors but {len(values)} value tensors.")
        if attention_state not in ATTENTION_STATES:
            raise ValueError(f"attention_state must be one of {list(ATTENTION_STATES)}, got {attention_state!r}.")
        if attention_window is not None and attention_window < 1:
            raise ValueError(f"attention_window must be >= 1 (or None: a segment's length), got {attention_window}.")
        self.config = config
        self.keys, self.values = list(keys), list(values)
        if key_valid is None and self.keys:
            key_valid = torch.ones(self.keys[0].shape[0], self.keys[0].shape[-2], dtype=torch.bool)
        self.key_valid = key_valid.to(self.keys[0].device) if key_valid is not None and self.keys else key_valid
        self.position = int(position)
        self.attention_state, self.attention_window = attention_state, attention_window

    def kept_keys(self, segment_length: int) -> int | None:
        """Keys an attention layer keeps after a segment of `segment_length` tokens (`None`: all)."""
        if self.attention_state == "full":
            return None
        if self.attention_state == "none":
            return 0
        return self.attention_window or segment_length

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
        **attention,
    ) -> CarriedState:
        """A zero state, the start of a sequence.

        Args:
            model: a supported model (bare, `*ForCausalLM`, or wrapped by PEFT / DDP).
            batch_size (`int`): number of streams.
            device (*optional*): defaults to the device the model takes its inputs on (with a `device_map`, each
                layer moves its part to its own device on first use).
            dtype (`torch.dtype`, *optional*): dtype of the windows (conv windows); defaults to the model's dtype.
            state_dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): dtype of the accumulating states.
                The scans compute in float32, so float32 loses nothing between segments.
            attention: `attention_state` and `attention_window` of a hybrid (see the module docstring).
        """
        config, model_device, model_dtype = _model_info(model)
        device = model_device if device is None else device
        dtype = model_dtype if dtype is None else dtype
        shapes = state_shapes(config)
        states = {
            kind.name: [
                torch.zeros(batch_size, *layer[k], device=device, dtype=dtype if kind.window else state_dtype)
                for layer in shapes
            ]
            for k, kind in enumerate(state_kinds(config))
        }
        keys = []
        if attention_layers(config):  # a hybrid: no key carried yet
            heads, head_dim = kv_shape(config)
            empty = torch.zeros(batch_size, heads, 0, head_dim, device=device, dtype=dtype)
            keys = [empty] * len(attention_layers(config))
        return cls(config=config, states=states, keys=keys, values=keys, **attention)

    @classmethod
    def random_noise(
        cls, model, batch_size: int, std: float, *, generator: torch.Generator | None = None, **kwargs
    ) -> CarriedState:
        """IID Gaussian accumulating states (SSM states) with one `std` for all layers and heads; windows start at
        zero.

        The papers' "Random Noise" intervention perturbs the SSM state, the part that accumulates over a long
        sequence; the conv window only spans `conv_kernel - 1` tokens.
        """
        state = cls.zeros(model, batch_size, **kwargs)
        state._check_noisable()
        noised = {
            name: [
                torch.randn(s.shape, generator=generator, device="cpu", dtype=torch.float32).to(s.device, s.dtype)
                * std
                for s in state.states[name]
            ]
            for name in state.accumulating_names
        }
        return state._with(states={**state.states, **noised})

    @classmethod
    def fitted_noise(
        cls, model, batch_size: int, stats: FittedNoiseStats, *, generator: torch.Generator | None = None, **kwargs
    ) -> CarriedState:
        """Gaussian accumulating states with the per-layer, per-head mean and std in `stats`; windows start at
        zero."""
        state = cls.zeros(model, batch_size, **kwargs)
        state._check_noisable()
        targets = state.noised_tensors()
        if stats.num_layers != len(targets):
            raise ValueError(
                f"Fitted statistics cover {stats.num_layers} layers, the model has {state.num_layers}"
                + (f" ({len(targets)} noised states)" if len(targets) != state.num_layers else "")
                + "."
            )
        noised = []
        for layer_idx, s in enumerate(targets):
            mean, std = stats.mean(layer_idx), stats.std(layer_idx)
            if mean.shape[0] != s.shape[1]:
                raise ValueError(f"Fitted statistics of layer {layer_idx}: {mean.shape[0]} heads, not {s.shape[1]}.")
            view = (1, -1) + (1,) * (s.dim() - 2)
            noise = torch.randn(s.shape, generator=generator, device="cpu", dtype=torch.float32)
            noised.append((noise * std.view(view) + mean.view(view)).to(s.device, s.dtype))
        return state._with_noised(noised)

    # ----- properties -------------------------------------------------------------------------------------------
    @property
    def conv_states(self) -> list[torch.Tensor]:
        """The conv windows, one per layer (families with a conv)."""
        return self._kind("conv_states")

    @property
    def recurrent_states(self) -> list[torch.Tensor]:
        """The recurrent (SSM) states, one per layer (families with one)."""
        return self._kind("recurrent_states")

    def _kind(self, name: str) -> list[torch.Tensor]:
        if name not in self.states:
            family = getattr(self.config, "model_type", "this model")
            raise AttributeError(f"{family}'s layers carry {list(self.states)}, not {name}: read state.states[...].")
        return self.states[name]

    @property
    def window_names(self) -> list[str]:
        """The kinds that are windows of recent inputs (zero in every init)."""
        if self.config is not None:
            windows = {kind.name for kind in state_kinds(self.config) if kind.window}
        else:
            windows = window_state_names()
        return [name for name in self.states if name in windows]

    @property
    def accumulating_names(self) -> list[str]:
        """The kinds that accumulate over the sequence (what the noise inits perturb)."""
        return [name for name in self.states if name not in self.window_names]

    def _check_noisable(self) -> None:
        if not self.accumulating_names:
            family = getattr(self.config, "model_type", "this model")
            raise ValueError(
                f"{family}'s layers carry only windows of recent inputs ({self.window_names}), which start at zero: "
                "there is no accumulated state to perturb. Use CarriedState.zeros (or state passing / TBTT)."
            )

    def noised_tensors(self) -> list[torch.Tensor]:
        """The accumulating states, kind by kind then layer by layer (what `FittedNoiseStats` tracks)."""
        return [t for name in self.accumulating_names for t in self.states[name]]

    def _with_noised(self, tensors: Sequence[torch.Tensor]) -> CarriedState:
        states, tensors = dict(self.states), list(tensors)
        for name in self.accumulating_names:
            states[name], tensors = tensors[: self.num_layers], tensors[self.num_layers :]
        return self._with(states=states)

    @property
    def all_tensors(self) -> list[torch.Tensor]:
        """Every per-layer state tensor (not the attention keys)."""
        return [t for tensors in self.states.values() for t in tensors]

    @property
    def num_layers(self) -> int:
        return len(next(iter(self.states.values())))

    @property
    def batch_size(self) -> int:
        return self.all_tensors[0].shape[0]

    @property
    def device(self) -> torch.device:
        """The first layer's device. With a `device_map` spreading layers over devices each layer's state lives on
        that layer's device, so the layers may differ."""
        names = self.accumulating_names or list(self.states)
        return self.states[names[0]][0].device

    @property
    def num_keys(self) -> int:
        """Keys each attention layer carries (0 for a pure family)."""
        return self.keys[0].shape[-2] if self.keys else 0

    def _with(self, **changes) -> CarriedState:
        """A new state with `changes`: fields of the constructor, or one state kind by name."""
        states = dict(changes.pop("states", self.states))
        for name in [name for name in changes if name in states]:
            states[name] = changes.pop(name)
        fields = dict(
            states=states,
            config=self.config,
            keys=self.keys,
            values=self.values,
            key_valid=self.key_valid,
            position=self.position,
            attention_state=self.attention_state,
            attention_window=self.attention_window,
        )
        return CarriedState(**{**fields, **changes})

    def _map(self, fn) -> CarriedState:
        return self._with(
            states={name: [fn(t) for t in tensors] for name, tensors in self.states.items()},
            keys=[fn(t) for t in self.keys],
            values=[fn(t) for t in self.values],
        )

    # ----- operations -------------------------------------------------------------------------------------------
    def detach(self) -> CarriedState:
        """Cut the autograd graph (TBTT / state passing: gradients stop at the segment boundary)."""
        return self._map(torch.Tensor.detach)

    def clone(self) -> CarriedState:
        return self._map(torch.Tensor.clone)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CarriedState:
        """Move to `device` and/or cast every tensor to `dtype` (the key mask stays boolean)."""
        moved = self._map(lambda t: t.to(device=device, dtype=dtype))
        if self.key_valid is not None and device is not None:
            moved.key_valid = self.key_valid.to(device)
        return moved

    def reset(self, mask: torch.Tensor) -> CarriedState:
        """Zero the rows where `mask` (`BoolTensor[batch]`) is True: a new document starts there."""
        mask = torch.as_tensor(mask, device=self.device).bool()
        if mask.shape != (self.batch_size,):
            raise ValueError(f"reset mask must have shape ({self.batch_size},), got {tuple(mask.shape)}.")

        def zero_rows(t):  # `.to`: layers may live on different devices (a `device_map`); a no-op otherwise
            return t.masked_fill(mask.to(t.device).view(-1, *([1] * (t.dim() - 1))), 0)

        reset = self._with(states={name: [zero_rows(t) for t in tensors] for name, tensors in self.states.items()})
        if self.key_valid is not None:  # a restarted row's carried keys are masked out, not zeroed (a zero key counts)
            reset.key_valid = self.key_valid & ~mask.to(self.key_valid.device)[:, None]
        return reset

    def permute(self, index: torch.Tensor | Sequence[int]) -> CarriedState:
        """Reorder (or select) rows: row `i` of the result is row `index[i]` of this state."""
        index = torch.as_tensor(index, device=self.device, dtype=torch.long)
        permuted = self._map(lambda t: t.index_select(0, index.to(t.device)))  # per-layer devices: see `reset`
        if self.key_valid is not None:
            permuted.key_valid = self.key_valid.index_select(0, index.to(self.key_valid.device))
        return permuted

    def norms(self) -> torch.Tensor:
        """Per-layer L2 norm of the accumulating states (the windows of a family without one), averaged over the
        batch rows: `FloatTensor[num_layers]`."""
        names = self.accumulating_names or self.window_names or list(self.states)
        norms = []
        for layer_idx in range(self.num_layers):
            parts = [self.states[name][layer_idx].detach().float().flatten(1) for name in names]
            norm = sum(p.square().sum(dim=1).to(parts[0].device) for p in parts).sqrt().mean()
            norms.append(norm.to(self.device))  # per-layer devices (a `device_map`): see `reset`
        return torch.stack(norms)

    # ----- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat, contiguous tensors (`conv_states.{i}`, `recurrent_states.{i}`, one prefix per state kind) for
        `torch.save` / safetensors."""
        out = {f"{name}.{i}": t.detach().contiguous() for name in self.states for i, t in enumerate(self.states[name])}
        if self.keys:  # a hybrid's attention layers
            out.update({f"keys.{i}": t.detach().contiguous() for i, t in enumerate(self.keys)})
            out.update({f"values.{i}": t.detach().contiguous() for i, t in enumerate(self.values)})
            out["key_valid"] = self.key_valid.contiguous()
            out["position"] = torch.tensor(self.position)
            # the policy, as numbers (the file holds tensors only): its index in ATTENTION_STATES, the window or -1
            window = -1 if self.attention_window is None else self.attention_window
            out["attention_policy"] = torch.tensor([ATTENTION_STATES.index(self.attention_state), window])
        return out

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], config: PretrainedConfig | None = None, **policy):
        """The state `state_dict` holds; `policy` (`attention_state`, `attention_window`) replaces a saved one."""
        names = []
        for key in state_dict:
            name = key.split(".")[0]
            if name not in _ATTENTION_KEYS and name not in names:
                names.append(name)
        if config is not None:  # the family's order (a safetensors file sorts its keys)
            order = [kind.name for kind in state_kinds(config)]
            names.sort(key=lambda name: order.index(name) if name in order else len(order))

        def per_layer(name):
            return [state_dict[f"{name}.{i}"] for i in range(sum(1 for k in state_dict if k.startswith(name + ".")))]

        states = {name: per_layer(name) for name in names}
        keys, values = per_layer("keys"), per_layer("values")
        attention = {"key_valid": state_dict["key_valid"], "position": int(state_dict["position"])} if keys else {}
        if "attention_policy" in state_dict:  # the saved policy, unless the caller gives one
            code, window = state_dict["attention_policy"].tolist()
            saved = {"attention_state": ATTENTION_STATES[code], "attention_window": None if window < 0 else window}
            policy = {**saved, **policy}
        return cls(config=config, states=states, keys=keys, values=values, **attention, **policy)

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

        A hybrid's cache holds keys: read `input_ids[:, :-1]` with `attention_state="full"` and pass the *whole*
        prompt, as with transformers' own cache (`generate` feeds what the cache has not seen: the last token):
            >>> state = CarriedState.zeros(model, 1, attention_state="full")
            >>> _, state = forward_with_state(model, input_ids[:, :-1], state)
            >>> model.generate(input_ids, max_new_tokens=20, **{cache_argument(model): state.to_cache()})
        """
        config = config if config is not None else self.config
        if config is None:
            raise ValueError("to_cache needs the model config: pass `config=model.config`.")
        family_cache = get_architecture(config).to_cache
        if family_cache is not None:  # a family with a cache of its own (xLSTM)
            return family_cache(config, self.states, self.position)
        unknown = set(self.states) - {"conv_states", "recurrent_states"}
        if unknown:
            raise ValueError(
                f"to_cache fills transformers' conv and recurrent states; {config.model_type}'s layers also carry "
                f"{sorted(unknown)}. Continue this state with hf_longssm.forward_with_state."
            )
        hybrid = bool(self.keys)
        if hybrid and self.num_keys != self.position:
            raise ValueError(
                f"This state carries {self.num_keys} of the {self.position} tokens read (attention_state="
                f"{self.attention_state!r}): transformers' cache and `generate` need every key of the sequence. Read "
                "the prompt with attention_state='full' to continue it with generate."
            )
        if hybrid and not bool(self.key_valid.all()):
            raise ValueError(
                "A row of this state restarted its document (reset): transformers' cache has no mask for the keys "
                "before it. Continue such rows with forward_with_state, or read each row's own document alone."
            )
        cache = DynamicCache(config=config)
        for slot, layer_idx in enumerate(ssm_layers(config)):
            if "conv_states" in self.states:
                conv = self.states["conv_states"][slot]
                cache.update_conv_state(conv.detach().clone(), layer_idx, conv_kernel_size=conv.shape[-1])
            if "recurrent_states" in self.states:
                cache.update_recurrent_state(self.states["recurrent_states"][slot].detach().clone(), layer_idx)
        for layer_idx, keys, values in zip(attention_layers(config), self.keys, self.values):
            cache.update(keys.detach().clone(), values.detach().clone(), layer_idx)
        # From transformers 5.25 a linear-attention cache layer counts the tokens it has seen, and `generate` feeds
        # only `input_ids[:, count:]` (it takes `input_ids` to be the whole sequence). A pure family's carried state
        # has no token count, and the caller passes the next token alone, so the cache reports none seen. A hybrid's
        # attention layers hold every key: the caller passes the whole sequence, as with transformers' own cache,
        # and every layer reports the tokens read.
        for layer in cache.layers:
            if isinstance(getattr(layer, "cumulative_length_linear", None), torch.Tensor):
                layer.cumulative_length_linear.fill_(self.position if hybrid else 0)
        return cache

    @classmethod
    def from_cache(cls, cache: DynamicCache, config: PretrainedConfig | None = None) -> CarriedState:
        """Copy the states out of a filled `DynamicCache` (e.g. after a prefill with `use_cache=True`); the pure
        families only (a hybrid's prompt is read with `forward_with_state`)."""
        if config is not None and attention_layers(config):
            raise ValueError(
                f"from_cache reads the states of Mamba-only models; {config.model_type} has attention layers: read "
                "its prompt with hf_longssm.forward_with_state (or prefill) to get a CarriedState."
            )
        conv, ssm = [], []
        for layer_idx in range(len(cache.layers)):
            c, s = cache.get_conv_state(layer_idx), cache.get_recurrent_state(layer_idx)
            if c is None or s is None:
                raise ValueError(f"Layer {layer_idx} of the cache holds no state yet; run a prefill first.")
            conv.append(c.detach().clone())
            ssm.append(s.detach().clone())
        return cls(conv, ssm, config)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}={tuple(tensors[0].shape)}" for name, tensors in self.states.items())
        layers = f"num_layers={self.num_layers}, batch_size={self.batch_size}"
        return f"CarriedState({layers}, {shapes}, device={self.device})"


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
        tensors = state.noised_tensors()  # one "layer" of the statistics per accumulating kind and layer
        if len(tensors) != self.num_layers:
            raise ValueError(f"State has {len(tensors)} noised layers, the statistics {self.num_layers}.")
        for layer_idx, s in enumerate(tensors):
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
