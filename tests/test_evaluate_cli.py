"""`evaluate` modules offline, and the command line (JSON, plots, never overwriting results)."""

import json

import pytest
import torch

from hf_longssm import evaluation
from hf_longssm.evaluate import main as evaluate_main
from hf_longssm.tokenization import ByteTokenizer

from .utils import tiny_model


@pytest.fixture()
def saved_model(tmp_path):
    model = tiny_model("mamba2", vocab_size=257)
    path = tmp_path / "tiny"
    model.save_pretrained(path)
    ByteTokenizer().save_pretrained(path)
    return model, str(path)


def test_position_perplexity_module_offline(saved_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, path = saved_model
    ids = torch.randint(1, 257, (2, 40))
    metric = evaluation.load("position_perplexity")
    live = metric.compute(input_ids=ids.tolist(), model=model, segment_length=16)
    loaded = evaluation.load("position_perplexity").compute(input_ids=ids.tolist(), model_id=path, segment_length=7)
    direct = evaluation.position_perplexity(model, ids, segment_length=40)
    assert len(live["nll"]) == 39
    assert max(abs(a - b) for a, b in zip(live["nll"], direct.nll.tolist())) < 1e-4
    assert max(abs(a - b) for a, b in zip(loaded["nll"], live["nll"])) < 1e-4
    assert live["buckets"][-1]["end"] == 39


def test_passkey_module_offline(saved_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, path = saved_model
    out = evaluation.load("passkey_retrieval").compute(lengths=[200, 260], depths=[0.5], model_id=path, num_trials=1)
    direct = evaluation.passkey_retrieval(model, ByteTokenizer(), [200, 260], [0.5], num_trials=1)
    assert out["results"] == direct


def test_unknown_module_is_a_clear_error():
    with pytest.raises(ValueError, match="available: \\['passkey_retrieval', 'position_perplexity'\\]"):
        evaluation.load("bleu")


def test_cli_writes_json_and_plot_and_never_overwrites(saved_model, tmp_path):
    _, path = saved_model
    docs = []
    for i in range(3):
        doc = tmp_path / f"doc{i}.txt"
        doc.write_text("To be, or not to be, that is the question. " * (20 + i))
        docs.append(str(doc))
    args = [
        "--model",
        path,
        path,
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
    ]
    first = evaluate_main(args)
    second = evaluate_main(args)
    assert first.name == "position_ppl.json" and second.name == "position_ppl-1.json"
    payload = json.loads(first.read_text())
    assert payload["input_shape"] == [3, 600] and "python -m hf_longssm.evaluate" in payload["command"]
    assert payload["versions"]["transformers"]
    assert len(payload["results"][path]["nll"]) == 599
    assert (tmp_path / "out" / "position_ppl.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="No document has 5000 tokens"):
        evaluate_main([*args[:-2], "--length", "5000", "--output_dir", str(tmp_path / "out2")])


@pytest.mark.parametrize("task", ["passkey", "effrem", "state_norms"])
def test_cli_other_tasks(saved_model, tmp_path, task):
    _, path = saved_model
    doc = tmp_path / "doc.txt"
    doc.write_text("All the world's a stage, and all the men and women merely players. " * 20)
    extra = {
        "passkey": ["--lengths", "200", "260", "--depths", "0", "1", "--num_trials", "1"],
        "effrem": ["--data", str(doc), "--length", "256", "--ts", "0", "16", "128"],
        "state_norms": ["--data", str(doc), "--length", "256", "--segment_length", "64"],
    }[task]
    out = evaluate_main(["--model", path, "--task", task, "--output_dir", str(tmp_path / "o"), *extra])
    payload = json.loads(out.read_text())["results"][path]
    if task == "effrem":
        assert payload["effrem"]["0"] == pytest.approx(0.0, abs=1e-6)
    if task == "state_norms":
        assert payload["positions"] == [64, 128, 192, 256]
    assert (tmp_path / "o" / f"{task}.png").is_file()


def test_hf_longssm_entry_point(saved_model, tmp_path, capsys):
    from hf_longssm.cli import main as cli_main

    _, path = saved_model
    doc = tmp_path / "doc.txt"
    doc.write_text("Now is the winter of our discontent. " * 20)
    cli_main(
        [
            "eval",
            "--model",
            path,
            "--task",
            "state_norms",
            "--data",
            str(doc),
            "--length",
            "128",
            "--segment_length",
            "64",
            "--output_dir",
            str(tmp_path / "cli"),
            "--no_plot",
        ]
    )
    assert json.loads((tmp_path / "cli" / "state_norms.json").read_text())["results"][path]["positions"] == [64, 128]
    with pytest.raises(SystemExit):
        cli_main(["train"])
