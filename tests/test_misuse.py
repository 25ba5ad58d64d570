"""Bad input and misuse of the trainer, the `hf-longssm` commands and the evaluation: one case per test, each
asserting the message (it says what to do) and that nothing already written changed."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from huggingface_hub import ModelCard

import hf_longssm as hl
from hf_longssm import evaluation
from hf_longssm.cli import eval as eval_cli
from hf_longssm.cli import train
from hf_longssm.training import checkpoints
from tests.utils import tiny_config, tiny_model


ROOT = Path(__file__).resolve().parents[1]


def documents(n=8, length=160, **columns):
    return Dataset.from_dict({"input_ids": torch.randint(1, 64, (n, length)).tolist(), **columns})


def config(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"), state_init="tbtt", segment_length=16, per_device_train_batch_size=2,
        max_steps=2, use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, dataloader_drop_last=True,
    )  # fmt: skip
    kwargs.update(overrides)
    return hl.StatePassingConfig(**kwargs)


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content hash: 'nothing written is lost' compares two of these."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# ----- training data -------------------------------------------------------------------------------------------
def test_padded_rows_are_refused(tmp_path):
    padded = documents(attention_mask=[[1] * 150 + [0] * 10] * 8)
    with pytest.raises(ValueError, match="attention_mask with zeros: padded rows.*drop the attention_mask column"):
        hl.StatePassingTrainer(model=tiny_model("mamba2"), args=config(tmp_path), train_dataset=padded)


def test_an_all_ones_attention_mask_is_accepted(tmp_path):
    unpadded = documents(attention_mask=[[1] * 160] * 8)
    hl.StatePassingTrainer(model=tiny_model("mamba2"), args=config(tmp_path), train_dataset=unpadded).train()


def test_labels_that_differ_from_input_ids_are_refused(tmp_path):
    data = documents()
    data = data.add_column("labels", [ids[1:] + [0] for ids in data["input_ids"]])
    with pytest.raises(ValueError, match="labels that differ from its input_ids.*drop the labels column"):
        hl.StatePassingTrainer(model=tiny_model("mamba2"), args=config(tmp_path), train_dataset=data)


def test_unshifted_labels_follow_transformers_convention(tmp_path):
    """A collator that gives `labels == input_ids` (no `shift_labels`) gets the loss transformers computes."""
    model = tiny_model("mamba2")
    trainer = hl.StatePassingTrainer(model=model, args=config(tmp_path, state_init="zero"))
    ids = torch.randint(1, 64, (2, 16))
    loss = trainer.compute_loss(model, {"input_ids": ids, "labels": ids})
    torch.testing.assert_close(loss, model(ids, labels=ids).loss)


def test_a_collator_without_segment_index_under_tbtt_is_refused(tmp_path):
    def plain_collator(features):
        ids = torch.stack([torch.as_tensor(f["input_ids"]) for f in features])
        return {"input_ids": ids, "labels": ids}

    trainer = hl.StatePassingTrainer(
        model=tiny_model("mamba2"), args=config(tmp_path), train_dataset=documents(), data_collator=plain_collator
    )
    with pytest.raises(ValueError, match="TBTT needs `segment_index` and `reset_mask`.*DataCollatorForStatePassing"):
        trainer.train()


def test_token_ids_outside_the_vocabulary_are_refused_before_training(tmp_path):
    too_big = Dataset.from_dict({"input_ids": [[5, 70, 3] * 60] * 8})  # the tiny model has 64 ids
    with pytest.raises(ValueError, match=r"Token ids must be in \[0, 64\).*another tokenizer"):
        hl.StatePassingTrainer(model=tiny_model("mamba2"), args=config(tmp_path), train_dataset=too_big)


def test_token_ids_outside_the_vocabulary_are_refused_by_forward_and_evaluation():
    model = tiny_model("mamba")
    with pytest.raises(ValueError, match=r"Token ids must be in \[0, 64\)"):
        hl.forward_with_state(model, torch.tensor([[1, 2, 99]]))
    with pytest.raises(ValueError, match=r"Token ids must be in \[0, 64\)"):
        evaluation.position_perplexity(model, torch.tensor([[1, -2, 3]]), segment_length=2)


def test_a_zero_length_segment_is_refused():
    with pytest.raises(ValueError, match="no tokens.*at least one token"):
        hl.forward_with_state(tiny_model("mamba2"), torch.zeros(2, 0, dtype=torch.long))


# ----- configuration ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["per_device_train_batch_size", "per_device_eval_batch_size"])
def test_a_batch_size_of_zero_is_refused(tmp_path, field):
    with pytest.raises(ValueError, match=f"{field} must be >= 1, got 0"):
        config(tmp_path, **{field: 0})


def test_max_steps_zero_is_refused(tmp_path):
    with pytest.raises(ValueError, match="max_steps=0 trains nothing"):
        config(tmp_path, max_steps=0)


def write_yaml(tmp_path, **keys) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": "x", "output_dir": str(tmp_path / "out"), **keys}))
    return path


@pytest.mark.parametrize(("key", "value"), [("max_steps", 2.5), ("segment_length", [16, 32]), ("save_steps", "ten")])
def test_a_wrong_type_in_a_yaml_field_is_refused(tmp_path, key, value):
    with pytest.raises(ValueError, match=f"recipe.yaml: {key}"):
        train.make_parser().parse_args_and_config(["--config", str(write_yaml(tmp_path, **{key: value}))])


def test_a_yaml_float_written_in_e_notation_is_a_float(tmp_path):
    # PyYAML reads `1e-3` as a string; the recipe parser converts it as the command line would.
    path = write_yaml(tmp_path)
    path.write_text(path.read_text() + "learning_rate: 1e-3\n")
    _, training_args, _ = train.make_parser().parse_args_and_config(["--config", str(path)])
    assert training_args.learning_rate == 1e-3


def test_data_files_given_as_one_string_is_a_list_of_one(tmp_path):
    script_args, _, _ = train.make_parser().parse_args_and_config(
        ["--config", str(write_yaml(tmp_path, data_files="notes.txt"))]
    )
    assert script_args.data_files == ["notes.txt"]


def test_a_missing_config_file_says_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="--config .*missing.yaml: file not found"):
        train.make_parser().parse_args_and_config(["--config", str(tmp_path / "missing.yaml")])


def test_missing_data_files_say_not_found(tmp_path):
    from hf_longssm.sources import load_documents

    with pytest.raises(FileNotFoundError, match="data_files not found"):
        load_documents(data_files=[str(tmp_path / "nope.txt")])


def test_text_mixed_with_jsonl_is_refused(tmp_path):
    from hf_longssm.sources import load_documents

    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.jsonl").write_text('{"text": "b"}\n')
    with pytest.raises(ValueError, match="data_files mix"):
        load_documents(data_files=[str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")])


def test_non_utf8_text_is_refused_naming_the_file(tmp_path):
    from hf_longssm.sources import load_documents

    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8 text.*iconv"):
        load_documents(data_files=[str(tmp_path / "latin1.txt")])


def test_a_missing_model_path_says_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        hl.load_model(str(tmp_path / "no-such-model"))


# ----- evaluation command ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", eval_cli.TASKS)
@pytest.mark.parametrize("flag", ["--num_sequences", "--segment_length"])
def test_eval_refuses_zero_counts_and_lengths(tmp_path, capsys, task, flag):
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(["--model", "m", "--task", task, flag, "0", "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"argument {flag}: must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_python_m_hf_longssm_cli_prints_the_usage():
    result = subprocess.run([sys.executable, "-m", "hf_longssm.cli"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "give a command: train, eval, extend, demo, convert" in result.stderr


# ----- runs: resume, finished runs, foreign folders -------------------------------------------------------------
def run_args(tmp_path, *extra) -> list[str]:
    (tmp_path / "doc.txt").write_text("to be or not to be, that is the question. " * 40)
    model_config = json.dumps(tiny_config("mamba2", vocab_size=257).to_diff_dict())
    return [
        "--model_config", model_config, "--tokenizer_name_or_path", "byte", "--data_files", str(tmp_path / "doc.txt"),
        "--output_dir", str(tmp_path / "run"), "--state_init", "tbtt", "--segment_length", "16",
        "--per_device_train_batch_size", "2", "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1",
        "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


@pytest.fixture()
def finished_run(tmp_path):
    train.main(run_args(tmp_path))
    return tmp_path / "run"


def test_rerunning_a_finished_run_trains_nothing_and_rewrites_nothing(tmp_path, finished_run):
    before = digest(finished_run)
    assert train.main(run_args(tmp_path, "--max_steps", "6")) is None
    assert digest(finished_run) == before


def test_overwrite_output_dir_starts_over(tmp_path, finished_run):
    trainer = train.main(run_args(tmp_path, "--max_steps", "2", "--overwrite_output_dir", "true"))
    assert trainer.state.global_step == 2
    assert sorted(p.name for p in finished_run.glob("checkpoint-*")) == ["checkpoint-2"]


def test_an_output_dir_holding_another_runs_model_is_refused(tmp_path):
    tiny_model("mamba2").save_pretrained(tmp_path / "run")
    before = digest(tmp_path / "run")
    with pytest.raises(ValueError, match="already holds a saved model.*overwrite_output_dir: true"):
        train.main(run_args(tmp_path))
    assert digest(tmp_path / "run") == before


def test_training_into_the_model_folder_is_refused(tmp_path, finished_run):
    args = run_args(tmp_path)
    i = args.index("--model_config")
    args[i : i + 2] = ["--model_name_or_path", str(finished_run)]
    (finished_run / "train_results.json").unlink()
    before = digest(finished_run)
    with pytest.raises(ValueError, match="is the model being trained from"):
        train.main(args)
    assert digest(finished_run) == before


def test_a_missing_resume_path_is_an_error_not_a_fresh_start(tmp_path):
    with pytest.raises(ValueError, match="Cannot resume from .*checkpoint-9: missing"):
        train.main(run_args(tmp_path, "--resume_from_checkpoint", str(tmp_path / "run" / "checkpoint-9")))
    assert not (tmp_path / "run" / "train_results.json").exists()


@pytest.mark.parametrize(
    ("flag", "value", "saved"),
    [
        ("--per_device_train_batch_size", "1", "2"),
        ("--segment_length", "8", "16"),
        ("--state_init", "zero", "'tbtt'"),
        ("--gradient_accumulation_steps", "2", "1"),  # before: segments 4-7 skipped, 8 started from 3's state
        ("--seed", "7", "42"),
        ("--dataloader_num_workers", "1", "0"),
        ("--train_sampling_strategy", "sequential", "'random'"),
    ],
)
def test_resuming_with_other_settings_names_saved_and_requested(tmp_path, finished_run, flag, value, saved):
    checkpoint = finished_run / "checkpoint-2"
    before = digest(finished_run)
    with pytest.raises(ValueError, match=f"{flag[2:]}: saved {saved}, requested"):
        train.main(run_args(tmp_path, flag, value, "--resume_from_checkpoint", str(checkpoint)))
    assert digest(finished_run) == before


def test_resuming_with_another_number_of_processes_is_refused(tmp_path, finished_run):
    checkpoint = finished_run / "checkpoint-2"
    marker = json.loads((checkpoint / checkpoints.COMPLETE_FILE).read_text())
    (checkpoint / checkpoints.COMPLETE_FILE).write_text(json.dumps({**marker, "world_size": 2}))
    (checkpoint / "hf_longssm_state_rank1.pt").write_bytes((checkpoint / "hf_longssm_state_rank0.pt").read_bytes())
    with pytest.raises(ValueError, match="world_size: saved 2, requested 1"):
        train.main(run_args(tmp_path, "--resume_from_checkpoint", str(checkpoint)))


@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_a_checkpoint_without_its_optimizer_or_schedule_is_not_resumed(tmp_path, finished_run, missing):
    """Before: the resume went on with a fresh optimizer and its losses drifted from the uninterrupted run's."""
    checkpoint = finished_run / "checkpoint-2"
    (checkpoint / missing).unlink()
    with pytest.raises(ValueError, match=f"Cannot resume .*checkpoint-2 exactly: it has no {missing}"):
        train.main(run_args(tmp_path, "--resume_from_checkpoint", str(checkpoint)))


