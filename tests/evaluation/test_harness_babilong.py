"""lm-eval's own BABILong tasks through `LongSSMLM`, offline, from a local copy of their Hub dataset: every row scored,
every prompt read whole, the accuracy lm-eval's scorer gives forced answers; the copy found in the Hub cache; what a
length cannot run and a missing copy named."""

import datasets
import pytest
import torch


pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402

from hf_longssm.evaluation import harness  # noqa: E402
from hf_longssm.evaluation.harness import LongSSMLM, babilong_task_manager, local_babilong  # noqa: E402
from hf_longssm.tokenization import byte_tokenizer  # noqa: E402
from tests import babilong_copy  # noqa: E402
from tests.babilong_copy import REPO_ID, write_babilong_copy, write_hub_cache  # noqa: E402
from tests.utils import tiny_model  # noqa: E402


# 0k: bAbI alone (qa1-qa5 and qa11, which lm-eval reads through another call); 1k: inputs of 2500 bytes, longer than
# the 2048 tokens HFLM would keep; 4k declared in the README but not downloaded.
ROWS = {
    "0k": {"qa1": 2, "qa2": 2, "qa3": 1, "qa4": 1, "qa5": 1, "qa11": 2},
    "1k": {"qa1": 3, "qa2": 2},
}
INPUT_BYTES = {"0k": 60, "1k": 2500}
# Small enough that a 128k-token prompt is read in seconds (the slow test).
SMALL = dict(num_hidden_layers=1, hidden_size=16, num_heads=2, head_dim=16, n_groups=1, chunk_size=64)
offline_hub = babilong_copy.offline_hub


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("babilong_model")
    tiny_model("mamba2", vocab_size=257, **SMALL).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture()
def copy(tmp_path):
    folder = tmp_path / "babilong-1k-samples"
    return folder, write_babilong_copy(folder, ROWS, INPUT_BYTES, declared=("4k",))


def force_answers(lm: LongSSMLM, answers: dict[str, str], monkeypatch) -> list[int]:
    """Make `lm` answer each question with `answers[question]`, through its own segmented prefill; returns the number
    of tokens prefilled for each prompt. Only transformers' `generate` is replaced: it reads the prompt that
    `LongSSMLM.generate_until` prefilled (all of it but the last token, handed to `generate`) and emits the answer, cut
    at `max_new_tokens` as generate would."""
    prefilled = []
    real_prefill = harness.prefill

    def prefill(model, ids, *args, **kwargs):
        prefilled.append(ids)
        return real_prefill(model, ids, *args, **kwargs)

    def generate(prompt, max_new_tokens, **kwargs):
        prompt_text = lm.tok_decode(prefilled[-1][0].tolist() + prompt[0].tolist())
        answer = lm.tok_encode(answers[prompt_text.rsplit("\n", 1)[-1]])[:max_new_tokens]
        return torch.cat([prompt, torch.tensor([answer], device=prompt.device)], 1)

    monkeypatch.setattr(harness, "prefill", prefill)
    monkeypatch.setattr(lm.model, "generate", generate)
    return prefilled


def test_lm_evals_babilong_reads_the_local_copy_and_every_prompt_whole(model_dir, copy, offline_hub, monkeypatch):
    folder, rows = copy
    lm = LongSSMLM(str(model_dir), segment_length=512)
    # qa1: the first two rows answered right; qa2: the first one. lm-eval's scorer: the target in the answer.
    answers = {}
    for split, correct in (("qa1", 2), ("qa2", 1)):
        for index, row in enumerate(rows["1k"][split]):
            answers[row["question"]] = row["target"] if index < correct else "nowhere"
    prefilled = force_answers(lm, answers, monkeypatch)
    hub_load_dataset = datasets.load_dataset

    with local_babilong(folder, ["1k"]) as opened:
        assert opened == folder
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=["babilong_qa1", "babilong_qa2"],
            task_manager=babilong_task_manager("1k"),
            log_samples=True,
        )
    assert datasets.load_dataset is hub_load_dataset  # restored

    assert results["n-samples"]["babilong_qa1"]["effective"] == 3
    assert results["n-samples"]["babilong_qa2"]["effective"] == 2
    assert results["results"]["babilong_qa1"]["acc,none"] == pytest.approx(2 / 3)
    assert results["results"]["babilong_qa2"]["acc,none"] == pytest.approx(1 / 2)
    # Every prompt: lm-eval's (instruction, two examples, the row's input and question), read whole in segments.
    prompts = [
        sample["arguments"][0][0] for task in ("babilong_qa1", "babilong_qa2") for sample in results["samples"][task]
    ]
    for prompt, row in zip(prompts, rows["1k"]["qa1"] + rows["1k"]["qa2"]):
        assert prompt.endswith(f"\n\n{row['input'].strip()}\n{row['question']}")
    assert sorted(ids.shape[1] for ids in prefilled) == sorted(len(lm.tok_encode(p)) - 1 for p in prompts)
    assert min(ids.shape[1] for ids in prefilled) > 2500  # beyond HFLM's 2048-token window


