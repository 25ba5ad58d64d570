"""lm-eval adapter: HFLM's numbers below 2048 tokens, one full pass beyond, generate() from the carried state, flat
memory, and the offline task builders."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F


pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.models.utils import postprocess_generated_text  # noqa: E402

from hf_longssm.evaluation import harness  # noqa: E402
from hf_longssm.evaluation.harness import LongSSMLM  # noqa: E402
from hf_longssm.evaluation.lm_eval_tasks import builders  # noqa: E402
from hf_longssm.tokenization import byte_tokenizer  # noqa: E402
from tests.utils import HYBRID_TYPES, tiny_hybrid, tiny_model  # noqa: E402


ROOT = Path(__file__).resolve().parents[2]
TEXT = "It was the best of times, it was the worst of times; the grass is green and the sky is blue. "


def save_tiny(folder: Path, model_type: str = "mamba2", long_memory: bool = False, **overrides) -> Path:
    """A tiny random model with the byte tokenizer saved beside it. `long_memory`: every head decays slowly
    (A = -exp(-4)), so tokens thousands of positions back still move the predictions, as in trained checkpoints."""
    model = tiny_model(model_type, vocab_size=257, **overrides)
    if long_memory:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("A_log"):
                    param.fill_(-4.0)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mamba2_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("mamba2"))


def rolling(*texts):
    return [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]


def loglikelihood(*pairs):
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def generate(context, **gen_kwargs):
    return [Instance("generate_until", {}, (context, gen_kwargs), 0)]


def one_pass_logprob(model, ids: list[int], targets: list[int]) -> float:
    """log p(targets | ids) from one plain forward of transformers' model over all of `ids` (the last len(targets)
    positions predict `targets`)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits.float()
    scored = F.log_softmax(logits, -1)[0, -len(targets) :]  # the positions that predict `targets`
    return float(scored.gather(-1, torch.tensor(targets).unsqueeze(-1)).sum())


def test_registered_and_built_from_lm_eval_model_args(mamba2_dir):
    assert get_model("hf_longssm") is LongSSMLM
    lm = LongSSMLM.create_from_arg_string(
        f"pretrained={mamba2_dir},segment_length=128,dtype=float32", {"batch_size": 2, "device": "cpu"}
    )
    assert (lm.segment_length, lm.batch_size, lm.max_length) == (128, 2, None)
    assert lm.prefix_token_id == lm.eot_token_id == 0  # byte tokenizer: no BOS, so EOS (HFLM's rule)
    with pytest.raises(ValueError, match="Give an integer"):
        LongSSMLM(str(mamba2_dir), batch_size="auto")


@pytest.mark.parametrize("model_type", ["mamba", "mamba2"])
def test_equals_hflm_below_2048_tokens(tmp_path, model_type):
    folder = save_tiny(tmp_path, model_type)
    ours = LongSSMLM(str(folder), segment_length=100)  # several segments per input
    theirs = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=1)
    docs = rolling(TEXT * 4, "short", "")
    context = TEXT * 3 + "Question: what colour is the sky? Answer:"
    pairs = loglikelihood(
        (context, " blue"), (context, " green"), (context, " red or yellow"), ("", "no context"), ("x", "y")
    )
    assert ours.loglikelihood_rolling(docs, disable_tqdm=True) == pytest.approx(
        theirs.loglikelihood_rolling(docs, disable_tqdm=True), rel=1e-5, abs=1e-4
    )
    mine, hf = ours.loglikelihood(pairs, disable_tqdm=True), theirs.loglikelihood(pairs, disable_tqdm=True)
    assert [lp for lp, _ in mine] == pytest.approx([lp for lp, _ in hf], rel=1e-5, abs=1e-4)
    assert [g for _, g in mine] == [g for _, g in hf]


