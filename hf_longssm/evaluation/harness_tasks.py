"""The long-context task suite for lm-evaluation-harness: this project's tasks (`lm_eval_tasks/`) and RULER's that run
offline, a `TaskManager` that sizes them to given lengths, and the RULER tasks a tokenizer cannot run at a length.

`harness.py` re-exports everything here; `LongSSMLM` (the model side) lives there.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lm_eval.tasks
from lm_eval.tasks import TaskManager

from .lm_eval_tasks import TASKS_DIR
from .lm_eval_tasks.builders import global_seed, use_offline_punkt


# RULER tasks that build their data locally and run offline (with `use_offline_punkt` for the NLTK import).
RULER_OFFLINE_TASKS = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt", "ruler_cwe", "ruler_fwe")
# RULER tasks that read a Hub dataset, which cannot be fetched offline; the essay needles have offline twins here.
RULER_DOWNLOAD_TASKS = {
    "niah_single_2": "baber/paul_graham_essays (offline twin: longssm_niah_single_2)",
    "niah_single_3": "baber/paul_graham_essays (offline twin: longssm_niah_single_3)",
    "niah_multikey_1": "baber/paul_graham_essays (offline twin: longssm_niah_multikey_1)",
    "niah_multiquery": "baber/paul_graham_essays (offline twin: longssm_niah_multiquery)",
    "niah_multivalue": "baber/paul_graham_essays (offline twin: longssm_niah_multivalue)",
    "ruler_qa_squad": "SQuAD",
    "ruler_qa_hotpot": "HotpotQA",
}
LONGSSM_TASKS = (
    "longssm_book_perplexity",
    "longssm_passkey",
    "longssm_fact_retrieval",
    "longssm_niah_single_2",
    "longssm_niah_single_3",
    "longssm_niah_multikey_1",
    "longssm_niah_multiquery",
    "longssm_niah_multivalue",
)
# Every task of this suite builds its data locally: `hf-longssm lm-eval`'s default.
OFFLINE_TASKS = LONGSSM_TASKS + RULER_OFFLINE_TASKS
# lm-eval's RULER folder; indexing it and ours takes 0.1 s, lm-eval's full index (14k tasks) about 10 s.
RULER_DIR = Path(lm_eval.tasks.__file__).resolve().parent / "ruler"


def ruler_problems(tasks: Sequence[str], tokenizer: Any, length: int) -> dict[str, str]:
    """RULER tasks of `tasks` whose data generator would never finish with this tokenizer at `length`, and why.

    Two of RULER's samplers shrink their input until it fits and loop forever when even the smallest does not:
    `ruler_vt` builds a 500-token in-context example (a byte-level tokenizer needs ~900 tokens for it, at any
    length) and `ruler_cwe` needs room for 10 common words repeated 30 times (6 below 4096 tokens). Both are probed
    with the smallest input RULER would try, with the global generators restored afterwards.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer) if hasattr(tokenizer, "tok_encode") else tokenizer
    problems = {}
    if "ruler_vt" in tasks:
        from lm_eval.tasks.ruler import vt_utils

        with global_seed("probe"):
            example, _ = vt_utils.generate_input_output(5, 1, 4, is_icl=True)
        needed = len(tokenizer(example).input_ids) + 30
        if needed >= 500:
            problems["ruler_vt"] = (
                f"its fixed 500-token in-context example needs {needed} tokens with this tokenizer (RULER's generator "
                "would loop forever); it runs with subword tokenizers such as GPT-NeoX's"
            )
    if "ruler_cwe" in tasks:
        from lm_eval.tasks.ruler import cwe_utils

        rng_state = cwe_utils.RNG.getstate()
        with global_seed("probe"):
            _, text, _ = cwe_utils.generate_input_output(10, length)
        cwe_utils.RNG.setstate(rng_state)
        needed = len(tokenizer(text).input_ids) + 120
        if needed > length:
            problems["ruler_cwe"] = (
                f"its smallest input needs {needed} tokens with this tokenizer, more than {length} (RULER's "
                "generator would loop forever); use a longer length"
            )
    return problems


def task_manager(
    tokenizer: Any,
    lengths: Sequence[int],
    *,
    seed: int = 0,
    num_samples: int | None = None,
    include_path: Sequence[str | os.PathLike] = (),
    include_defaults: bool = False,
    save_tokenizer_to: str | os.PathLike | None = None,
) -> TaskManager:
    """An lm-eval `TaskManager` for long-context runs: this project's tasks, RULER's, at `lengths`, offline.

    Args:
        tokenizer: what sizes the prompts: a `LongSSMLM` (its tokenizer), a tokenizer object, or a name or folder
            `AutoTokenizer` loads. RULER's tasks load it with `AutoTokenizer.from_pretrained`, so an object is saved
            to a folder first (`save_tokenizer_to`, else a fresh temporary folder).
        lengths (`list[int]`): prompt lengths in tokens (the tasks' `max_seq_lengths`).
        seed (`int`, *optional*, defaults to 0): the seed of this project's tasks (RULER's draw from lm-eval's
            seeded global generators: `simple_evaluate(random_seed=..., numpy_random_seed=...)`).
        num_samples (`int`, *optional*): prompts per length for this project's tasks (default 25).
        include_path (`list[str]`, *optional*): more task folders.
        include_defaults (`bool`, *optional*, defaults to `False`): also index all of lm-eval's tasks (~10 s);
            without it only RULER's and this project's are known.
        save_tokenizer_to (`str`, *optional*): where to save a tokenizer object for RULER.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer) if hasattr(tokenizer, "tok_encode") else tokenizer
    if not isinstance(tokenizer, (str, os.PathLike)):
        folder = Path(save_tokenizer_to or tempfile.mkdtemp(prefix="hf_longssm_tokenizer_"))
        tokenizer.save_pretrained(folder)
        tokenizer = folder
    use_offline_punkt()  # before lm-eval imports RULER's prepare_niah, which otherwise tries to download punkt_tab
    metadata: dict[str, Any] = {"tokenizer": str(tokenizer), "max_seq_lengths": [int(n) for n in lengths]}
    metadata["seed"] = seed
    if num_samples is not None:
        metadata["num_samples"] = int(num_samples)
    paths = [str(TASKS_DIR), *map(str, include_path)]
    if not include_defaults:
        paths.insert(0, str(RULER_DIR))
    return TaskManager(include_path=paths, include_defaults=include_defaults, metadata=metadata)
