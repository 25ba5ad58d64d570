"""Data builders and scorers of the project's lm-eval tasks (the YAML files beside this module name them).

lm-eval calls a builder as `custom_dataset(**metadata, **dataset_kwargs)`: the metadata carries `max_seq_lengths`
(prompt lengths in tokens), `tokenizer` (or the model args' `pretrained`: what sizes the prompts) and optionally
`seed` and `num_samples`. Every builder is seeded by (task, seed, length) alone, so a task's data does not depend on
which other tasks run with it. Imports are absolute: lm-eval imports this module by its dotted name.
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from hf_longssm.corpus import DEFAULT_CACHE, HELD_OUT_PLAYS, shakespeare_plays
from hf_longssm.evaluation.babilong import GENERATORS, build_babilong_text, held_out_lines, is_the_answer
from hf_longssm.evaluation.passkey import build_passkey_prompt, is_the_key
from hf_longssm.loading import load_tokenizer


# RULER's default length; lm-eval's metadata `max_seq_lengths` overrides it.
DEFAULT_LENGTHS = (4096,)
# 25 prompts per length: the passkey's 5 depths x 5 keys; enough to tell 0 % from 100 % on a CPU in minutes.
DEFAULT_NUM_SAMPLES = 25
DEFAULT_SEED = 0
PASSKEY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)

# bAbI task 1 ("single supporting fact"), the task BABILong hides in PG19 books; here the books are the held-out
# Shakespeare plays of the offline corpus, which no model trained on the corpus has seen.
PEOPLE = ("Mary", "John", "Daniel", "Sandra")
LOCATIONS = ("bathroom", "hallway", "garden", "office", "bedroom", "kitchen")
MOVES = ("moved to the", "went to the", "journeyed to the", "travelled to the", "went back to the")
FACT_HEADER = "Read the text and keep track of where each person goes.\n"
FACT_QUESTION = "\nQuestion: Where is {person}?\nAnswer:"

# RULER's essay-haystack needle tasks (lm_eval/tasks/ruler/niah_utils.py) by their RULER names.
RULER_ESSAY_VARIANTS: dict[str, dict[str, Any]] = {
    "single_2": {"type_needle_k": "words", "type_needle_v": "numbers"},
    "single_3": {"type_needle_k": "words", "type_needle_v": "uuids"},
    "multikey_1": {"type_needle_k": "words", "type_needle_v": "numbers", "num_needle_k": 4},
    "multiquery": {"type_needle_k": "words", "type_needle_v": "numbers", "num_needle_q": 4},
    "multivalue": {"type_needle_k": "words", "type_needle_v": "numbers", "num_needle_v": 4},
}
# Plays the offline punkt model is trained on (training split, fixed: the model is the same on every machine).
PUNKT_TRAINING_PLAYS = 8


# ----- common --------------------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _tokenizer(name: str):
    return load_tokenizer(name)


def _tokenizer_name(kwargs: dict[str, Any]) -> str:
    """The tokenizer (or model) the task metadata names."""
    name = next((kwargs[k] for k in ("tokenizer", "pretrained") if isinstance(kwargs.get(k), str) and kwargs[k]), None)
    if name is None:
        raise ValueError(
            "The hf_longssm tasks size their prompts in tokens and need the model's tokenizer: pass it in the task "
            'metadata, e.g. --metadata \'{"tokenizer": "path/to/model"}\' (hf-longssm lm-eval does this for you).'
        )
    return name


def _options(kwargs: dict[str, Any]) -> tuple[Any, list[int], int, int]:
    """(tokenizer, lengths, seed, num_samples) from the metadata lm-eval hands a builder."""
    name = _tokenizer_name(kwargs)
    lengths = [int(n) for n in kwargs.get("max_seq_lengths", DEFAULT_LENGTHS)]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"max_seq_lengths must be positive token counts, got {lengths}.")
    return (
        _tokenizer(name),
        lengths,
        int(kwargs.get("seed", DEFAULT_SEED)),
        int(kwargs.get("num_samples", DEFAULT_NUM_SAMPLES)),
    )


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _test_split(rows: list[dict]) -> dict[str, datasets.Dataset]:
    return {"test": datasets.Dataset.from_list(rows, split=datasets.Split.TEST)}


@contextlib.contextmanager
def global_seed(seed: str) -> Iterator[None]:
    """Seed Python's and NumPy's global generators for the block (RULER's samplers draw from them), then restore
    them: the rest of the evaluation sees the generators as they were."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(random.getrandbits(32))
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


# ----- passkey ---------------------------------------------------------------------------------------------------
def passkey(**kwargs: Any) -> dict[str, datasets.Dataset]:
    """`longssm_passkey`: a random 5-digit key at depths 0, 0.25, ..., 1 of a prompt of exactly `length` tokens.

    The prompt is `evaluation.passkey.build_passkey_prompt`'s, ending "The pass key is"; the answer is generated.
    """
    tokenizer, lengths, seed, num_samples = _options(kwargs)
    rows = []
    for length in lengths:
        rng = random.Random(f"passkey-{seed}-{length}")
        for index in range(num_samples):
            depth = PASSKEY_DEPTHS[index % len(PASSKEY_DEPTHS)]
            key = str(rng.randint(10000, 99999))
            ids, _ = build_passkey_prompt(tokenizer, length, depth, key)
            text = tokenizer.decode(ids)
            rows.append({"input": text, "target": key, "depth": depth, "length": len(ids), "max_length": length})
    return _test_split(rows)


def process_passkey(doc: dict, results: list[str]) -> dict[str, float]:
    """Right when the generated text's first number is the key, as `evaluation.passkey_retrieval` scores it."""
    return {"acc": float(is_the_key(results[0], doc["target"]))}


# ----- bAbI-style fact retrieval in books ----------------------------------------------------------------------
def _filler_lines(tokenizer_name: str, cache_dir: str) -> tuple[tuple[str, int], ...]:
    """Non-empty lines of the held-out plays with their token counts (newline included): `babilong.held_out_lines`,
    the filler `hf-longssm eval --task babilong_*` reads too."""
    return held_out_lines(_tokenizer(tokenizer_name), cache_dir)


def fact_retrieval(**kwargs: Any) -> dict[str, datasets.Dataset]:
    """`longssm_fact_retrieval`: BABILong's qa1 with book text as the haystack, as a 6-way multiple choice.

    Four facts ("Mary went to the garden.") sit at random lines of a passage of held-out Shakespeare; the asked
    person moves twice, so the answer is the later of two places (recalling the first one is wrong). All six
    locations are scored as continuations of one context: the adapter reads that context once.
    """
    tokenizer, lengths, seed, num_samples = _options(kwargs)
    name = _tokenizer_name(kwargs)
    lines = _filler_lines(name, str(kwargs.get("cache_dir", DEFAULT_CACHE)))
    rows = []
    for length in lengths:
        rng = random.Random(f"fact_retrieval-{seed}-{length}")
        for _ in range(num_samples):
            asked, *others = rng.sample(PEOPLE, 3)
            first, second = rng.sample(LOCATIONS, 2)
            facts = [(asked, first), (asked, second)] + [(person, rng.choice(LOCATIONS)) for person in others]
            order = rng.sample(range(len(facts)), len(facts))
            # The asked person's two facts keep their order: the second one is where the person is.
            first_at, second_at = order.index(0), order.index(1)
            if first_at > second_at:
                order[first_at], order[second_at] = 1, 0
            sentences = [f"{facts[i][0]} {rng.choice(MOVES)} {facts[i][1]}." for i in order]
            question = FACT_QUESTION.format(person=asked)
            fixed = sum(len(_encode(tokenizer, s + "\n")) for s in sentences)
            budget = length - len(_encode(tokenizer, FACT_HEADER + question)) - fixed
            passage, used, at = [], 0, rng.randrange(len(lines))
            while used + lines[at % len(lines)][1] <= budget:
                passage.append(lines[at % len(lines)][0])
                used += lines[at % len(lines)][1]
                at += 1
            # Insert from the last position backwards so that earlier positions stay valid and the order holds.
            positions = sorted(rng.randint(0, len(passage)) for _ in sentences)
            for position, sentence in zip(positions[::-1], sentences[::-1]):
                passage.insert(position, sentence)
            text = FACT_HEADER + "\n".join(passage) + question
            rows.append(
                {
                    "input": text,
                    "choices": list(LOCATIONS),
                    "label": LOCATIONS.index(second),
                    "length": len(_encode(tokenizer, text)),
                    "max_length": length,
                }
            )
    return _test_split(rows)


# ----- BABILong's offline twin: bAbI-style stories in held-out Shakespeare --------------------------------------
def babilong(task: str, **kwargs: Any) -> dict[str, datasets.Dataset]:
    """`longssm_babilong_<task>`: a story of `evaluation.babilong` (qa1 ... qa5) hidden at random lines of held-out
    Shakespeare, the question at the end, the one-word answer generated and scored by exact match. Prompts hold at
    most `max_length` tokens (filler lines are added while they fit). Seeded by (task, seed, length)."""
    if task not in GENERATORS:
        raise ValueError(f"Unknown BABILong task {task!r}: one of {sorted(GENERATORS)}.")
    tokenizer, lengths, seed, num_samples = _options(kwargs)
    lines = _filler_lines(_tokenizer_name(kwargs), str(kwargs.get("cache_dir", DEFAULT_CACHE)))
    rows = []
    for length in lengths:
        rng = random.Random(f"babilong-{task}-{seed}-{length}")
        for _ in range(num_samples):
            story = GENERATORS[task](rng)
            text = build_babilong_text(story, lines, length, lambda t: len(_encode(tokenizer, t)), rng)
            rows.append(
                {
                    "input": text,
                    "target": story.answer,
                    "question": story.question,
                    "length": len(_encode(tokenizer, text)),
                    "max_length": length,
                }
            )
    return _test_split(rows)


def babilong_qa1(**kwargs: Any) -> dict[str, datasets.Dataset]:
    return babilong("qa1", **kwargs)


def babilong_qa2(**kwargs: Any) -> dict[str, datasets.Dataset]:
    return babilong("qa2", **kwargs)


def babilong_qa3(**kwargs: Any) -> dict[str, datasets.Dataset]:
    return babilong("qa3", **kwargs)


def babilong_qa4(**kwargs: Any) -> dict[str, datasets.Dataset]:
    return babilong("qa4", **kwargs)


def babilong_qa5(**kwargs: Any) -> dict[str, datasets.Dataset]:
    return babilong("qa5", **kwargs)


def process_babilong(doc: dict, results: list[str]) -> dict[str, float]:
    """Right when the generated text's first word is the answer (`evaluation.babilong.is_the_answer`)."""
    return {"acc": float(is_the_answer(results[0], doc["target"]))}


# ----- perplexity of book text -----------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _held_out_ids(tokenizer_name: str, cache_dir: str) -> tuple[tuple[int, ...], ...]:
    tokenizer = _tokenizer(tokenizer_name)
    plays = shakespeare_plays(Path(cache_dir))
    return tuple(tuple(_encode(tokenizer, plays[title])) for title in sorted(HELD_OUT_PLAYS))


def book_perplexity(**kwargs: Any) -> dict[str, datasets.Dataset]:
    """`longssm_book_perplexity`: passages of `length` tokens from the held-out plays, scored whole
    (`loglikelihood_rolling`: bits per byte, byte and word perplexity), each from a seeded start in a seeded play."""
    tokenizer, lengths, seed, num_samples = _options(kwargs)
    name = _tokenizer_name(kwargs)
    plays = _held_out_ids(name, str(kwargs.get("cache_dir", DEFAULT_CACHE)))
    rows = []
    for length in lengths:
        rng = random.Random(f"book_perplexity-{seed}-{length}")
        candidates = [ids for ids in plays if len(ids) >= length]
        if not candidates:
            raise ValueError(f"No held-out play has {length} tokens; the longest has {max(map(len, plays))}.")
        for _ in range(num_samples):
            ids = rng.choice(candidates)
            start = rng.randrange(len(ids) - length + 1)
            text = tokenizer.decode(ids[start : start + length])
            rows.append({"text": text, "length": length, "max_length": length})
    return _test_split(rows)


# ----- RULER's essay needles, offline ----------------------------------------------------------------------------
def use_offline_punkt(cache_dir: Path | str = DEFAULT_CACHE) -> Path | None:
    """Make NLTK's English `punkt_tab` sentence splitter available without a download.

    RULER's `prepare_niah` downloads `punkt_tab` when it is imported and splits its essay haystack into sentences
    with it; NLTK's data cannot be fetched here (no package ships it). When no `punkt_tab` is installed, this trains
    NLTK's own Punkt model (unsupervised) on plays of the offline corpus's training split, once, writes it in the
    `punkt_tab` format under `cache_dir/nltk_data` and puts that folder on `nltk.data.path`: the import then finds
    it and downloads nothing, and `sent_tokenize` works. An installed `punkt_tab` is always preferred.

    Returns:
        `Path` of the model folder written or reused here, or `None` when NLTK already finds one.
    """
    import nltk
    from nltk.tabdata import TabEncoder
    from nltk.tokenize.punkt import PunktTrainer

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return None
    except LookupError:
        pass
    root = Path(cache_dir) / "nltk_data"
    target = root / "tokenizers" / "punkt_tab" / "english"
    if not (target / "ortho_context.tab").is_file():
        plays = shakespeare_plays(Path(cache_dir))
        training = sorted(title for title in plays if title not in HELD_OUT_PLAYS)[:PUNKT_TRAINING_PLAYS]
        trainer = PunktTrainer()
        trainer.train("\n".join(plays[title] for title in training), finalize=True)
        params, encoder = trainer.get_params(), TabEncoder()
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent))  # written whole, then renamed: no half model is seen
        (staging / "collocations.tab").write_text(encoder.tups2tab(params.collocations))
        (staging / "sent_starters.txt").write_text(encoder.set2txt(params.sent_starters))
        (staging / "abbrev_types.txt").write_text(encoder.set2txt(params.abbrev_types))
        (staging / "ortho_context.tab").write_text(encoder.ivdict2tab(params.ortho_context))
        try:
            staging.rename(target)
        except OSError:  # another process wrote it first
            shutil.rmtree(staging, ignore_errors=True)
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    return target


