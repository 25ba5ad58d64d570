"""FalconMamba (`model_type="falcon_mamba"`): Mamba-1's segment forward with weightless RMS norms on dt, B and C.

The state layout is Mamba-1's (`mamba.py`).
"""

from __future__ import annotations

from transformers.integrations.accelerate import force_accelerate_hooks
from transformers.models.falcon_mamba.modeling_falcon_mamba import FalconMambaMixer

from .base import Architecture, StatefulMixerMixin
from .mamba import mamba_mixer_forward_with_state, mamba_state_shapes


class StatefulFalconMambaMixer(StatefulMixerMixin, FalconMambaMixer):
    segment_forward = force_accelerate_hooks(["conv1d", "dt_proj"])(mamba_mixer_forward_with_state)

    def normalize_ssm_inputs(self, time_step, B, C):
        return self.dt_layernorm(time_step), self.b_layernorm(B), self.c_layernorm(C)


ARCHITECTURE = Architecture(
    model_types=("falcon_mamba",),
    display_name="FalconMamba",
    # Not `dt_proj`: the mixer reads `dt_proj.weight` directly (transformers' forward too), so a LoRA adapter there
    # would get no gradient and merging one would change the output.
    lora_target_modules=("in_proj", "x_proj"),
    state_shapes=mamba_state_shapes,
    stateful_mixers={FalconMambaMixer: StatefulFalconMambaMixer},
)
