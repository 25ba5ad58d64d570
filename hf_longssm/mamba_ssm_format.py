"""mamba_ssm's checkpoint format (the papers' checkpoints) read into transformers' Mamba classes, or refused.

`state-spaces/mamba2-*` and the `state-spaces/mamba-*` repositories without `-hf` hold mamba_ssm's
`MambaLMHeadModel`: a `config.json` of `mamba_ssm.models.config_mamba.MambaConfig` (`d_model`, `n_layer`,
`vocab_size`, `ssm_cfg`, ...; no `model_type`) and weights in `pytorch_model.bin`. This module turns that config into
a transformers `MambaConfig` / `Mamba2Config` and renames the weights; what those classes cannot compute is refused.

Sources of the defaults below (state-spaces/mamba): `mamba_ssm/models/config_mamba.py` (config keys),
`mamba_ssm/models/mixer_seq_simple.py` (vocab padding, norm eps 1e-5, tied head, block order),
`mamba_ssm/modules/mamba_simple.py` (Mamba-1 mixer), `mamba_ssm/modules/mamba2.py` (Mamba-2 mixer).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import Mamba2Config, MambaConfig, PreTrainedConfig


# `mamba_ssm.models.config_mamba.MambaConfig` field defaults (keys a config.json may leave out).
MODEL_DEFAULTS: dict[str, Any] = {
    "d_model": 2560,
    "d_intermediate": 0,
    "n_layer": 64,
    "vocab_size": 50277,
    "ssm_cfg": {},
    "attn_layer_idx": [],
    "attn_cfg": {},
    "rms_norm": True,
    "residual_in_fp32": True,
    "fused_add_norm": True,
    "pad_vocab_size_multiple": 8,
    "tie_embeddings": True,
}
# `MixerModel` / `create_block`: the norm epsilon is not a config key.
NORM_EPS = 1e-5
# `mamba_simple.Mamba.__init__` defaults ("Mamba1", the default `ssm_cfg.layer`).
MAMBA1_DEFAULTS: dict[str, Any] = {
    "d_state": 16,
    "d_conv": 4,
    "expand": 2,
    "dt_rank": "auto",  # ceil(d_model / 16)
    "dt_min": 0.001,
    "dt_max": 0.1,
    "dt_init": "random",
    "dt_scale": 1.0,
    "dt_init_floor": 1e-4,
    "conv_bias": True,
    "bias": False,
}
# `mamba2.Mamba2.__init__` defaults.
MAMBA2_DEFAULTS: dict[str, Any] = {
    "d_state": 128,
    "d_conv": 4,
    "conv_init": None,
    "expand": 2,
    "headdim": 64,
    "d_ssm": None,
    "ngroups": 1,
    "A_init_range": (1, 16),
    "D_has_hdim": False,
    "rmsnorm": True,
    "norm_before_gate": False,
    "dt_min": 0.001,
    "dt_max": 0.1,
    "dt_init_floor": 1e-4,
    "dt_limit": (0.0, float("inf")),
    "bias": False,
    "conv_bias": True,
    "chunk_size": 256,
}
# Module arguments that choose kernels or sharding, not the maths: accepted and ignored.
RUNTIME_KEYS = {"use_fast_path", "use_mem_eff_path", "layer_idx", "process_group", "sequence_parallel"}
# The GPT-NeoX-20B tokenizer of these checkpoints: `<|endoftext|>` (id 0) is BOS, EOS and pad, as in the `-hf` repos.
NEOX_SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0}
CONVERT_HINT = "transformers' Mamba classes cannot represent this checkpoint, so hf_longssm cannot load it"


def is_mamba_ssm_config(config: dict) -> bool:
    """Whether a `config.json` (as a dict) is mamba_ssm's: `d_model` and `n_layer`, and no `model_type`."""
    return "model_type" not in config and "d_model" in config and "n_layer" in config


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    """`vocab_size` rounded up to a multiple of `multiple` (`MambaLMHeadModel.__init__`)."""
    return vocab_size + (-vocab_size) % multiple


def _refuse(problems: list[str]) -> None:
    if problems:
        raise ValueError(f"{CONVERT_HINT}: " + "; ".join(problems) + ".")


def _integer(name: str, value: Any, problems: list[str]) -> int:
    if float(value) != int(value):
        problems.append(f"{name}={value} is not an integer (transformers' configs take an integer {name})")
    return int(value)


