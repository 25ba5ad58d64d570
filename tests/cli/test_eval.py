"""`hf-longssm eval`: results JSON (never overwritten), table, plots, every task, and where documents come from."""

import json

import pytest
import transformers
from datasets import Dataset, DatasetDict

from hf_longssm import sources
from hf_longssm.cli.eval import build_parser, load_eval_documents
from hf_longssm.cli.eval import main as eval_main
from hf_longssm.tokenization import byte_tokenizer
from tests.utils import tiny_model


@pytest.fixture()
def model_path(tmp_path) -> str:
    path = tmp_path / "tiny"
    tiny_model("mamba2", vocab_size=257).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture()
def play(tmp_path) -> str:
    doc = tmp_path / "play.txt"
    doc.write_text("All the world's a stage, and all the men and women merely players. " * 20)
    return str(doc)


def position_ppl_args(model_path: str, tmp_path, *extra: str) -> list[str]:
    docs = []
    for i in range(3):
        doc = tmp_path / f"doc{i}.txt"
        doc.write_text("To be, or not to be, that is the question. " * (20 + i))
        docs.append(str(doc))
    return [
        "--model",
        model_path,
        "--task",
        "position_ppl",
        "--data",
        *docs,
        "--length",
        "600",
        "--segment_length",
        "128",
        "--output_dir",
        str(tmp_path / "out"),
        *extra,
    ]


def test_results_json_records_command_versions_models_and_input_shape(model_path, tmp_path):
    args = position_ppl_args(model_path, tmp_path, "--no_plot")
    payload = json.loads(eval_main(args).read_text())
    assert payload["task"] == "position_ppl"
    assert payload["command"].startswith(f"hf-longssm eval --model {model_path} --task position_ppl")
    assert payload["versions"]["transformers"] == transformers.__version__
    assert payload["models"] == [model_path]
    assert payload["input_shape"] == [3, 600]
    assert len(payload["results"][model_path]["nll"]) == 599


def test_a_second_run_goes_to_numbered_files_and_keeps_the_first(model_path, tmp_path):
    args = position_ppl_args(model_path, tmp_path)
    first = eval_main(args)
    written = first.read_text()
    second = eval_main(args)
    out = tmp_path / "out"
    assert (first.name, second.name) == ("position_ppl.json", "position_ppl-1.json")
    assert first.read_text() == written
    assert (out / "position_ppl-1.png").is_file() and (out / "position_ppl-1.md").is_file()


def test_position_ppl_writes_a_plot_and_a_table_naming_perplexity(model_path, tmp_path):
    eval_main(position_ppl_args(model_path, tmp_path))
    out = tmp_path / "out"
    assert (out / "position_ppl.png").stat().st_size > 1000
    assert (out / "position_ppl.md").read_text().splitlines()[0] == "| positions (perplexity) | tiny |"


def test_documents_shorter_than_the_length_are_an_error_not_padded(model_path, tmp_path):
    args = position_ppl_args(model_path, tmp_path, "--no_plot", "--length", "5000")
    with pytest.raises(ValueError, match="No document has 5000 tokens"):
        eval_main(args)


def test_effrem_is_zero_when_both_contexts_start_at_the_same_token(model_path, play, tmp_path):
    args = ["--model", model_path, "--task", "effrem", "--data", play, "--length", "256", "--ts", "0", "16", "128"]
    payload = json.loads(eval_main([*args, "--output_dir", str(tmp_path / "o"), "--no_plot"]).read_text())
    effrem = payload["results"][model_path]
    assert effrem["T"] == 256 and sorted(effrem["effrem"]) == ["0", "128", "16"]
    assert effrem["effrem"]["0"] == pytest.approx(0.0, abs=1e-6)


def test_state_norms_are_recorded_at_every_segment_end(model_path, play, tmp_path):
    args = [
        "--model",
        model_path,
        "--task",
        "state_norms",
        "--data",
        play,
        "--length",
        "256",
        "--segment_length",
        "64",
    ]
    payload = json.loads(eval_main([*args, "--output_dir", str(tmp_path / "o"), "--no_plot"]).read_text())
    assert payload["results"][model_path]["positions"] == [64, 128, 192, 256]


