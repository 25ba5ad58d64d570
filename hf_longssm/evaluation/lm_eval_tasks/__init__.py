"""The project's lm-evaluation-harness tasks: YAML configs in this folder, read by lm-eval through `include_path`.

Every task builds its data locally and seeded, at the lengths given in lm-eval's task metadata
(`max_seq_lengths`), sized with the model's tokenizer (metadata `tokenizer` or `pretrained`):

* `longssm_book_perplexity` (loglikelihood_rolling): passages of held-out Shakespeare, scored whole (bits per byte);
* `longssm_passkey` (generate_until): a 5-digit key hidden at a depth in repeated filler (`evaluation.passkey`);
* `longssm_fact_retrieval` (multiple_choice): bAbI qa1 ("where is Mary?"), the facts scattered in held-out
  Shakespeare, as BABILong hides them in PG19 books;
* `longssm_niah_single_2`, `_single_3`, `_multikey_1`, `_multiquery`, `_multivalue` (generate_until): RULER's
  essay-haystack needle tasks with held-out Shakespeare as the essay (RULER reads Paul Graham's essays from the Hub).

The data builders and scorers are in `builders.py`; nothing here imports lm-eval (the RULER variants import its
RULER helpers when they build data).
"""

from pathlib import Path


TASKS_DIR = Path(__file__).resolve().parent


__all__ = ["TASKS_DIR"]
