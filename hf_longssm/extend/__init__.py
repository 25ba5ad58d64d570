"""Training-free length extension: calibrate a transform of each Mamba layer's step size Δ, no weight trained.

| function | method | what is calibrated |
|---|---|---|
| `mamba_extend` | MambaExtend (Azizi et al., ICLR 2025) | one Δ scale per layer, by perplexity at the target length |
| `long_mamba` | LongMamba (Ye et al., ICLR 2025) | per-channel Δ thresholds that filter tokens in "global" channels |
| `delta_scale` | a uniform Δ scale (e.g. `train_length / target_length`) | nothing: the sanity baseline |

Each returns the model with the extension installed (`hf_longssm.extension`): it acts in hf_longssm's segment forward
(`forward_with_state`, evaluation, the lm-eval adapter, at any length in bounded memory, torch and kernel paths),
`save_pretrained` writes it beside the weights and `hl.load_model` restores it. `hf-longssm extend` is the command.
"""

from ..extension import LengthExtension, get_extension, install_extension, remove_extension, save_extension
from .delta_scale import delta_scale
from .long_mamba import long_mamba
from .mamba_extend import mamba_extend


__all__ = [
    "LengthExtension",
    "delta_scale",
    "get_extension",
    "install_extension",
    "long_mamba",
    "mamba_extend",
    "remove_extension",
    "save_extension",
]