def to_transformers_config(config: dict) -> MambaConfig | Mamba2Config:
    """The transformers config of a mamba_ssm `config.json`, mamba_ssm's defaults filling what it leaves out.

    Args:
        config (`dict`): the parsed `config.json` of a mamba_ssm checkpoint (`is_mamba_ssm_config(config)`).

    Returns:
        `MambaConfig` (`ssm_cfg.layer` "Mamba1" or absent) or `Mamba2Config` ("Mamba2"), with the vocabulary
        padded to `pad_vocab_size_multiple`, `tie_word_embeddings` from `tie_embeddings`, norm eps 1e-5 and the
        GPT-NeoX special ids (0).

    Raises:
        ValueError: for what transformers' classes cannot compute, each reason named: attention layers
            (`attn_layer_idx`), an MLP after each mixer (`d_intermediate > 0`), Mamba-3 or another `ssm_cfg.layer`,
            LayerNorm (`rms_norm: false`), Mamba-2 without the gated RMSNorm or with it before the gate, a partial
            SSM (`d_ssm`), `D_has_hdim`, non-integer sizes, and keys mamba_ssm itself would not accept.
    """
    problems: list[str] = []
    unknown = sorted(set(config) - set(MODEL_DEFAULTS))
    if unknown:
        problems.append(f"config.json has keys mamba_ssm's MambaConfig does not define: {unknown}")
    cfg = MODEL_DEFAULTS | config
    ssm_cfg = dict(cfg["ssm_cfg"] or {})
    layer = ssm_cfg.pop("layer", "Mamba1")
    if cfg["attn_layer_idx"]:
        problems.append(f"attention layers at attn_layer_idx={list(cfg['attn_layer_idx'])} (a hybrid model)")
    if cfg["d_intermediate"]:
        problems.append(f"d_intermediate={cfg['d_intermediate']} (a gated MLP after each mixer)")
    if not cfg["rms_norm"]:
        problems.append("rms_norm=false (LayerNorm; transformers' Mamba blocks use RMSNorm)")
    if layer not in ("Mamba1", "Mamba2"):
        problems.append(f"ssm_cfg.layer={layer!r} (transformers has Mamba-1 and Mamba-2 mixers, no {layer})")
        _refuse(problems)

    defaults = MAMBA1_DEFAULTS if layer == "Mamba1" else MAMBA2_DEFAULTS
    unknown = sorted(set(ssm_cfg) - set(defaults) - RUNTIME_KEYS)
    if unknown:
        problems.append(f"ssm_cfg has keys mamba_ssm's {layer} module does not take: {unknown}")
    mixer = defaults | {k: v for k, v in ssm_cfg.items() if k not in RUNTIME_KEYS}
    d_model = _integer("d_model", cfg["d_model"], problems)
    expand = _integer("expand", mixer["expand"], problems)
    common = dict(
        hidden_size=d_model,
        num_hidden_layers=int(cfg["n_layer"]),
        vocab_size=padded_vocab_size(int(cfg["vocab_size"]), int(cfg["pad_vocab_size_multiple"])),
        state_size=int(mixer["d_state"]),
        conv_kernel=int(mixer["d_conv"]),
        expand=expand,
        use_bias=bool(mixer["bias"]),
        use_conv_bias=bool(mixer["conv_bias"]),
        time_step_min=float(mixer["dt_min"]),
        time_step_max=float(mixer["dt_max"]),
        time_step_floor=float(mixer["dt_init_floor"]),
        layer_norm_epsilon=NORM_EPS,
        residual_in_fp32=bool(cfg["residual_in_fp32"]),
        tie_word_embeddings=bool(cfg["tie_embeddings"]),
        **NEOX_SPECIAL_IDS,
    )
    if layer == "Mamba1":
        _refuse(problems)
        dt_rank = mixer["dt_rank"]
        return MambaConfig(
            **common,
            time_step_rank=math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank),
            time_step_init_scheme=mixer["dt_init"],
            time_step_scale=float(mixer["dt_scale"]),
        )

    d_inner = expand * d_model
    if mixer["d_ssm"] is not None and int(mixer["d_ssm"]) != d_inner:
        problems.append(f"d_ssm={mixer['d_ssm']} < expand * d_model = {d_inner} (part of each mixer is a gated MLP)")
    if mixer["D_has_hdim"]:
        problems.append("D_has_hdim=true (transformers' Mamba-2 has one D per head)")
    if not mixer["rmsnorm"]:
        problems.append("rmsnorm=false (transformers' Mamba-2 always applies the gated RMSNorm)")
    if mixer["norm_before_gate"]:
        problems.append("norm_before_gate=true (transformers' MambaRMSNormGated gates before normalising)")
    headdim, ngroups = int(mixer["headdim"]), int(mixer["ngroups"])
    if d_inner % headdim or d_inner % ngroups:
        problems.append(f"expand * d_model = {d_inner} is not a multiple of headdim={headdim} and ngroups={ngroups}")
    _refuse(problems)
    return Mamba2Config(
        **common,
        num_heads=d_inner // headdim,
        head_dim=headdim,
        n_groups=ngroups,
        chunk_size=int(mixer["chunk_size"]),
        time_step_limit=tuple(float(x) for x in mixer["dt_limit"]),
    )


def to_transformers_state_dict(state_dict: dict[str, torch.Tensor], config: PreTrainedConfig) -> dict:
    """mamba_ssm's weight names as transformers' (`backbone.embedding.weight` -> `backbone.embeddings.weight`).

    The mixers, the block norms (`backbone.layers.{i}.norm.weight`) and `backbone.norm_f.weight` have the same names
    in both. With tied embeddings `lm_head.weight` is dropped (transformers ties it back); it must then equal the
    embedding, as in every checkpoint `MambaLMHeadModel.save_pretrained` writes.
    """
    out = {("backbone.embeddings.weight" if k == "backbone.embedding.weight" else k): v for k, v in state_dict.items()}
    if config.tie_word_embeddings and "lm_head.weight" in out:
        head, embedding = out.pop("lm_head.weight"), out.get("backbone.embeddings.weight")
        if embedding is None or head.shape != embedding.shape or not torch.equal(head, embedding):
            raise ValueError(
                "config.json says tie_embeddings=true but lm_head.weight differs from backbone.embedding.weight: "
                "the checkpoint is inconsistent."
            )
    return out


def check_state_dict(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> None:
    """Raise `ValueError` naming every missing, unexpected and wrongly shaped weight (`expected`: name -> shape)."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k])}"
        for k in set(state_dict) & set(expected)
        if tuple(state_dict[k].shape) != tuple(expected[k])
    )
    problems = [
        f"{label} {names}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
        if names
    ]
    if problems:
        raise ValueError("The converted mamba_ssm weights do not fit the transformers model: " + "; ".join(problems))
