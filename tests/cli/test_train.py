"""`hf-longssm train`: recipes parse into the dataclasses, the command line overrides them, and a run ends with
saved weights, a card and train_results.json (resuming from the last checkpoint)."""

import json
import math
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from hf_longssm import StatePassingTrainer
from hf_longssm.cli import train
from hf_longssm.cli.arguments import ModelArguments, ScriptArguments
from hf_longssm.loading import load_model
from hf_longssm.tokenization import byte_tokenizer
from tests.utils import tiny_config


ROOT = Path(__file__).resolve().parents[2]
RECIPE_YAMLS = sorted((ROOT / "recipes").glob("*/*/config_*.yaml"))
DEMO_RECIPE = ROOT / "recipes" / "mamba2-tiny-bytes" / "sp" / "config_demo.yaml"


def test_there_are_recipes():
    names = {str(p.relative_to(ROOT / "recipes")) for p in RECIPE_YAMLS}
    assert {
        "mamba2-130m/sp/config_full.yaml",
        "mamba-130m/sp/config_full.yaml",
        "mamba2-130m/sp/config_lora.yaml",
        "mamba2-tiny-bytes/sp/config_demo.yaml",
    } <= names


@pytest.mark.parametrize("path", RECIPE_YAMLS, ids=[p.parent.parent.name + "/" + p.name for p in RECIPE_YAMLS])
def test_every_recipe_parses_into_the_dataclasses(path, tmp_path):
    raw = yaml.safe_load(path.read_text())
    # GPU recipes ask for bf16, which TrainingArguments refuses on a CPU machine: override it here, not the keys.
    cpu = ["--bf16", "false", "--use_cpu", "true"] if raw.get("bf16") else []
    script_args, training_args, model_args = train.make_parser().parse_args_and_config(
        ["--config", str(path), "--output_dir", str(tmp_path), *cpu]
    )
    assert training_args.state_init == raw["state_init"]
    assert training_args.segment_length == raw["segment_length"]
    assert script_args.dataset_name == raw.get("dataset_name")
    assert (model_args.model_name_or_path or model_args.model_config) is not None
    assert path.read_text().startswith("# Sized for:")


def test_the_command_line_overrides_the_yaml():
    _, training_args, _ = train.make_parser().parse_args_and_config(["--config", str(DEMO_RECIPE), "--max_steps", "7"])
    assert training_args.max_steps == 7 and training_args.segment_length == 32


def test_unknown_yaml_keys_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO_RECIPE.read_text() + "segmnet_length: 64\n")
    with pytest.raises(ValueError, match="unknown keys \\['segmnet_length'\\]"):
        train.make_parser().parse_args_and_config(["--config", str(bad)])


def test_config_without_a_file_is_refused():
    with pytest.raises(ValueError, match="--config needs a YAML file"):
        train.make_parser().parse_args_and_config(["--config"])


def test_model_config_builds_a_randomly_initialised_model():
    spec = tiny_config("mamba2", vocab_size=257).to_dict()
    model = train.model_from_args(ModelArguments(model_config=json.dumps(spec)))
    assert model.config.model_type == "mamba2" and model.config.hidden_size == 32 and model.config.vocab_size == 257


def test_the_tokenizer_defaults_to_the_one_saved_with_the_model(tmp_path):
    byte_tokenizer().save_pretrained(tmp_path)
    tokenizer = train.tokenizer_from_args(ScriptArguments(), ModelArguments(model_name_or_path=str(tmp_path)))
    assert tokenizer("ab", add_special_tokens=False)["input_ids"] == [98, 99]


def test_a_model_built_from_config_needs_a_tokenizer_name():
    with pytest.raises(ValueError, match="needs tokenizer_name_or_path"):
        train.tokenizer_from_args(ScriptArguments(), ModelArguments(model_config="{}"))


def tiny_run_args(tmp_path, max_steps: int) -> list[str]:
    doc = tmp_path / "play.txt"
    doc.write_text("Now is the winter of our discontent made glorious summer by this sun of York. " * 30)
    spec = tiny_config("mamba2", vocab_size=257).to_dict()
    return [
        "--model_config",
        json.dumps(spec),
        "--tokenizer_name_or_path",
        "byte",
        "--data_files",
        str(doc),
        "--state_init",
        "state_passing",
        "--segment_length",
        "16",
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        str(max_steps),
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
        "--output_dir",
        str(tmp_path / "run"),
    ]


def test_a_run_saves_the_model_the_card_and_train_results(tmp_path):
    trainer = train.main(tiny_run_args(tmp_path, max_steps=2))
    out = tmp_path / "run"
    assert trainer.state.global_step == 2
    assert math.isfinite(json.loads((out / "train_results.json").read_text())["train_loss"])
    assert load_model(str(out)).config.model_type == "mamba2"
    assert AutoTokenizer.from_pretrained(out)("ab", add_special_tokens=False)["input_ids"] == [98, 99]
    assert "| state_init | `state_passing` |" in (out / "README.md").read_text()


def test_a_run_resumes_from_the_last_checkpoint_in_output_dir(tmp_path, monkeypatch):
    train.main(tiny_run_args(tmp_path, max_steps=2))
    (tmp_path / "run" / "train_results.json").unlink()  # as if killed after its last checkpoint
    resumed_from = []
    original = StatePassingTrainer.train

    def spy(self, resume_from_checkpoint=None, **kwargs):
        resumed_from.append(resume_from_checkpoint)
        return original(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(StatePassingTrainer, "train", spy)
    trainer = train.main(tiny_run_args(tmp_path, max_steps=3))
    assert resumed_from == [str(tmp_path / "run" / "checkpoint-2")]
    assert trainer.state.global_step == 3


@pytest.mark.parametrize("model_type", ["granitemoehybrid", "falcon_h1", "qwen3_5_text", "lfm2"])
def test_a_hybrid_post_trains_and_evaluates_from_the_command_line(tmp_path, model_type):
    from hf_longssm.cli.eval import main as eval_main
    from tests.utils import tiny_hybrid_config

    args = tiny_run_args(tmp_path, max_steps=2)
    spec = tiny_hybrid_config(model_type, vocab_size=257).to_dict()
    args[args.index("--model_config") + 1] = json.dumps(spec)
    trainer = train.main([*args, "--state_init", "tbtt", "--attention_state", "full"])
    out = tmp_path / "run"
    assert trainer.intervention.carried.num_keys == 2 * 16  # every key of the two segments
    assert load_model(str(out)).config.model_type == model_type
    doc = tmp_path / "play.txt"
    results = {}
    for policy in ("full", "window"):
        eval_args = ["--model", str(out), "--task", "position_ppl", "--data", str(doc), "--length", "300",
                     "--segment_length", "64", "--attention_state", policy]  # fmt: skip
        payload = json.loads(eval_main([*eval_args, "--output_dir", str(tmp_path / policy)]).read_text())
        results[policy] = payload["results"]
        assert payload["command"].endswith(f"--attention_state {policy} --output_dir {tmp_path / policy}")
    assert results["full"] != results["window"]  # the policy reached the evaluation
    with pytest.raises(SystemExit):  # a task that would ignore it refuses it
        eval_main(["--model", str(out), "--task", "effrem", "--data", str(doc), "--attention_state", "full"])