def test_beyond_2048_tokens_equals_one_full_pass_while_hflm_truncates(tmp_path):
    folder = save_tiny(tmp_path, "mamba2", long_memory=True)
    ours = LongSSMLM(str(folder), segment_length=1000)
    theirs = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=1)
    assert theirs.max_length == 2048  # Mamba configs have no position limit: HFLM falls back to 2048
    document = (TEXT * 70)[:5999] + "."  # no trailing space: lm-eval would move it into the continuation
    tokens = ours.tok_encode(document)
    assert len(tokens) == 6000

    # loglikelihood_rolling: ours is one pass over all 6000 tokens; HFLM restarts every 2048 tokens.
    full = one_pass_logprob(ours.model, [ours.prefix_token_id] + tokens[:-1], tokens)
    [mine] = ours.loglikelihood_rolling(rolling(document), disable_tqdm=True)
    [hf] = theirs.loglikelihood_rolling(rolling(document), disable_tqdm=True)
    assert mine == pytest.approx(full, rel=1e-5)
    assert abs(hf - full) > 0.1, (hf, full)  # what the restarts cost

    # loglikelihood: ours reads the 6000-token context; HFLM left-truncates it to its last 2047 tokens.
    context, continuation = document, " and so on"
    cont = ours.tok_encode(context + continuation)[len(tokens) :]
    full = one_pass_logprob(ours.model, tokens + cont[:-1], cont)
    truncated = one_pass_logprob(ours.model, (tokens + cont)[-2049:-1], cont)
    [(mine, _)] = ours.loglikelihood(loglikelihood((context, continuation)), disable_tqdm=True)
    [(hf, _)] = theirs.loglikelihood(loglikelihood((context, continuation)), disable_tqdm=True)
    assert mine == pytest.approx(full, rel=1e-5, abs=1e-4)
    assert hf == pytest.approx(truncated, rel=1e-5, abs=1e-4)
    assert abs(full - truncated) > 0.05, (full, truncated)  # what the lost 3953 tokens of context were worth


def test_a_context_shared_by_several_choices_is_read_once(mamba2_dir, monkeypatch):
    ours = LongSSMLM(str(mamba2_dir), segment_length=128)
    calls = []
    real_prefill = harness.prefill
    monkeypatch.setattr(
        harness, "prefill", lambda model, ids, *a, **k: calls.append(ids.shape[1]) or real_prefill(model, ids, *a, **k)
    )
    first, second = TEXT * 2 + "Where is Mary?", TEXT + "Where is John?"
    choices = [" kitchen", " garden", " office", " hallway"]
    requests = loglikelihood(*[(first, c) for c in choices], *[(second, c) for c in choices])
    together = ours.loglikelihood(requests, disable_tqdm=True)
    assert len(calls) == 2  # one prefill per distinct context, not one per choice
    alone = [ours.loglikelihood([r], disable_tqdm=True)[0] for r in requests]
    assert [lp for lp, _ in together] == pytest.approx([lp for lp, _ in alone], abs=1e-5)

    # batch_size > 1: equal-length continuations share one forward from the same state; same numbers.
    batched = LongSSMLM(ours.model, tokenizer=ours.tokenizer, segment_length=128, batch_size=4)
    assert [lp for lp, _ in batched.loglikelihood(requests, disable_tqdm=True)] == pytest.approx(
        [lp for lp, _ in together], abs=1e-4
    )
    docs = rolling(TEXT, TEXT.upper(), TEXT[:50])
    assert batched.loglikelihood_rolling(docs, disable_tqdm=True) == pytest.approx(
        ours.loglikelihood_rolling(docs, disable_tqdm=True), abs=1e-4
    )


