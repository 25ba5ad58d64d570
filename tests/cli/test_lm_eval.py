"""`hf-longssm lm-eval`: lm-eval's results JSON per model and length, one markdown table, clear refusals."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


pytest.importorskip("lm_eval")

from hf_longssm.cli import lm_eval as lm_eval_cli  # noqa: E402
from hf_longssm.cli import main  # noqa: E402
from hf_longssm.tokenization import byte_tokenizer  # noqa: E402
from tests import babilong_copy  # noqa: E402
from tests.babilong_copy import write_babilong_copy  # noqa: E402
from tests.utils import tiny_model  # noqa: E402


ROOT = Path(__file__).resolve().parents[2]
offline_hub = babilong_copy.offline_hub


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny"
    tiny_model("mamba2", vocab_size=257).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def test_runs_offline_tasks_at_each_length_and_writes_lm_eval_json_and_a_table(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["lm-eval", "--model", str(model_dir), "--tasks", "longssm_passkey", "longssm_fact_retrieval"]
    argv += ["--max_length", "300", "700", "--limit", "2", "--num_samples", "2", "--segment_length", "128"]
    main(argv + ["--output_dir", str(out)])

    for length in (300, 700):
        [path] = (out / "tiny" / f"length_{length}").glob("results_*.json")
        results = json.loads(path.read_text())  # lm-eval's own format
        assert set(results["results"]) == {"longssm_passkey", "longssm_fact_retrieval"}
        assert results["config"]["segment_length"] == 128 and results["config"]["limit"] == 2
        assert 0.0 <= results["results"]["longssm_fact_retrieval"]["acc,none"] <= 1.0
        assert results["n-samples"]["longssm_passkey"]["effective"] == 2
    table, printed = (out / "lm_eval.md").read_text(), capsys.readouterr().out
    assert "| task | metric | length | tiny |" in table
    for row in ("| longssm_passkey | acc | 300 |", "| longssm_fact_retrieval | acc | 700 |"):
        assert row in table and row in printed
    summary = json.loads((out / "lm_eval.json").read_text())
    assert len(summary["table"]) == 4 and summary["segment_length"] == 128


def test_table_puts_models_side_by_side():
    rows = {
        ("longssm_passkey", 4096): {"base": ("acc", 0.2), "sp": ("acc", 1.0)},
        ("niah_single_1", 4096): {"sp": ("string_match", 0.5)},
    }
    table = lm_eval_cli.results_table(rows, ["base", "sp"])
    assert table.splitlines()[2] == "| longssm_passkey | acc | 4096 | 0.200 | 1.000 |"
    assert table.splitlines()[3] == "| niah_single_1 | string_match | 4096 | - | 0.500 |"
    # RULER names its metric by the length; other tasks' first metric that is not a standard error.
    assert lm_eval_cli.primary_metric({"alias": "x", "4096,none": 0.5, "4096_stderr,none": "N/A"}, 4096) == (
        "string_match",
        0.5,
    )
    assert lm_eval_cli.primary_metric({"acc,none": 0.25, "acc_stderr,none": 0.1}, 4096) == ("acc", 0.25)
    perplexity = {"word_perplexity,none": 9.0, "byte_perplexity,none": 2.0, "bits_per_byte,none": 1.0}
    assert lm_eval_cli.primary_metric(perplexity, 4096) == ("bits_per_byte", 1.0)
    assert lm_eval_cli.model_label("outputs/demo/state_passing/") == "state_passing"


def test_a_ruler_task_that_would_never_finish_is_refused_by_name(model_dir, tmp_path):
    argv = ["lm-eval", "--model", str(model_dir), "--tasks", "ruler_vt", "--output_dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="ruler_vt cannot run at 4096 tokens: its fixed 500-token in-context"):
        main(argv)
    assert not (tmp_path / "lm_eval.md").exists()


def test_the_package_and_other_commands_work_without_lm_eval():
    script = (
        "import sys; sys.modules['lm_eval'] = None\n"  # as if lm-eval were not installed
        "import hf_longssm, hf_longssm.evaluation, hf_longssm.cli\n"
        "assert 'hf_longssm.evaluation.harness' not in sys.modules\n"
        "hf_longssm.cli.main(['lm-eval', '--model', 'x'])\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    assert 'pip install "hf-longssm[lm-eval]"' in run.stderr


def test_lm_evals_babilong_runs_from_a_local_copy_at_every_length_it_holds(tmp_path, offline_hub):
    model = tmp_path / "tiny"  # one small layer: generation through transformers' torch path is the slow part
    small = dict(num_hidden_layers=1, hidden_size=16, num_heads=2, head_dim=16)
    tiny_model("mamba2", vocab_size=257, **small).save_pretrained(model)
    byte_tokenizer().save_pretrained(model)
    folder, out = tmp_path / "babilong-1k-samples", tmp_path / "out"
    rows = {"0k": {"qa1": 2, "qa2": 1}, "1k": {"qa1": 1, "qa2": 2}}
    write_babilong_copy(folder, rows, {"0k": 60, "1k": 1000}, declared=("2k",))  # 2k not downloaded
    argv = ["lm-eval", "--model", str(model), "--tasks", "babilong_qa1", "babilong_qa2", "--babilong_lengths", "all"]
    main(argv + ["--babilong_path", str(folder), "--segment_length", "512", "--output_dir", str(out)])

    for length, counts in rows.items():
        [path] = (out / "tiny" / f"babilong_{length}").glob("results_*.json")
        results = json.loads(path.read_text())  # lm-eval's own format
        for split, count in counts.items():
            assert results["n-samples"][f"babilong_{split}"]["effective"] == count
            assert 0.0 <= results["results"][f"babilong_{split}"]["acc,none"] <= 1.0
    table = (out / "lm_eval.md").read_text().splitlines()
    assert [line.split(" | ")[:3] for line in table[4:8]] == [
        ["| babilong_qa1", "acc", "0k"],
        ["| babilong_qa1", "acc", "1k"],
        ["| babilong_qa2", "acc", "0k"],
        ["| babilong_qa2", "acc", "1k"],
    ]
    summary = json.loads((out / "lm_eval.json").read_text())
    assert summary["babilong_lengths"] == ["0k", "1k"] and summary["babilong_copy"] == str(folder)
    assert summary["lengths"] == []  # no other task asked: no run at --max_length


def test_lm_evals_babilong_refused_by_name_without_a_copy_or_at_a_length_it_lacks(model_dir, tmp_path, offline_hub):
    out = tmp_path / "out"
    argv = ["lm-eval", "--model", str(model_dir), "--output_dir", str(out), "--tasks"]
    with pytest.raises(SystemExit, match="hf download --repo-type dataset RMT-team/babilong-1k-samples"):
        main(argv + ["babilong_longctx", "--babilong_lengths", "16k"])
    folder = tmp_path / "copy"
    write_babilong_copy(folder, {"0k": {"qa1": 1}, "1k": {"qa1": 1}}, {"0k": 60, "1k": 1100})
    with pytest.raises(SystemExit, match="babilong_qa11 cannot run at 1k: lm-eval reads it at 0k whatever"):
        main(argv + ["babilong_qa1", "babilong_qa11", "--babilong_path", str(folder), "--babilong_lengths", "1k"])
    with pytest.raises(SystemExit, match="babilong cannot run at 0k: its tasks babilong_qa2, babilong_qa3"):
        main(argv + ["babilong", "--babilong_path", str(folder)])  # lm-eval's default length, 0k
    with pytest.raises(SystemExit, match="--babilong_path apply to lm-eval's babilong tasks, and --tasks names none"):
        main(argv + ["longssm_passkey", "--babilong_path", str(folder)])  # ignored otherwise: a typo in --tasks?
    assert not out.exists()