def test_the_hub_caches_copy_is_found_and_both_of_lm_evals_calls_are_redirected(
    model_dir, copy, offline_hub, monkeypatch
):
    """qa1-qa5 (the `babilong_longctx` group) load through lm-eval's common_utils, qa11 through its task's own
    `dataset_path`: both read the copy in the Hub cache, found with no path."""
    folder, rows = copy
    snapshot = write_hub_cache(offline_hub, folder)
    lm = LongSSMLM(str(model_dir), segment_length=512)
    # The first row of every split answered right, the others wrong.
    answers = {row["question"]: "nowhere" for split in rows["0k"].values() for row in split}
    answers |= {split[0]["question"]: split[0]["target"] for split in rows["0k"].values()}
    force_answers(lm, answers, monkeypatch)
    with local_babilong() as opened:
        assert opened == snapshot
        results = lm_eval.simple_evaluate(
            model=lm, tasks=["babilong_longctx", "babilong_qa11"], task_manager=babilong_task_manager("0k")
        )
    assert set(results["results"]) == {"babilong_longctx", *(f"babilong_{split}" for split in ROWS["0k"])}
    for split, count in ROWS["0k"].items():
        assert results["n-samples"][f"babilong_{split}"]["effective"] == count
        assert results["results"][f"babilong_{split}"]["acc,none"] == pytest.approx(1 / count)
    # The group: lm-eval's mean weighted by size, 5 right of qa1-qa5's 7 rows.
    assert results["results"]["babilong_longctx"]["acc,none"] == pytest.approx(5 / 7)


def test_lengths_of_a_partial_copy_and_what_each_cannot_run(copy):
    folder, _ = copy
    assert harness.babilong_configs(folder)["1k"] == {"qa1": ["1k/qa1-*"], "qa2": ["1k/qa2-*"]}
    assert harness.babilong_lengths(folder) == ["0k", "1k"]  # 4k is declared, its files absent
    tasks = ["babilong", "babilong_longctx", "babilong_qa1", "babilong_qa6", "babilong_qa11", "arc_easy"]
    at_1k = harness.babilong_problems(tasks, "1k", folder)
    assert set(at_1k) == {"babilong", "babilong_longctx", "babilong_qa6", "babilong_qa11"}
    assert at_1k["babilong_qa11"] == "lm-eval reads it at 0k whatever the length asked (its dataset_name)"
    assert at_1k["babilong_qa6"].startswith("the copy has no qa6 at 1k")
    assert at_1k["babilong_longctx"] == (
        "its tasks babilong_qa3, babilong_qa4, babilong_qa5 cannot: the copy has no qa3 at 1k (the Hub's: qa1-qa5 at "
        "every length, qa6-qa20 at 0k)"
    )
    assert at_1k["babilong"].endswith("; babilong_longctx holds qa1-qa5, which run at every length")
    at_0k = harness.babilong_problems(tasks, "0k", folder)
    assert set(at_0k) == {"babilong", "babilong_qa6"}  # this copy holds no qa6 at all
    assert len(harness.babilong_tasks()) == 22 and harness.babilong_length_tokens("128k") == 131072


def test_a_missing_copy_or_length_says_what_to_download_or_pass(copy, offline_hub, tmp_path):
    folder, _ = copy
    hub_load_dataset = datasets.load_dataset
    with pytest.raises(FileNotFoundError) as error:
        with local_babilong(lengths=["16k"]):
            pass
    message = str(error.value)
    assert f"hf download --repo-type dataset {REPO_ID}`" in message
    assert "--include 'README.md' --include '16k/*'" in message and "--babilong_path DIR" in message
    assert datasets.load_dataset is hub_load_dataset
    with pytest.raises(FileNotFoundError, match=r"lacks the files of 4k .*--include '4k/\*'"):
        harness.babilong_copy(folder, ["1k", "4k"])
    with pytest.raises(FileNotFoundError, match="has no length 3k; it declares 0k, 1k, 4k"):
        harness.babilong_copy(folder, ["3k"])
    with pytest.raises(FileNotFoundError, match="has no README.md"):
        harness.babilong_copy(tmp_path / "elsewhere")


def test_a_128k_token_prompt_is_read_whole(model_dir, tmp_path, offline_hub, monkeypatch):
    """lm-eval's longest BABILong length: the prompt of a 128k row, ~131k tokens, prefilled whole in segments (3 s)."""
    folder = tmp_path / "copy"
    rows = write_babilong_copy(folder, {"128k": {"qa1": 1}}, {"128k": 131_000})
    lm = LongSSMLM(str(model_dir), segment_length=8192)
    [row] = rows["128k"]["qa1"]
    prefilled = force_answers(lm, {row["question"]: row["target"]}, monkeypatch)
    with local_babilong(folder, ["128k"]):
        results = lm_eval.simple_evaluate(
            model=lm, tasks=["babilong_qa1"], task_manager=babilong_task_manager("128k"), log_samples=True
        )
    [sample] = results["samples"]["babilong_qa1"]
    [ids] = prefilled
    prompt = sample["arguments"][0][0]
    assert prompt.endswith(f"\n\n{row['input'].strip()}\n{row['question']}")
    assert ids.shape[1] == len(lm.tok_encode(prompt)) - 1 > 131_000
    assert results["results"]["babilong_qa1"]["acc,none"] == 1.0
