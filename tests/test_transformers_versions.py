"""The transformers releases hf_longssm works with: a clear error below the minimum, a warning past the newest tested
minor, and no deprecation warning from hf_longssm's own calls on the installed release (CI runs this file on the
oldest, the pinned and the newest release)."""

import subprocess
import sys
import warnings

import pytest
import torch
from datasets import Dataset

import hf_longssm as hl
from hf_longssm import evaluation
from hf_longssm.modeling import cache_argument
from hf_longssm.modeling.compat import MINIMUM_TRANSFORMERS, NEWEST_TESTED_TRANSFORMERS, check_transformers_version
from tests.utils import MODEL_TYPES, enable_checkpointing, tiny_model


def test_a_release_below_the_minimum_fails_at_import_with_what_to_install():
    code = "import transformers; transformers.__version__ = '5.20.2'; import hf_longssm"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"ImportError: hf_longssm needs transformers>={MINIMUM_TRANSFORMERS}" in result.stderr
    assert "transformers 5.20.2 is installed" in result.stderr and "pip install -U" in result.stderr


@pytest.mark.parametrize("version", ["5.26.0", "6.0.0", f"{NEWEST_TESTED_TRANSFORMERS}.0.dev0"])
def test_an_untested_newer_release_warns_naming_the_tested_range(version):
    with pytest.warns(UserWarning, match=f"tested with transformers {MINIMUM_TRANSFORMERS} to"):
        check_transformers_version(version)


@pytest.mark.parametrize("version", [MINIMUM_TRANSFORMERS, "5.23.0", f"{NEWEST_TESTED_TRANSFORMERS}.3"])
def test_a_tested_release_is_silent(version):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_transformers_version(version)


def deprecations(caught) -> list[str]:
    return [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning))
    ]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_the_core_calls_raise_no_deprecation_warning(model_type, tmp_path):
    """transformers 5.24+ deprecates `cache_params` and `gradient_checkpointing`: hf_longssm passes neither."""
    model = tiny_model(model_type)
    ids = torch.randint(1, 64, (2, 24))
    data = Dataset.from_dict({"input_ids": torch.randint(1, 64, (8, 96)).tolist()})
    args = hl.StatePassingConfig(
        output_dir=str(tmp_path), state_init="tbtt", segment_length=16, per_device_train_batch_size=2, max_steps=2,
        use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, bf16=True, eval_max_length=32,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, state = hl.forward_with_state(model, ids[:, :12])
        out, state = hl.forward_with_state(model, ids[:, 12:], state)
        out.logits.sum().backward()
        model.eval()
        with torch.no_grad():
            model.generate(ids[:, -1:], max_new_tokens=3, do_sample=False, pad_token_id=0,
                           **{cache_argument(model): state.to_cache()})  # fmt: skip
            evaluation.position_perplexity(model, ids, segment_length=8)
        model.train()
        enable_checkpointing(model)
        trainer = hl.StatePassingTrainer(
            model=model, args=args, train_dataset=data, eval_dataset=data.select(range(2))
        )
        trainer.train()
        trainer.evaluate()
    assert deprecations(caught) == []


def test_hf_longssms_peft_calls_raise_no_deprecation_warning(tmp_path):
    """peft 0.21 reads `is_gradient_checkpointing`, deprecated from transformers 5.24: not passed on to the user."""
    from peft import LoraConfig

    data = Dataset.from_dict({"input_ids": torch.randint(1, 64, (8, 96)).tolist()})
    args = hl.StatePassingConfig(
        output_dir=str(tmp_path), segment_length=16, per_device_train_batch_size=2, max_steps=1, use_cpu=True,
        report_to=[], save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_model("mamba2").save_pretrained(tmp_path / "base")
        model = hl.load_model(tmp_path / "base")
        trainer = hl.StatePassingTrainer(model=model, args=args, train_dataset=data, peft_config=LoraConfig(r=4))
        trainer.train()
        trainer.save_model()
        hl.load_model(tmp_path)
    assert deprecations(caught) == []
