"""Model cards parse and say what was done; a push sends the expected files (no network); tables name their metric."""

from pathlib import Path

import pytest
import transformers
from huggingface_hub import HfApi, ModelCard

from hf_longssm.hub import push_folder_to_hub, render_model_card, results_table


ROOT = Path(__file__).resolve().parents[1]
RESULTS = [{"start": 0, "end": 32, "perplexity": 5.1}, {"start": 32, "end": 64, "perplexity": 5.0}]


def card(**overrides) -> ModelCard:
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
        results=RESULTS,
        table=results_table({"base": RESULTS, "sp": RESULTS}),
        plot="perplexity_by_position.png",
        license="apache-2.0",
    )
    kwargs.update(overrides)
    return render_model_card(**kwargs)


def test_card_front_matter_parses_with_huggingface_hub(tmp_path):
    path = tmp_path / "README.md"
    card().save(path)
    data = ModelCard.load(path).data.to_dict()
    assert data["base_model"] == "state-spaces/mamba2-130m" and data["library_name"] == "transformers"
    assert {"hf_longssm", "state-passing", "mamba2"} <= set(data["tags"])
    assert data["pipeline_tag"] == "text-generation" and data["license"] == "apache-2.0"
    metrics = data["model-index"][0]["results"][0]["metrics"]
    assert [m["value"] for m in metrics] == [5.1, 5.0]
    assert [m["name"] for m in metrics] == ["perplexity@[0,32)", "perplexity@[32,64)"]


def test_card_body_holds_the_table_the_quick_start_and_both_citations():
    text = card().text
    assert "| [32, 64) | 5.000 | 5.000 |" in text
    assert 'from_pretrained("me/m")' in text
    assert "buitrago2025understanding" in text and "wang2024longssm" in text


def test_a_card_states_no_licence_unless_told_one(tmp_path):
    card(license=None).save(tmp_path / "README.md")
    assert "license" not in ModelCard.load(tmp_path / "README.md").data.to_dict()


def test_card_without_a_hub_base_model_names_the_architecture():
    text = card(base_model=None, model_type="falcon_mamba").text
    assert "m is a FalconMamba model post-trained with **State Passing**" in text


def test_card_lists_the_framework_versions():
    versions = card().text.split("## Framework versions")[1]
    assert f"- transformers {transformers.__version__}" in versions.splitlines()


def test_card_refuses_an_unknown_state_init():
    with pytest.raises(ValueError, match="Unknown state_init 'warm'"):
        card(state_init="warm")


def test_results_table_names_its_metric_in_the_header():
    table = results_table({"base": RESULTS, "sp": RESULTS})
    assert table.splitlines()[:2] == ["| positions (perplexity) | base | sp |", "|---|---|---|"]


def test_results_table_reads_the_metric_it_is_given():
    gains = [{"start": 0, "end": 32, "perplexity": 9.9, "bits_per_byte": -0.0049}]
    table = results_table({"sp": gains}, metric="bits_per_byte")
    assert table.splitlines() == ["| positions (bits_per_byte) | sp |", "|---|---|", "| [0, 32) | -0.005 |"]


def test_results_table_writes_values_with_fmt():
    table = results_table({"sp": RESULTS}, fmt="{:.1f}")
    assert table.splitlines()[2:] == ["| [0, 32) | 5.1 |", "| [32, 64) | 5.0 |"]


def test_results_table_needs_a_model():
    with pytest.raises(ValueError, match="at least one model"):
        results_table({})


def test_the_example_card_in_model_cards_parses():
    example = ModelCard.load(ROOT / "model_cards" / "example_mamba2-tiny-bytes-state-passing.md")
    data = example.data.to_dict()
    assert {"hf_longssm", "state-passing", "mamba2"} <= set(data["tags"])
    assert data["model-index"][0]["results"][0]["metrics"]
    assert "| state_init | `state_passing` |" in example.text


def test_push_sends_weights_tokenizer_card_results_and_plot(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
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


def test_a_card_for_an_fla_family_imports_fla_in_its_quick_start():
    """GLA's model code is fla's: the quick start imports fla first (the card itself renders without it)."""
    gla = card(model_type="gla", base_model="fla-hub/gla-1.3B-100B")
    fla_card, mamba_card = gla.text, card().text
    quick_start = fla_card.split("## Quick start")[1]
    assert quick_start.index("import fla") < quick_start.index("from_pretrained(")
    assert "gla" in gla.data.tags
    assert "a GLA model" in card(model_type="gla", base_model=None).text
    assert "import fla" not in mamba_card