def test_a_truncated_state_file_is_named(tmp_path, finished_run):
    state_file = finished_run / "checkpoint-2" / "hf_longssm_state_rank0.pt"
    state_file.write_bytes(state_file.read_bytes()[:100])
    with pytest.raises(ValueError, match="hf_longssm_state_rank0.pt is corrupted or truncated"):
        train.main(run_args(tmp_path, "--resume_from_checkpoint", str(state_file.parent)))


# ----- metrics and cards --------------------------------------------------------------------------------------------
def test_an_evaluation_never_relabels_training_state_norms(tmp_path):
    """Before: training norms buffered since the last log came out as `eval_state_norm/*` when evaluation logged."""
    trainer = hl.StatePassingTrainer(
        model=tiny_model("mamba2"),
        args=config(tmp_path, logging_steps=1, eval_max_length=64),
        train_dataset=documents(),
        eval_dataset=documents(4),
    )
    trainer.train()
    trainer._state_norms["train"] = (torch.tensor([1.0, 2.0]), 1)  # norms buffered between two training logs
    trainer.evaluate()
    eval_log = trainer.state.log_history[-1]
    assert "eval_loss" in eval_log and not any("state_norm" in k for k in eval_log)
    assert trainer._state_norms["train"][1] == 1  # still waiting for the next training log
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    assert train_logs[-1]["state_norm/layer_0"] > 0


def test_the_card_pushed_keeps_the_dataset_and_results_written_after_training(tmp_path):
    trainer = hl.StatePassingTrainer(model=tiny_model("mamba2"), args=config(tmp_path), train_dataset=documents())
    trainer.train()
    results = [{"start": 0, "end": 16, "perplexity": 12.5}]
    trainer.create_model_card(dataset_name="org/long-texts", results=results)
    trainer.create_model_card(model_name="out")  # what Trainer.push_to_hub calls before uploading
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.datasets == ["org/long-texts"]
    assert card.data.eval_results[0].metric_value == 12.5
