"""`hl.evaluate`: one call on a Hub id (from the offline Hub cache), a folder or a loaded model; and
`python -m hf_longssm.evaluate`, the same command as `hf-longssm eval`."""

import json
import subprocess
import sys

import pytest
import torch

import hf_longssm as hl
from hf_longssm import evaluation
from tests import hub_cache as fixtures
from tests.utils import tiny_model


hub_cache, hub_cache_files = fixtures.hub_cache, fixtures.hub_cache_files


def test_evaluate_runs_every_task_on_a_hub_id_from_the_offline_cache(hub_cache, tmp_path):
    options = dict(length=300, num_sequences=2, segment_length=128, lengths=[400], depths=[0.5], num_trials=1, T=64)
    tasks = ["position_ppl", "passkey", "effrem", "state_norms", "babilong_qa1", "copying"]
    results = hl.evaluate(fixtures.MAMBA1_HF_ID, tasks=tasks, **options)
    assert set(results) == set(tasks)
    assert [c["length"] for c in results["babilong_qa1"]["cells"]] == [400]
    assert [(c["length"], c["copy_tokens"]) for c in results["copying"]["cells"]] == [(400, 199)]
    assert len(results["position_ppl"]["nll"]) == 299 and results["position_ppl"]["buckets"][0]["start"] == 0
    assert len(results["passkey"]["cells"]) == 1
    # The numbers are the evaluation functions' own on the same text.
    model = hl.load_model(fixtures.MAMBA1_HF_ID)
    tokenizer = hl.loading.load_tokenizer(fixtures.MAMBA1_HF_ID)
    documents = evaluation.text.documents_to_input_ids(
        hl.cli.eval.load_eval_documents(["hf_longssm/offline-shakespeare"]), tokenizer, 300, 2
    )
    expected = evaluation.position_perplexity(model, documents, 128).nll
    torch.testing.assert_close(torch.tensor(results["position_ppl"]["nll"]), expected, rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.iterdir())  # nothing written without output_dir


def test_evaluate_a_loaded_model_and_write_what_the_command_writes(tmp_path):
    path = tmp_path / "tiny"
    tiny_model("mamba2", vocab_size=257).save_pretrained(path)
    hl.tokenization.byte_tokenizer().save_pretrained(path)
    model = hl.load_model(path)
    out = tmp_path / "out"
    results = hl.evaluate(model, tasks=["position_ppl"], length=256, num_sequences=1, output_dir=out)
    payload = json.loads((out / "position_ppl.json").read_text())
    assert payload["results"][str(path)] == results["position_ppl"]
    assert (out / "position_ppl.png").is_file()
    assert hl.evaluate.evaluate is not None and callable(hl.evaluate)


def test_evaluate_refuses_unknown_tasks_and_options():
    with pytest.raises(ValueError, match="tasks must be a list"):
        hl.evaluate("x", tasks="position_ppl")
    with pytest.raises(ValueError, match="Unknown evaluation options"):
        hl.evaluate("x", tasks=["passkey"], lenght=5)


def test_python_m_hf_longssm_evaluate_is_hf_longssm_eval(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hf_longssm.evaluate", "--model", str(tmp_path / "none"), "--task", "passkey"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "hf-longssm eval: error" in result.stderr
    help_text = subprocess.run([sys.executable, "-m", "hf_longssm.evaluate", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "usage: hf-longssm eval" in help_text.stdout
    assert "RuntimeWarning" not in help_text.stderr


def test_evaluate_runs_babilong_and_refuses_bad_values_as_errors(tmp_path):
    path = tmp_path / "tiny"
    tiny_model("mamba2", vocab_size=257).save_pretrained(path)
    hl.tokenization.byte_tokenizer().save_pretrained(path)
    results = hl.evaluate(str(path), tasks=iter(["babilong_qa1"]), lengths=range(300, 301), num_trials=2)
    assert results["babilong_qa1"]["cells"][0]["length"] == 300
    with pytest.raises(ValueError, match="refused the options"):
        hl.evaluate(str(path), tasks=["position_ppl"], length=0)
    with pytest.raises(ValueError, match="give a name, a number or a list"):
        hl.evaluate(str(path), tasks=["passkey"], tokenizer=object())
