"""The one forward every stateful mixer subclass shares."""

from __future__ import annotations


class StatefulMixerMixin:
    """Serve hf_longssm's `SegmentStates` passed as `cache_params`; otherwise behave as transformers' mixer.

    Subclasses set `segment_forward` (the architecture's forward from and to a carried state) and wrap `forward`
    with transformers' `force_accelerate_hooks` for the child modules whose weights the mixer reads directly.
    """

    def forward(self, hidden_states, cache_params=None, attention_mask=None, **kwargs):
        from ..state import SegmentStates  # the state module imports the registry, which imports the mixers

        if isinstance(cache_params, SegmentStates):
            return cache_params.run_layer(self, hidden_states)
        return super().forward(hidden_states, cache_params=cache_params, attention_mask=attention_mask, **kwargs)
