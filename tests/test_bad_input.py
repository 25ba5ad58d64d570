"""Bad input found by trying to break it as users would: each case gets a clear error that says what to do, or now
does what transformers' own path does (the cases of the "silently wrong results" issue)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

import hf_longssm as hl
from hf_longssm.cli import train
from hf_longssm.cli.eval import main as eval_main
from hf_longssm.cli.eval import short_names
from hf_longssm.loading import load_tokenizer
from hf_longssm.tokenization import byte_tokenizer
from tests.utils import tiny_config, tiny_model


ROOT = Path(__file__).resolve().parents[1]


# ----- models and tokenizers ---------------------------------------------------------------------------------------
def test_a_model_folder_without_a_tokenizer_says_so(tmp_path):
    """Before: transformers' fallback tokenizer encoded every string to [] (perplexity 1 from lm-eval's adapter)."""
    tiny_model("mamba2", vocab_size=257).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds no tokenizer.*tokenizer 'byte', the base model's Hub id"):
        load_tokenizer(str(tmp_path))
    from hf_longssm.evaluation.harness import LongSSMLM

    with pytest.raises(ValueError, match="holds no tokenizer"):
        LongSSMLM(str(tmp_path))


def test_hl_load_model_refuses_another_family_before_loading_weights(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not support model_type='gpt2'"):
        hl.load_model(str(tmp_path))


def test_eval_of_something_that_is_no_model_names_the_model_first(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(FileNotFoundError, match="notes has no config.json: not a saved model"):
        eval_main(["--model", str(tmp_path / "notes"), "--task", "passkey", "--output_dir", str(tmp_path / "out")])


def test_two_checkpoints_of_the_same_name_keep_a_column_each():
    names = short_names(["runA/checkpoint-500", "runB/checkpoint-500", "other"])
    assert names == {"runA/checkpoint-500": "runA/checkpoint-500", "runB/checkpoint-500": "runB/checkpoint-500",
                     "other": "other"}  # fmt: skip
    assert short_names(["a/x", "b/y"]) == {"a/x": "x", "b/y": "y"}


def test_eval_table_keeps_both_models_of_the_same_folder_name(tmp_path):
    for run in ("runA", "runB"):
        path = tmp_path / run / "checkpoint-5"
        tiny_model("mamba2", vocab_size=257, seed={"runA": 0, "runB": 1}[run]).save_pretrained(path)
        byte_tokenizer().save_pretrained(path)
    doc = tmp_path / "doc.txt"
    doc.write_text("To be, or not to be, that is the question. " * 20)
    out = tmp_path / "out"
    eval_main([
        "--model", str(tmp_path / "runA" / "checkpoint-5"), str(tmp_path / "runB" / "checkpoint-5"), "--task",
        "position_ppl", "--data", str(doc), "--length", "300", "--segment_length", "128", "--output_dir", str(out),
        "--no_plot",
    ])  # fmt: skip
    header = (out / "position_ppl.md").read_text().splitlines()[0]
    assert "runA/checkpoint-5" in header and "runB/checkpoint-5" in header


# ----- states and inputs -------------------------------------------------------------------------------------------
def test_a_state_saves_with_safetensors(tmp_path):
    model = tiny_model("mamba")
    _, state = hl.forward_with_state(model, torch.randint(1, 64, (2, 12)))
    save_file(state.permute([1, 0]).state_dict(), tmp_path / "state.safetensors")  # permuted rows: non-contiguous


def test_one_dimensional_input_ids_say_to_add_the_batch_dimension():
    with pytest.raises(ValueError, match=r"input_ids has shape \(12,\).*input_ids\[None\]"):
        hl.forward_with_state(tiny_model("mamba2"), torch.randint(1, 64, (12,)))


def test_a_mamba_state_is_refused_by_a_falcon_mamba_model_of_the_same_sizes():
    _, state = hl.forward_with_state(tiny_model("mamba"), torch.randint(1, 64, (1, 8)))
    with pytest.raises(ValueError, match="The state is a mamba model's, this model is falcon_mamba"):
        hl.forward_with_state(tiny_model("falcon_mamba"), torch.randint(1, 64, (1, 8)), state)


# ----- the trainer's data ------------------------------------------------------------------------------------------
def test_text_evaluation_documents_without_a_tokenizer_say_so(tmp_path):
    args = hl.StatePassingConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], segment_length=16)
    data = Dataset.from_dict({"input_ids": torch.randint(1, 64, (4, 100)).tolist()})
    with pytest.raises(ValueError, match="evaluation documents are text: pass the tokenizer"):
        hl.StatePassingTrainer(
            model=tiny_model("mamba2"), args=args, train_dataset=data, eval_dataset=Dataset.from_dict({"text": ["a"]})
        )
    with pytest.raises(ValueError, match=r"given as a dict \(\['a', 'b'\]\): give one dataset"):
        hl.StatePassingTrainer(model=tiny_model("mamba2"), args=args, train_dataset=data,
                               eval_dataset={"a": data, "b": data})  # fmt: skip


def test_empty_documents_are_reported(tmp_path, caplog):
    data = Dataset.from_dict({"text": [""] * 100})
    args = hl.StatePassingConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], segment_length=4)
    with caplog.at_level("WARNING"):
        hl.StatePassingTrainer(
            model=tiny_model("mamba2"), args=args, train_dataset=data, processing_class=byte_tokenizer()
        )
    assert "100 of 100 documents have no tokens" in caplog.text and "EOS tokens alone" in caplog.text


# ----- the command line --------------------------------------------------------------------------------------------
def recipe(tmp_path, save_strategy: str = "no", **overrides) -> Path:
    """A recipe whose `save_strategy` line is written bare (`save_strategy: no`, as users write it)."""
    (tmp_path / "doc.txt").write_text("to be or not to be, that is the question. " * 40)
    config = {
        "model_config": json.dumps(tiny_config("mamba2", vocab_size=257).to_diff_dict()),
        "tokenizer_name_or_path": "byte", "data_files": str(tmp_path / "doc.txt"), "output_dir": str(tmp_path / "run"),
        "segment_length": 16, "per_device_train_batch_size": 2, "max_steps": 2, "report_to": "none", "use_cpu": True,
        "disable_tqdm": True,
    }  # fmt: skip
    config.update(overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config) + f"save_strategy: {save_strategy}\n")
    return path


def test_yaml_no_for_save_strategy_and_config_with_equals_sign(tmp_path):
    """`save_strategy: no` is YAML's boolean false: read as the choice "no"; `--config=path` works."""
    trainer = train.main([f"--config={recipe(tmp_path)}"])
    assert trainer.state.global_step == 2 and not list((tmp_path / "run").glob("checkpoint-*"))


