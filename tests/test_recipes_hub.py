"""Recipes parse into the dataclasses; model cards parse; a push sends the expected files (no network)."""

from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from hf_longssm import StatePassingConfig
from hf_longssm.hub import push_folder_to_hub, render_model_card, results_table
from hf_longssm.scripts import ModelArguments, RecipeParser, ScriptArguments


ROOT = Path(__file__).resolve().parents[1]
RECIPE_YAMLS = sorted((ROOT / "recipes").glob("*/*/config_*.yaml"))


def parser():
    return RecipeParser((ScriptArguments, StatePassingConfig, ModelArguments))


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
    script_args, training_args, model_args = parser().parse_args_and_config(
        ["--config", str(path), "--output_dir", str(tmp_path), *cpu]
    )
    assert training_args.state_init == raw["state_init"]
    assert training_args.segment_length == raw["segment_length"]
    assert (model_args.model_name_or_path or model_args.model_config) is not None
    assert path.read_text().startswith("# Sized for:")


def test_command_line_overrides_yaml_and_unknown_keys_are_refused(tmp_path):
    path = ROOT / "recipes" / "mamba2-tiny-bytes" / "sp" / "config_demo.yaml"
    _, training_args, _ = parser().parse_args_and_config(["--config", str(path), "--max_steps", "7"])
    assert training_args.max_steps == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text() + "segmnet_length: 64\n")
    with pytest.raises(ValueError, match="unknown keys \\['segmnet_length'\\]"):
        parser().parse_args_and_config(["--config", str(bad)])


def card(**overrides):
    results = [{"start": 0, "end": 32, "perplexity": 5.1}, {"start": 32, "end": 64, "perplexity": 5.0}]
    kwargs = dict(
        model_name="m",
        model_type="mamba2",
        state_init="state_passing",
        segment_length=2048,
        steps=500,
        tokens_seen=1_000_000,
        batch="8 × 1",
        learning_rate=1e-4,
        repo_id="me/m",
        base_model="state-spaces/mamba2-130m",
        datasets=["monology/pile-uncopyrighted"],
        results=results,
        table=results_table({"base": results, "sp": results}),
        plot="perplexity_by_position.png",
    )
    kwargs.update(overrides)
    return render_model_card(**kwargs)


def test_model_card_parses_with_huggingface_hub(tmp_path):
    path = tmp_path / "README.md"
    card().save(path)
    loaded = ModelCard.load(path)
    data = loaded.data.to_dict()
    assert data["base_model"] == "state-spaces/mamba2-130m" and data["library_name"] == "transformers"
    assert {"hf_longssm", "state-passing", "mamba2"} <= set(data["tags"])
    assert data["pipeline_tag"] == "text-generation" and data["license"] == "apache-2.0"
    metrics = data["model-index"][0]["results"][0]["metrics"]
    assert [m["value"] for m in metrics] == [5.1, 5.0]
    text = loaded.text
    assert "| [32, 64) | 5.000 | 5.000 |" in text and "buitrago2025understanding" in text and "wang2024longssm" in text
    assert 'from_pretrained("me/m")' in text and "transformers" in text.split("Framework versions")[1]


def test_push_sends_weights_tokenizer_card_results_and_plot(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    folder = tmp_path / "model"
    folder.mkdir()
    for name in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "README.md",
        "results.json",
        "perplexity_by_position.png",
        "training_args.bin",
    ]:
        (folder / name).write_bytes(b"x")
    card().save(folder / "README.md")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"x")
    sent = {}

    def create_repo(self, repo_id, **kwargs):
        sent["repo"] = repo_id

    def create_commit(self, repo_id, operations, **kwargs):  # the network boundary of upload_folder
        sent["files"] = sorted(op.path_in_repo for op in operations)
        return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1", "oid": "1"})()

    def validate_yaml(self, content, **kwargs):  # the Hub checks the card's front matter server-side
        sent["card"] = ModelCard(content).data.to_dict()

    def preupload_lfs_files(self, repo_id, additions, **kwargs):  # would upload file contents
        sent["uploaded"] = sorted(op.path_in_repo for op in additions)

    monkeypatch.setattr("huggingface_hub.hf_api.is_xet_available", lambda: False)
    monkeypatch.setattr(HfApi, "preupload_lfs_files", preupload_lfs_files)
    monkeypatch.setattr(HfApi, "_validate_yaml", validate_yaml)
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    url = push_folder_to_hub(folder, "me/tiny-sp", token="hf_fake")
    assert sent["repo"] == "me/tiny-sp" and url.endswith("/commit/1")
    assert "hf_longssm" in sent["card"]["tags"]
    assert sent["files"] == [
        "README.md",
        "config.json",
        "model.safetensors",
        "perplexity_by_position.png",
        "results.json",
        "tokenizer.json",
    ]
