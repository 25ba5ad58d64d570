"""bAbI-style stories for BABILong's offline twin (`longssm_babilong_qa1` ... `qa5`): facts, a question, a one-word
answer.

BABILong (Kuratov et al., 2024) hides the supporting facts of bAbI questions in long book text and asks the question
at the end. The stories here are written for hf_longssm in bAbI's style (no bAbI text is copied), one generator per
task, each drawing from a seeded `random.Random`:

| task | bAbI name | the answer needs |
|---|---|---|
| qa1 | single supporting fact | the last place a person went to |
| qa2 | two supporting facts | who holds an object, then where that person went |
| qa3 | three supporting facts | where an object was before it reached a place (pick up, move, move) |
| qa4 | two-argument relations | one spatial relation among several ("north of") |
| qa5 | three-argument relations | giver, receiver or object of one of several hand-overs |

Each story has distractor facts about other people, places and objects, placed at random among the others, so no
answer can be read off the words the question repeats or the position of a fact. `build_babilong_text` hides the
facts, in their order, at random lines of the filler (`lm_eval_tasks.builders` uses held-out Shakespeare) and asks
the question at the end; `is_the_answer` scores the first word generated (exact match, case and punctuation
ignored), cut at `STOP` as the lm-eval tasks cut it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..corpus import DEFAULT_CACHE, HELD_OUT_PLAYS, shakespeare_plays
from ..forward import eval_mode, prefill
from ..modeling import input_device
from .passkey import greedy_from_state


PEOPLE = ("Mary", "John", "Daniel", "Sandra", "Fred", "Bill", "Julie", "Emma")
PLACES = ("bathroom", "hallway", "garden", "office", "bedroom", "kitchen", "cellar", "library")
OBJECTS = ("apple", "football", "milk", "key", "book", "lantern")
MOVES = ("moved to the", "went to the", "journeyed to the", "travelled to the", "went back to the")
PICKS = ("picked up the", "grabbed the", "got the", "took the")
DIRECTIONS = {"north": "south", "south": "north", "east": "west", "west": "east"}
HEADER = "Read the text and answer the question about it with one word.\n"
# Where an answer ends: the lm-eval tasks' `until` and what `babilong_accuracy` cuts at, so both score alike.
STOP = ("\n", ".")
QUESTION = "\nQuestion: {question}\nAnswer:"
TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")


@dataclass(frozen=True)
class Story:
    """`facts` (sentences, in the order they happened), the `question` and its one-word `answer`."""

    facts: tuple[str, ...]
    question: str
    answer: str


def _move(rng: random.Random, person: str, place: str) -> str:
    return f"{person} {rng.choice(MOVES)} {place}."


def _interleave(rng: random.Random, first: list[str], second: list[str]) -> tuple[str, ...]:
    """The two lists merged at random, each in its own order (a distractor's facts anywhere among the others)."""
    slots = [0] * len(first) + [1] * len(second)
    rng.shuffle(slots)
    sources = [iter(first), iter(second)]
    return tuple(next(sources[slot]) for slot in slots)


def qa1(rng: random.Random) -> Story:
    """Where is P? P moved twice (the first place is a wrong answer); two others moved too."""
    asked, *others = rng.sample(PEOPLE, 3)
    first, last = rng.sample(PLACES, 2)
    facts = [(asked, first), (asked, last)] + [(p, rng.choice(PLACES)) for p in others]
    rng.shuffle(facts)
    # The asked person's two moves keep their order: the later one is the answer.
    at = [i for i, (p, _) in enumerate(facts) if p == asked]
    facts[at[0]], facts[at[1]] = (asked, first), (asked, last)
    return Story(tuple(_move(rng, p, place) for p, place in facts), f"Where is {asked}?", last)


def qa2(rng: random.Random) -> Story:
    """Where is the O? Its holder picked it up, then went somewhere; another person carries another object."""
    holder, other = rng.sample(PEOPLE, 2)
    obj, other_obj = rng.sample(OBJECTS, 2)
    start, last, elsewhere = rng.sample(PLACES, 3)
    held = [_move(rng, holder, start), f"{holder} {rng.choice(PICKS)} {obj}.", _move(rng, holder, last)]
    distractor = [f"{other} {rng.choice(PICKS)} {other_obj}.", _move(rng, other, elsewhere)]
    return Story(_interleave(rng, held, distractor), f"Where is the {obj}?", last)


def qa3(rng: random.Random) -> Story:
    """Where was the O before the L? Picked up, carried to B, then to L, then dropped: the answer is B."""
    holder, other = rng.sample(PEOPLE, 2)
    obj = rng.choice(OBJECTS)
    start, before, last, elsewhere = rng.sample(PLACES, 4)
    held = [
        _move(rng, holder, start),
        f"{holder} {rng.choice(PICKS)} {obj}.",
        _move(rng, holder, before),
        _move(rng, holder, last),
        f"{holder} dropped the {obj}.",
    ]
    distractor = [_move(rng, other, elsewhere), _move(rng, other, rng.choice(PLACES))]
    return Story(_interleave(rng, held, distractor), f"Where was the {obj} before the {last}?", before)


def qa4(rng: random.Random) -> Story:
    """What is D of X? Two relations about four places; the question names one of them in either direction."""
    a, b, c, d = rng.sample(PLACES, 4)
    direction, other_direction = rng.sample(sorted(DIRECTIONS), 2)
    facts = [f"The {a} is {direction} of the {b}.", f"The {c} is {other_direction} of the {d}."]
    rng.shuffle(facts)
    if rng.random() < 0.5:
        return Story(tuple(facts), f"What is {direction} of the {b}?", a)
    return Story(tuple(facts), f"What is the {b} {DIRECTIONS[direction]} of?", a)


def qa5(rng: random.Random) -> Story:
    """Who gave, who received or what was given, in one of three hand-overs (one object passed on twice)."""
    giver, receiver, third, fourth = rng.sample(PEOPLE, 4)
    obj, other_obj = rng.sample(OBJECTS, 2)
    facts = [
        f"{giver} gave the {obj} to {receiver}.",
        f"{third} gave the {other_obj} to {fourth}.",
        f"{receiver} gave the {obj} to {third}.",
    ]
    kind = rng.randrange(3)
    if kind == 0:
        return Story(tuple(facts), f"Who gave the {obj} to {receiver}?", giver)
    if kind == 1:
        return Story(tuple(facts), f"Who did {giver} give the {obj} to?", receiver)
    return Story(tuple(facts), f"What did {third} give to {fourth}?", other_obj)


GENERATORS: dict[str, Callable[[random.Random], Story]] = {
    "qa1": qa1,
    "qa2": qa2,
    "qa3": qa3,
    "qa4": qa4,
    "qa5": qa5,
}


def build_babilong_text(
    story: Story, filler: Sequence[tuple[str, int]], budget: int, count: Callable[[str], int], rng: random.Random
) -> str:
    """The prompt: header, filler lines with the story's facts at random lines (in order), the question.

    Args:
        filler (`Sequence[tuple[str, int]]`): lines of distractor text with their token counts (newline included).
        budget (`int`): the prompt's length in tokens; filler lines are added while they fit.
        count (`Callable[[str], int]`): a text's token count.
    """
    question = QUESTION.format(question=story.question)
    room = budget - count(HEADER + question) - sum(count(fact + "\n") for fact in story.facts)
    if room < 0:
        raise ValueError(f"{budget} tokens cannot hold the story itself ({budget - room} tokens); ask for more.")
    # The filler is read on from a random line and starts over at its end, for prompts longer than the filler.
    passage, used, at = [], 0, rng.randrange(len(filler))
    while used + filler[at % len(filler)][1] <= room:
        passage.append(filler[at % len(filler)][0])
        used += filler[at % len(filler)][1]
        at += 1
    # Inserted from the last position backwards: earlier positions stay valid and the facts keep their order.
    positions = sorted(rng.randint(0, len(passage)) for _ in story.facts)
    lines = [(line, False) for line in passage]
    for position, fact in zip(positions[::-1], story.facts[::-1]):
        lines.insert(position, (fact, True))
    text = HEADER + "\n".join(line for line, _ in lines) + question
    # Pieces counted apart can differ by a token from the whole (BPE merges across a join): drop filler lines from
    # the end until the prompt fits.
    while count(text) > budget:
        last_filler = max(i for i, (_, is_fact) in enumerate(lines) if not is_fact)
        del lines[last_filler]
        text = HEADER + "\n".join(line for line, _ in lines) + question
    return text


def is_the_answer(text: str, answer: str) -> bool:
    """Whether the generated text's first word is the answer (case and punctuation around it ignored)."""
    word = re.match(r"[\W_]*([A-Za-z]+)", text)
    return word is not None and word.group(1).lower() == answer.lower()


# Tokens generated for an answer: one word (byte-level: up to 9 bytes and a space) and what follows it.
ANSWER_TOKENS = 10


@lru_cache(maxsize=4)
def held_out_lines(tokenizer, cache_dir: str = str(DEFAULT_CACHE)) -> tuple[tuple[str, int], ...]:
    """Non-empty lines of the held-out Shakespeare plays with their token counts (newline included): the filler."""
    plays = shakespeare_plays(Path(cache_dir))
    lines = [line for play in sorted(HELD_OUT_PLAYS) for line in plays[play].splitlines() if line.strip()]
    counts = [len(ids) for ids in tokenizer([line + "\n" for line in lines], add_special_tokens=False)["input_ids"]]
    return tuple(zip(lines, counts))


@torch.no_grad()
def babilong_accuracy(
    model,
    tokenizer,
    task: str,
    lengths: Sequence[int],
    *,
    num_samples: int = 10,
    segment_length: int = 4096,
    seed: int = 0,
    attention_state: str = "window",
    attention_window: int | None = None,
) -> list[dict]:
    """Exact-match accuracy on `task` (qa1 ... qa5) per prompt length, the prompts those of the lm-eval task
    `longssm_babilong_<task>` (same seed, same stories, same filler).

    Each prompt is prefilled in segments with the state carried, then the answer is decoded greedily from that state
    (`passkey.greedy_from_state`); right when its first word is the answer.

    Returns:
        `list[dict]`: `{"length", "accuracy", "samples", "mean_tokens"}` per length (`mean_tokens`: the prompts'
        real length, at most `length`).
    """
    if task not in GENERATORS:
        raise ValueError(f"Unknown BABILong task {task!r}: one of {sorted(GENERATORS)}.")
    filler = held_out_lines(tokenizer)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    device, cells = input_device(model), []
    with eval_mode(model):
        for length in lengths:
            rng, correct, tokens = random.Random(f"babilong-{task}-{seed}-{length}"), 0, 0
            for _ in range(num_samples):
                story = GENERATORS[task](rng)
                text = build_babilong_text(story, filler, length, count, rng)
                # Encoded as the lm-eval adapter encodes a request (the tokenizer's own special tokens).
                ids = torch.tensor([tokenizer(text)["input_ids"]], device=device)
                _, state = prefill(model, ids[:, :-1], segment_length, attention_state=attention_state,
                                   attention_window=attention_window)  # fmt: skip
                generated = tokenizer.decode(greedy_from_state(model, state, ids[:, -1:], ANSWER_TOKENS))
                correct += is_the_answer(re.split("|".join(map(re.escape, STOP)), generated)[0], story.answer)
                tokens += ids.shape[1]
            cells.append(
                {"length": length, "accuracy": correct / num_samples, "samples": num_samples,
                 "mean_tokens": tokens / num_samples}
            )  # fmt: skip
    return cells
