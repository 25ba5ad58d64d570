"""Tiny random models built in the tests (no Hub)."""

from __future__ import annotations

import torch
from transformers import (
    FalconMambaConfig,
    FalconMambaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
)


MODEL_TYPES = ["mamba", "falcon_mamba", "mamba2"]


def tiny_config(model_type: str, vocab_size: int = 64, num_hidden_layers: int = 2, **overrides):
    common = dict(
        vocab_size=vocab_size,
        num_hidden_layers=num_hidden_layers,
        conv_kernel=4,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    if model_type == "mamba2":
        # n_groups > 1 and a chunk_size that test lengths are not multiples of.
        cfg = dict(hidden_size=32, state_size=8, num_heads=8, head_dim=8, n_groups=2, chunk_size=16, expand=2)
        cfg.update(common, **overrides)
        return Mamba2Config(**cfg)
    cfg = dict(hidden_size=16, state_size=8, intermediate_size=32, time_step_rank=4)
    cfg.update(common, **overrides)
    return (MambaConfig if model_type == "mamba" else FalconMambaConfig)(**cfg)


def tiny_model(model_type: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cls = {"mamba": MambaForCausalLM, "falcon_mamba": FalconMambaForCausalLM, "mamba2": Mamba2ForCausalLM}
    model = cls[model_type](tiny_config(model_type, **overrides))
    # Random (not default) A, D and dt so that decays differ per channel/head and states carry real information.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log") or name.endswith(".D") or name.endswith("dt_bias"):
                p.add_(0.3 * torch.randn_like(p))
    return model.float()


def split_points(length: int, sizes: list[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for size in sizes:
        out.append((start, start + size))
        start += size
    assert start == length
    return out


def run_segments(model, ids, sizes, state=None, **kwargs):
    """Logits of `ids` fed in segments of `sizes` with the state carried, and the final state."""
    import hf_longssm as hl

    logits = []
    for start, end in split_points(ids.shape[1], sizes):
        out, state = hl.forward_with_state(model, ids[:, start:end], state, **kwargs)
        logits.append(out.logits)
    return torch.cat(logits, dim=1), state


def enable_checkpointing(model, **checkpoint_kwargs) -> None:
    """Activation (gradient) checkpointing under the name the installed transformers does not deprecate;
    `checkpoint_kwargs` go to `torch.utils.checkpoint` (`use_reentrant=...`)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs or None)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs or None)


# Hybrids (Mamba-2 layers with attention layers): tiny configs with a layer of each kind, segments not multiples of the
# chunk size, grouped-query attention.
HYBRID_TYPES = [
    "granitemoehybrid", "bamba", "nemotron_h", "zamba2", "falcon_h1", "jamba", "qwen3_next", "qwen3_5_text",
    "qwen3_5_moe_text", "olmo_hybrid", "lfm2", "lfm2_moe",
]  # fmt: skip
GATED_DELTANET_TYPES = ["qwen3_next", "qwen3_5_text", "qwen3_5_moe_text", "olmo_hybrid"]
# Gated DeltaNet hybrids: linear-attention layers (grouped keys: 2 key heads for 4 value heads) and full attention.
GATED_DELTANET = dict(
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
    linear_conv_kernel_dim=4, layer_types=["linear_attention", "full_attention", "linear_attention"],
)  # fmt: skip


def tiny_hybrid_config(model_type: str, **overrides):
    from transformers import (
        BambaConfig,
        FalconH1Config,
        GraniteMoeHybridConfig,
        JambaConfig,
        NemotronHConfig,
        Zamba2Config,
    )

    common = dict(
        vocab_size=64, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        pad_token_id=0, bos_token_id=0, eos_token_id=0, attn_implementation="sdpa",
    )  # fmt: skip
    mamba = dict(mamba_n_heads=8, mamba_d_head=8, mamba_d_state=8, mamba_n_groups=2, mamba_chunk_size=16)
    if model_type == "bamba":  # RoPE attention
        cfg = dict(num_hidden_layers=3, mamba_expand=2, attn_layer_indices=[1], **mamba)
        return BambaConfig(**{**common, **cfg, **overrides})
    if model_type == "granitemoehybrid":  # mixture of experts after every layer; NoPE by default, RoPE here
        cfg = dict(
            num_hidden_layers=3, mamba_expand=2, layer_types=["mamba", "attention", "mamba"], num_local_experts=2,
            num_experts_per_tok=1, shared_intermediate_size=32, position_embedding_type="rope", **mamba,
        )  # fmt: skip
        return GraniteMoeHybridConfig(**{**common, **cfg, **overrides})
    if model_type == "nemotron_h":  # Mamba, attention (no positions), Mamba, MLP
        cfg = dict(
            num_hidden_layers=4, head_dim=8, mamba_num_heads=8, mamba_head_dim=8, ssm_state_size=8, n_groups=2,
            chunk_size=16, hybrid_override_pattern="M*M-",
        )  # fmt: skip
        return NemotronHConfig(**{**common, **cfg, **overrides})
    if model_type == "jamba":  # Mamba-1 layers, attention at layer 1, experts on every other layer
        cfg = dict(
            num_hidden_layers=3, attn_layer_period=3, attn_layer_offset=1, expert_layer_period=2,
            expert_layer_offset=1, num_experts=2, num_experts_per_tok=1, mamba_d_state=8, mamba_d_conv=4,
            mamba_expand=2, mamba_dt_rank=4,
        )  # fmt: skip
        return JambaConfig(**{**common, **cfg, **overrides})
    if model_type == "falcon_h1":  # attention and Mamba-2 side by side in both layers, muP multipliers not 1
        cfg = dict(
            num_hidden_layers=2, head_dim=8, mamba_d_ssm=64, mamba_n_heads=8, mamba_d_head=8, mamba_d_state=8,
            mamba_n_groups=2, mamba_chunk_size=16, ssm_in_multiplier=0.7, ssm_multipliers=[0.8, 1.2, 0.9, 1.1, 1.3],
            attention_in_multiplier=0.9, embedding_multiplier=1.5,
        )  # fmt: skip
        return FalconH1Config(**{**common, **cfg, **overrides})
    if model_type == "zamba2":  # one shared attention block (LoRA adapters per use) at layers 1 and 3
        cfg = dict(
            num_hidden_layers=4, layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], n_mamba_heads=8,
            mamba_headdim=8, mamba_d_state=8, mamba_ngroups=2, chunk_size=16, mamba_expand=2, adapter_rank=4,
            num_mem_blocks=1, use_mem_rope=True,
        )  # fmt: skip
        return Zamba2Config(**{**common, **cfg, **overrides})
    # Two experts, both routed: top-1 routing makes a router's (and some decays') gradients vanish to float32 noise.
    if model_type == "qwen3_next":  # gated attention, experts on every layer
        from transformers import Qwen3NextConfig

        cfg = dict(
            num_hidden_layers=3, head_dim=8, num_experts=2, num_experts_per_tok=2, moe_intermediate_size=32,
            shared_expert_intermediate_size=32, **GATED_DELTANET,
        )  # fmt: skip
        return Qwen3NextConfig(**{**common, **cfg, **overrides})
    if model_type == "qwen3_5_text":
        from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig

        return Qwen3_5TextConfig(**{**common, "num_hidden_layers": 3, "head_dim": 8, **GATED_DELTANET, **overrides})
    if model_type == "qwen3_5_moe_text":  # experts on every layer
        from transformers.models.qwen3_5_moe.configuration_qwen3_5_moe import Qwen3_5MoeTextConfig

        cfg = dict(
            num_hidden_layers=3, head_dim=8, num_experts=2, num_experts_per_tok=2, moe_intermediate_size=32,
            shared_expert_intermediate_size=32, **GATED_DELTANET,
        )  # fmt: skip
        return Qwen3_5MoeTextConfig(**{**common, **cfg, **overrides})
    if model_type == "olmo_hybrid":  # negative eigenvalues allowed (beta up to 2)
        from transformers import OlmoHybridConfig

        cfg = dict(num_hidden_layers=3, linear_allow_neg_eigval=True, **GATED_DELTANET)
        return OlmoHybridConfig(**{**common, **cfg, **overrides})
    if model_type in ("lfm2", "lfm2_moe"):  # short-conv layers (window only) and attention; LFM2-MoE's experts
        from transformers import Lfm2Config, Lfm2MoeConfig

        cfg = dict(num_hidden_layers=3, layer_types=["conv", "full_attention", "conv"], conv_L_cache=3)
        if model_type == "lfm2_moe":
            moe = dict(num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, num_dense_layers=1)
            return Lfm2MoeConfig(**{**common, **cfg, **moe, **overrides})
        return Lfm2Config(**{**common, **cfg, **overrides})
    raise ValueError(model_type)


def tiny_hybrid(model_type: str, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_hybrid_config(model_type, **overrides))
    with torch.no_grad():  # random decays, as tiny_model: states carry real information
        for name, p in model.named_parameters():
            if model_type in GATED_DELTANET_TYPES and name.endswith("A_log"):
                # transformers draws A in [0.01, 16]: at 16 a head forgets its state within a token, and the
                # gradients through its decay vanish into float32 noise. Trained models keep long-memory heads.
                p.copy_(torch.empty_like(p).uniform_(0.05, 1.0).log())
            if name.endswith("A_log") or name.endswith(".D") or name.endswith("dt_bias"):
                p.add_(0.3 * torch.randn_like(p))
    return model.float()