def test_passkey_has_one_cell_per_length_and_depth(model_path, tmp_path):
    args = ["--model", model_path, "--task", "passkey", "--lengths", "200", "260", "--depths", "0", "1"]
    payload = json.loads(
        eval_main([*args, "--num_trials", "1", "--output_dir", str(tmp_path / "o"), "--no_plot"]).read_text()
    )
    cells = payload["results"][model_path]["cells"]
    assert sorted((c["length"], c["depth"]) for c in cells) == [(200, 0.0), (200, 1.0), (260, 0.0), (260, 1.0)]
    assert payload["input_shape"] is None


@pytest.mark.parametrize("task", ["passkey", "effrem", "state_norms"])
def test_every_task_draws_its_plot(model_path, play, tmp_path, task):
    extra = {
        "passkey": ["--lengths", "200", "--depths", "0.5", "--num_trials", "1"],
        "effrem": ["--data", play, "--length", "128", "--ts", "0", "16"],
        "state_norms": ["--data", play, "--length", "128", "--segment_length", "64"],
    }[task]
    eval_main(["--model", model_path, "--task", task, "--output_dir", str(tmp_path / "o"), *extra])
    assert (tmp_path / "o" / f"{task}.png").stat().st_size > 1000


def test_every_file_is_one_document_whatever_its_extension(tmp_path):
    text, rows = tmp_path / "a.txt", tmp_path / "b.json"
    text.write_text("first document")
    rows.write_text('{"text": "not parsed"}\n')
    documents = load_eval_documents([str(text), str(rows)])
    assert documents["text"] == ["first document", '{"text": "not parsed"}\n']


def test_names_that_are_not_all_files_are_refused(tmp_path, play):
    with pytest.raises(ValueError, match="local files or one dataset name; not files: \\['org/dataset'\\]"):
        load_eval_documents([play, "org/dataset"])


def test_default_data_is_the_held_out_split_of_the_offline_corpus(monkeypatch):
    books = DatasetDict(
        {"train": Dataset.from_dict({"text": ["seen"]}), "held_out": Dataset.from_dict({"text": ["new"]})}
    )
    fake = sources.OfflineCorpus(sources.OFFLINE_SHAKESPEARE, lambda: books)
    monkeypatch.setitem(sources.OFFLINE_CORPORA, sources.OFFLINE_SHAKESPEARE, fake)
    args = build_parser().parse_args(["--model", "m", "--task", "position_ppl"])
    assert args.data == ["hf_longssm/offline-shakespeare"] and args.split is None
    assert load_eval_documents(args.data, args.split)["text"] == ["new"]


def test_a_hub_dataset_is_streamed_from_its_test_split_by_default(monkeypatch):
    calls = []
    monkeypatch.setattr("datasets.load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or ["doc"])
    assert load_eval_documents(["org/long-texts"]) == ["doc"]
    assert calls == [(("org/long-texts", None), {"split": "test", "streaming": True})]


def test_position_ppl_buckets_start_at_the_training_context_from_the_card_with_bands(model_path, tmp_path):
    from pathlib import Path

    Path(model_path, "README.md").write_text("| setting | value |\n|---|---|\n| segment_length | 64 |\n")
    args = position_ppl_args(model_path, tmp_path, "--no_plot")
    for i, line in enumerate(["Now is the winter of our discontent. ", "Friends, Romans, countrymen! ", "O Romeo. "]):
        Path(tmp_path, f"doc{i}.txt").write_text(line * 40)  # different texts: the sequences disagree
    payload = json.loads(eval_main(args).read_text())
    assert payload["train_context"] == 64
    buckets = payload["results"][model_path]["buckets"]
    assert [(b["start"], b["end"]) for b in buckets[:3]] == [(0, 64), (64, 128), (128, 256)]
    for bucket in buckets:  # three sequences: a 95% band around every bucket's perplexity
        assert bucket["perplexity_low"] < bucket["perplexity"] < bucket["perplexity_high"]


def test_the_training_context_flag_wins_and_no_card_means_buckets_from_16(model_path, tmp_path):
    payload = json.loads(eval_main(position_ppl_args(model_path, tmp_path, "--no_plot")).read_text())
    assert payload["train_context"] is None
    assert payload["results"][model_path]["buckets"][0]["end"] == 16
    args = position_ppl_args(model_path, tmp_path, "--no_plot", "--train_context", "32")
    assert json.loads(eval_main(args).read_text())["results"][model_path]["buckets"][0]["end"] == 32