@lru_cache(maxsize=2)
def _essay_haystack(cache_dir: str) -> tuple[str, ...]:
    """The held-out plays as RULER's essay haystack: one list of words (RULER joins its essays the same way)."""
    plays = shakespeare_plays(Path(cache_dir))
    text = " ".join(plays[title] for title in sorted(HELD_OUT_PLAYS))
    return tuple(re.sub(r"\s+", " ", text).split(" "))


def ruler_essay_niah(variant: str, **kwargs: Any) -> dict[str, datasets.Dataset]:
    """RULER's essay needle-in-a-haystack task `niah_<variant>` with held-out Shakespeare as the essay.

    RULER's own sampler (`lm_eval.tasks.ruler.prepare_niah.generate_samples`) and template, seeded per length.
    """
    if variant not in RULER_ESSAY_VARIANTS:
        raise ValueError(f"Unknown RULER essay variant {variant!r}; choose from {sorted(RULER_ESSAY_VARIANTS)}.")
    tokenizer, lengths, seed, num_samples = _options(kwargs)
    cache_dir = str(kwargs.get("cache_dir", DEFAULT_CACHE))
    use_offline_punkt(cache_dir)
    from lm_eval.tasks.ruler.niah_utils import TEMPLATE
    from lm_eval.tasks.ruler.prepare_niah import generate_samples

    haystack = list(_essay_haystack(cache_dir))
    rows = []
    for length in lengths:
        with global_seed(f"niah_{variant}-{seed}-{length}"):
            rows += generate_samples(
                haystack,
                TOKENIZER=tokenizer,
                max_seq_length=length,
                template=TEMPLATE,
                type_haystack="essay",
                num_samples=num_samples,
                **RULER_ESSAY_VARIANTS[variant],
            )
    return _test_split(rows)


def process_niah(doc: dict, results: list[str]) -> dict[str, float]:
    """RULER's `string_match_all`: the share of the needles' values found in the generated text."""
    prediction = re.sub(r"[\x00-\x1f]", "\n", results[0].strip()).strip().lower()
    return {"acc": sum(value.lower() in prediction for value in doc["outputs"]) / len(doc["outputs"])}
