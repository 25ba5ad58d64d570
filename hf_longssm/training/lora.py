"""LoRA for Mamba-family models: peft has no default target modules for them, hf_longssm's families name theirs."""

from __future__ import annotations

from transformers.utils import logging

from ..modeling import get_architecture
from ..modeling.compat import peft_without_deprecation_warnings


logger = logging.get_logger(__name__)


def apply_default_lora_targets(model, peft_config):
    """Wrap `model` with LoRA, using hf_longssm's per-architecture targets when `peft_config` names none."""
    from peft import get_peft_model

    if getattr(peft_config, "target_modules", None) is None:
        peft_config.target_modules = list(get_architecture(model).lora_target_modules)
    targets = set(peft_config.target_modules) if not isinstance(peft_config.target_modules, str) else None
    if targets is not None:
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = sorted(targets - present)
        if missing:
            logger.warning(f"LoRA target_modules {missing} match no module of this model; present: {sorted(present)}.")
    with peft_without_deprecation_warnings():
        return get_peft_model(model, peft_config)