def test_a_yaml_boolean_where_a_choice_is_due_says_to_quote_it(tmp_path):
    with pytest.raises(ValueError, match="YAML read a boolean \\(True\\); quote the value"):
        train.main(["--config", str(recipe(tmp_path, save_strategy="yes"))])


@pytest.mark.parametrize("case", ["missing file", "bad yaml"])
def test_the_command_line_prints_the_error_without_a_traceback(tmp_path, case):
    path = tmp_path / ("missing.yaml" if case == "missing file" else "bad.yaml")
    if case == "bad yaml":
        path.write_text("max_steps: [1,\n")
    result = subprocess.run([sys.executable, "-m", "hf_longssm", "train", "--config", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "hf-longssm train: error:" in result.stderr
    assert ("file not found" if case == "missing file" else "is not valid YAML") in result.stderr


def test_a_finished_run_asked_for_more_steps_says_how_to_continue(tmp_path, caplog):
    train.main(["--config", str(recipe(tmp_path, save_strategy="steps", save_steps=2))])
    with caplog.at_level("WARNING"):
        assert (
            train.main(["--config", str(recipe(tmp_path, save_strategy="steps", save_steps=2, max_steps=4))]) is None
        )
    assert "To train it on to max_steps=4: resume_from_checkpoint:" in caplog.text and "checkpoint-2" in caplog.text
