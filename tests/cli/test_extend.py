"""`hf-longssm extend`: calibrate on the offline corpus's training plays, write the extended model, evaluate it."""

import json
import subprocess
import sys

import pytest
import torch

import hf_longssm as hl
from hf_longssm import extend
from hf_longssm.cli.eval import main as eval_main
from hf_longssm.cli.extend import main as extend_main
from hf_longssm.evaluation.harness import LongSSMLM
from hf_longssm.extension import EXTENSION_FILE
from hf_longssm.tokenization import byte_tokenizer
from tests.utils import tiny_model


@pytest.fixture()
def model_path(tmp_path) -> str:
    path = tmp_path / "tiny"
    tiny_model("mamba2", vocab_size=257).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    "method, options",
    [
        ("long_mamba", ["--train_length", "32", "--num_samples", "20"]),
        ("mamba_extend", ["--num_samples", "2", "--iterations", "2", "--segment_length", "128"]),
        ("mamba_extend", ["--num_samples", "2", "--iterations", "2", "--calibration", "backprop"]),
        ("delta_scale", ["--train_length", "32"]),
    ],
)
def test_extend_writes_a_model_that_loads_and_evaluates_extended(model_path, tmp_path, method, options):
    out = tmp_path / "extended"
    extend_main(["--method", method, "--model", model_path, "--length", "512", "--output_dir", str(out), *options])
    assert (out / EXTENSION_FILE).is_file() and (out / "tokenizer.json").is_file()
    record = json.loads((out / "extension.json").read_text())
    assert record["method"] == method and record["command"].startswith("hf-longssm extend --method")
    if method != "delta_scale":
        calibration = {"dataset": "hf_longssm/offline-shakespeare", "split": "train"}
        assert record["settings"]["calibration_data"] == calibration
        assert record["settings"]["calibration_seconds"] >= 0

    # The folder loads extended, and evaluates differently from the base on the held-out plays.
    model = hl.load_model(out)
    assert extend.get_extension(model).method == method
    ids = torch.randint(1, 257, (1, 300))
    base = hl.load_model(model_path)
    with torch.no_grad():
        extended_nll = hl.evaluation.position_perplexity(model, ids, 128).nll
        base_nll = hl.evaluation.position_perplexity(base, ids, 128).nll
    assert not torch.allclose(extended_nll, base_nll)
    common = ["--task", "position_ppl", "--length", "512", "--num_sequences", "1", "--no_plot"]
    payload = json.loads(eval_main(["--model", str(out), *common, "--output_dir", str(tmp_path / "e")]).read_text())
    assert len(payload["results"][str(out)]["nll"]) == 511
    # The lm-eval adapter loads it with its extension too.
    assert extend.get_extension(LongSSMLM(str(out), segment_length=128).model).method == method


def test_eval_refuses_the_calibration_text(model_path, tmp_path):
    out = tmp_path / "extended"
    extend_main(
        ["--method", "long_mamba", "--model", model_path, "--length", "512", "--train_length", "32",
         "--num_samples", "4", "--output_dir", str(out)]
    )  # fmt: skip
    common = ["--model", str(out), "--task", "position_ppl", "--length", "512", "--num_sequences", "1", "--no_plot"]
    with pytest.raises(ValueError, match="calibrated on"):
        eval_main([*common, "--split", "train", "--output_dir", str(tmp_path / "e")])
    eval_main([*common, "--output_dir", str(tmp_path / "e")])  # the held-out plays: fine


def test_extend_never_overwrites_and_checks_before_calibrating(model_path, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not empty"):
        extend_main(["--method", "delta_scale", "--model", model_path, "--length", "64", "--output_dir", str(out),
                     "--scale", "0.5"])  # fmt: skip
    assert (out / "results.json").read_text() == "{}"
    with pytest.raises(FileExistsError, match="being extended"):
        extend_main(["--method", "delta_scale", "--model", model_path, "--length", "64", "--output_dir", model_path,
                     "--scale", "0.5"])  # fmt: skip


def test_extend_command_line_errors():
    result = subprocess.run(
        [sys.executable, "-m", "hf_longssm", "extend", "--method", "long_mamba", "--model", "x", "--length", "64",
         "--output_dir", "y"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "needs --train_length" in result.stderr


def test_eval_refuses_calibration_files_by_content_whatever_the_path_split_or_order(model_path, tmp_path, monkeypatch):
    text = "Now is the winter of our discontent made glorious summer by this sun of York. " * 40
    (tmp_path / "cal.txt").write_text(text)
    (tmp_path / "cal2.txt").write_text(text.upper())
    (tmp_path / "other.txt").write_text(text.lower())
    out = tmp_path / "extended"
    extend_main(
        ["--method", "long_mamba", "--model", model_path, "--length", "256", "--train_length", "32",
         "--num_samples", "4", "--data", str(tmp_path / "cal.txt"), str(tmp_path / "cal2.txt"),
         "--output_dir", str(out)]
    )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    common = ["--model", str(out), "--task", "position_ppl", "--length", "256", "--num_sequences", "1", "--no_plot"]
    for data in (["cal.txt"], ["./cal2.txt", "cal.txt"], [str(tmp_path / "cal2.txt")]):
        for split in ([], ["--split", "train"]):
            with pytest.raises(ValueError, match="calibrated on the files"):
                eval_main([*common, "--data", *data, *split, "--output_dir", str(tmp_path / "e")])
    eval_main([*common, "--data", "other.txt", "--output_dir", str(tmp_path / "e")])  # other text: fine


def test_extend_says_which_data_file_is_missing(model_path, tmp_path):
    (tmp_path / "cal.txt").write_text("text " * 100)
    with pytest.raises(ValueError, match=r"not files: \['.*missing.txt'\]"):
        extend_main(["--method", "long_mamba", "--model", model_path, "--length", "256", "--train_length", "32",
                     "--data", str(tmp_path / "cal.txt"), str(tmp_path / "missing.txt"),
                     "--output_dir", str(tmp_path / "o")])  # fmt: skip


def test_passkey_on_an_extended_model_decodes_through_hf_longssm(model_path, tmp_path):
    """Passkey decoding continues through hf_longssm's forward for an extended model (transformers' would refuse);
    a neutral extension gives the plain model's cells."""
    plain = hl.load_model(model_path)
    tokenizer = byte_tokenizer()
    options = dict(lengths=[300], depths=[0.0, 1.0], num_trials=2, segment_length=128)
    expected = hl.evaluation.passkey_retrieval(plain, tokenizer, **options)
    extend.delta_scale(plain, 1.0)
    assert hl.evaluation.passkey_retrieval(plain, tokenizer, **options) == expected
    out = tmp_path / "extended"
    extend_main(["--method", "delta_scale", "--model", model_path, "--length", "512", "--train_length", "32",
                 "--output_dir", str(out)])  # fmt: skip
    argv = ["--model", str(out), "--task", "passkey", "--lengths", "300", "--num_trials", "1", "--no_plot"]
    payload = json.loads(eval_main([*argv, "--output_dir", str(tmp_path / "e")]).read_text())
    assert len(payload["results"][str(out)]["cells"]) == 5