@pytest.mark.parametrize("model_type", ["mamba", "mamba2"])
def test_generate_until_equals_generate_on_the_full_prompt(tmp_path, model_type):
    folder = save_tiny(tmp_path, model_type)
    ours = LongSSMLM(str(folder), segment_length=300)
    prompt = (TEXT * 12)[:1000] if model_type == "mamba" else (TEXT * 40)[:3000]  # Mamba-1's torch scan is slow
    ids = torch.tensor([ours.tok_encode(prompt)])
    # Bytes >= 128 suppressed (a transformers generation kwarg, passed through by generate_until as by HFLM): the
    # random model's text is then ASCII, so it decodes byte by byte and has characters to stop at.
    ascii_only = {"suppress_tokens": list(range(129, 257)), "do_sample": False}
    with torch.no_grad():
        expected = ours.model.generate(ids, max_new_tokens=40, pad_token_id=0, **ascii_only)[0, ids.shape[1] :]
    # HFLM's reading of a generation: decoded without special tokens, cut at the first stop sequence (EOS's text too).
    expected_text = ours.tokenizer.decode(expected.tolist(), skip_special_tokens=True)
    [text] = ours.generate_until(generate(prompt, until=[], max_gen_toks=40, **ascii_only), disable_tqdm=True)
    assert text == expected_text.split("<eos>")[0]
    # A stop sequence ends generation and the text where it first appears; max_gen_toks bounds the text.
    stop = expected_text[len(expected_text) // 2]
    [cut] = ours.generate_until(generate(prompt, until=[stop], max_gen_toks=40, **ascii_only), disable_tqdm=True)
    assert cut == postprocess_generated_text(expected_text, [stop, "<eos>"], None)
    [short] = ours.generate_until(generate(prompt, until=[], max_gen_toks=3, **ascii_only), disable_tqdm=True)
    assert short == ours.tokenizer.decode(expected[:3].tolist(), skip_special_tokens=True).split("<eos>")[0]


def test_generate_until_with_a_length_extension_decodes_through_hf_longssm(tmp_path):
    """transformers' generate() would ignore the extension: the adapter decodes greedily through forward_with_state;
    a neutral extension (Δ x 1) generates what the plain model generates."""
    from hf_longssm import extend

    folder = save_tiny(tmp_path, "mamba2", initializer_range=1.0)  # large weights: the text hangs on the state
    ours = LongSSMLM(str(folder), segment_length=64)
    ascii_only = {"suppress_tokens": list(range(129, 257)), "do_sample": False}
    request = generate(TEXT * 3, until=["."], max_gen_toks=30, **ascii_only)
    [plain] = ours.generate_until(request, disable_tqdm=True)
    extend.delta_scale(ours.model, 1.0)
    [neutral] = ours.generate_until(request, disable_tqdm=True)
    assert neutral == plain
    extend.delta_scale(ours.model, 0.05)
    [scaled] = ours.generate_until(request, disable_tqdm=True)
    assert scaled != plain
    with pytest.raises(ValueError, match="takes .suppress_tokens. only"):
        ours.generate_until(generate(TEXT, until=[], max_gen_toks=3, do_sample=True, top_k=5), disable_tqdm=True)


@pytest.mark.parametrize("model_type", HYBRID_TYPES)
def test_hybrid_scores_equal_one_pass_with_every_key_and_generates_as_transformers(tmp_path, model_type):
    model = tiny_hybrid(model_type, vocab_size=257).eval()
    model.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    ours = LongSSMLM(str(tmp_path), segment_length=16, attention_state="full")
    context = TEXT[:70]
    [(logprob, _)] = ours.loglikelihood(loglikelihood((context, " blue sky")), disable_tqdm=True)
    ids = torch.tensor([ours.tok_encode(context + " blue sky")])
    n = len(ours.tok_encode(context))
    with torch.no_grad():
        logits = ours.model(ids).logits.float()
    expected = F.log_softmax(logits[0, n - 1 : -1], -1).gather(-1, ids[0, n:, None]).sum().item()
    assert logprob == pytest.approx(expected, abs=1e-4)
    ascii_only = {"suppress_tokens": list(range(129, 257)), "do_sample": False}
    prompt_ids = torch.tensor([ours.tok_encode(context)])
    with torch.no_grad():
        generated = ours.model.generate(prompt_ids, max_new_tokens=10, pad_token_id=0, **ascii_only)[0, n:]
    [text] = ours.generate_until(generate(context, until=[], max_gen_toks=10, **ascii_only), disable_tqdm=True)
    assert text == ours.tokenizer.decode(generated.tolist(), skip_special_tokens=True).split("<eos>")[0]


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from lm_eval.api.instance import Instance
    from hf_longssm.evaluation.harness import LongSSMLM

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def read(n):
        request = Instance("loglikelihood_rolling", {}, (text[:n],), 0)
        return lm.loglikelihood_rolling([request], disable_tqdm=True)[0]

    torch.set_num_threads(1)  # two shared cores: one thread is faster than two here
    lm = LongSSMLM(sys.argv[1], segment_length=2048)
    text = "The grass is green. The sky is blue. The sun is yellow. Here we go. " * 1000
    read(4096)  # warm-up: allocator pools and lazily imported code
    peaks = {"warm": peak_mb()}
    for n in (8192, 65536):
        read(n)
        peaks[n] = peak_mb()
    print(json.dumps(peaks))
    """
)


def test_peak_memory_stays_flat_from_8k_to_64k_tokens(tmp_path):
    """Peak RSS of one process after reading 8k tokens, then 64k: reading 8x more adds next to nothing.

    A one-pass read holds the logits of every position: measured +24 MB at 8k and +252 MB at 64k for this model.
    """
    # Smaller still than the other tests' model, so that 64k tokens take about a second.
    small = dict(num_hidden_layers=1, hidden_size=16, num_heads=2, head_dim=16, n_groups=1, chunk_size=64)
    folder = save_tiny(tmp_path, **small)
    run = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(folder)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    peaks = json.loads(run.stdout.strip().splitlines()[-1])
    assert peaks["65536"] - peaks["8192"] < 25, peaks  # MB; the 64k token lists alone are a few MB
    assert peaks["8192"] - peaks["warm"] < 25, peaks


def test_offline_task_builders_are_seeded_and_sized():
    tokenizer_kwargs = {"tokenizer": "byte", "max_seq_lengths": [600, 1200], "num_samples": 5}
    passkey = builders.passkey(**tokenizer_kwargs)["test"]
    assert passkey.to_list() == builders.passkey(**tokenizer_kwargs)["test"].to_list()
    assert passkey.to_list() != builders.passkey(**tokenizer_kwargs, seed=1)["test"].to_list()
    assert sorted(set(passkey["length"])) == [600, 1200]
    assert all(doc["input"].endswith("The pass key is") and doc["target"] in doc["input"] for doc in passkey)
    assert builders.process_passkey(passkey[0], [" " + passkey[0]["target"] + "."]) == {"acc": 1.0}

    facts = builders.fact_retrieval(**tokenizer_kwargs)["test"]
    assert facts.to_list() == builders.fact_retrieval(**tokenizer_kwargs)["test"].to_list()
    for doc in facts:
        assert doc["max_length"] - 60 <= doc["length"] <= doc["max_length"]
        person = doc["input"].rsplit("Where is ", 1)[1].split("?")[0]
        moves = [line for line in doc["input"].splitlines() if line.startswith(person + " ")]
        assert len(moves) == 2  # the asked person moves twice; the answer is the later place
        assert moves[-1].endswith(f" {doc['choices'][doc['label']]}.")
    books = builders.book_perplexity(**tokenizer_kwargs)["test"]
    assert books.to_list() == builders.book_perplexity(**tokenizer_kwargs)["test"].to_list()
    assert [len(byte_tokenizer()(doc["text"])["input_ids"]) for doc in books] == [600] * 5 + [1200] * 5
    with pytest.raises(ValueError, match="tokenizer"):
        builders.passkey(max_seq_lengths=[600])


def test_ruler_tasks_that_would_never_finish_are_named(mamba2_dir):
    lm = LongSSMLM(str(mamba2_dir))
    problems = harness.ruler_problems(["ruler_vt", "ruler_cwe", "niah_single_1"], lm, 4096)
    assert set(problems) == {"ruler_vt", "ruler_cwe"}, problems  # byte-level tokens: RULER's loops never end
    assert "in-context example" in problems["ruler_vt"] and "4168 tokens" in problems["ruler_cwe"]
    assert harness.ruler_problems(["ruler_cwe"], lm, 8192) == {}


@pytest.mark.slow
def test_every_offline_task_builds_without_network(tmp_path, monkeypatch):
    """RULER's offline tasks and the essay twins generate data with no download (NLTK punkt_tab trained here)."""
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("tried to download NLTK data"))
    assert builders.use_offline_punkt(tmp_path / "cache") is not None
    assert nltk.sent_tokenize("The king is dead. Long live the king!") == ["The king is dead.", "Long live the king!"]
    tokenizer = byte_tokenizer()
    folder = tmp_path / "tokenizer"
    tokenizer.save_pretrained(folder)
    manager = harness.task_manager(str(folder), [4096], num_samples=2)
    runnable = [
        t for t in harness.OFFLINE_TASKS if t not in harness.ruler_problems(harness.OFFLINE_TASKS, tokenizer, 4096)
    ]
    loaded = manager.load(runnable)["tasks"]
    assert sorted(loaded) == sorted(runnable)
    for name, task in loaded.items():
        docs = list(task.test_docs())
        assert docs and all(doc["max_length"] == 4096 for doc in docs), name
