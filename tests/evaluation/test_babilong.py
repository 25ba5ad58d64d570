"""BABILong's offline twin: every story's answer is recoverable from the prompt, the generator is seeded, prompts
have the length asked, and `hf-longssm lm-eval --tasks longssm_babilong_qa1 ...` runs offline."""

import json
import random
import re

import pytest

from hf_longssm.evaluation import babilong
from hf_longssm.tokenization import byte_tokenizer


pytest.importorskip("lm_eval")

from hf_longssm.cli import main  # noqa: E402
from hf_longssm.evaluation.lm_eval_tasks import builders  # noqa: E402
from tests.utils import tiny_model  # noqa: E402


NAME = "|".join(babilong.PEOPLE)
PLACE = "|".join(babilong.PLACES)
THING = "|".join(babilong.OBJECTS)
MOVE = rf"^({NAME}) (?:{'|'.join(babilong.MOVES)}) ({PLACE})\.$"
PICK = rf"^({NAME}) (?:{'|'.join(babilong.PICKS)}) ({THING})\.$"


def solve(text: str) -> str:
    """Answer a prompt by reading its facts (the lines that are facts) and its question: what a perfect reader does.
    Written from the task definitions, independently of the generators."""
    lines = text.splitlines()
    question = text.rsplit("Question: ", 1)[1].split("\n")[0]
    where, holder, history = {}, {}, {}
    relations, gifts = [], []
    for line in lines:
        if m := re.match(MOVE, line):
            where[m[1]] = m[2]
            for thing, person in holder.items():
                if person == m[1]:
                    history.setdefault(thing, []).append(m[2])
        elif m := re.match(PICK, line):
            holder[m[2]] = m[1]
            history[m[2]] = [where.get(m[1])]
        elif m := re.match(rf"^The ({PLACE}) is (north|south|east|west) of the ({PLACE})\.$", line):
            relations.append((m[1], m[2], m[3]))
        elif m := re.match(rf"^({NAME}) gave the ({THING}) to ({NAME})\.$", line):
            gifts.append((m[1], m[2], m[3]))
    if m := re.match(r"Where is the (\w+)\?", question):
        return where[holder[m[1]]]
    if m := re.match(r"Where is (\w+)\?", question):
        return where[m[1]]
    if m := re.match(r"Where was the (\w+) before the (\w+)\?", question):
        places = history[m[1]]
        return places[places.index(m[2]) - 1]
    if m := re.match(r"What is (\w+) of the (\w+)\?", question):
        return next(a for a, d, b in relations if d == m[1] and b == m[2])
    if m := re.match(r"What is the (\w+) (\w+) of\?", question):
        return next(a for a, d, b in relations if b == m[1] and babilong.DIRECTIONS[d] == m[2])
    if m := re.match(r"Who gave the (\w+) to (\w+)\?", question):
        return next(g for g, t, r in gifts if t == m[1] and r == m[2])
    if m := re.match(r"Who did (\w+) give the (\w+) to\?", question):
        return next(r for g, t, r in gifts if g == m[1] and t == m[2])
    if m := re.match(r"What did (\w+) give to (\w+)\?", question):
        return next(t for g, t, r in gifts if g == m[1] and r == m[2])
    raise AssertionError(f"unknown question {question!r}")


@pytest.mark.parametrize("task", babilong.TASKS)
def test_every_answer_is_recoverable_from_its_prompt_and_the_generator_is_seeded(task):
    kwargs = {"tokenizer": "byte", "max_seq_lengths": [700, 2000], "num_samples": 12}
    rows = builders.babilong(task, **kwargs)["test"]
    assert rows.to_list() == builders.babilong(task, **kwargs)["test"].to_list()  # seeded
    assert rows.to_list() != builders.babilong(task, **kwargs, seed=1)["test"].to_list()
    longest_line = max(count for _, count in builders._filler_lines("byte", str(builders.DEFAULT_CACHE)))
    for row in rows:
        assert row["max_length"] - longest_line <= row["length"] <= row["max_length"]  # the length asked
        assert row["input"].endswith(f"Question: {row['question']}\nAnswer:")
        assert solve(row["input"]) == row["target"], row["question"]
    assert len({row["target"] for row in rows}) > 1  # not one answer for every story
    assert builders.process_babilong(rows[0], [f" {rows[0]['target'].upper()}."]) == {"acc": 1.0}
    assert builders.process_babilong(rows[0], [" nowhere"]) == {"acc": 0.0}


def test_answers_are_not_the_most_frequent_word_of_the_facts():
    """Distractors: over many qa1 stories, answering with the asked person's first place is wrong every time."""
    rng = random.Random(0)
    for _ in range(50):
        story = babilong.qa1(rng)
        person = story.question.split()[-1].rstrip("?")
        first = next(f for f in story.facts if f.startswith(person + " "))
        assert not first.endswith(f" {story.answer}.")


def test_a_story_longer_than_the_prompt_is_refused():
    story = babilong.qa3(random.Random(0))
    with pytest.raises(ValueError, match="cannot hold the story"):
        babilong.build_babilong_text(story, [("filler", 7)], 50, len, random.Random(0))


def test_lm_eval_runs_the_babilong_tasks_offline(tmp_path):
    folder = tmp_path / "tiny"
    tiny_model("mamba2", vocab_size=257).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    argv = ["lm-eval", "--model", str(folder), "--tasks", "longssm_babilong_qa1", "longssm_babilong_qa5"]
    main(argv + ["--max_length", "600", "--limit", "2", "--num_samples", "2", "--output_dir", str(tmp_path / "o")])
    [path] = (tmp_path / "o" / "tiny" / "length_600").glob("results_*.json")
    results = json.loads(path.read_text())["results"]
    assert set(results) == {"longssm_babilong_qa1", "longssm_babilong_qa5"}
    assert all(0.0 <= r["acc,none"] <= 1.0 for r in results.values())


def test_babilong_accuracy_reads_the_lm_eval_prompts_and_scores_exact_matches(monkeypatch):
    """`evaluation.babilong_accuracy` decodes after the very prompts of `longssm_babilong_<task>` and counts a story
    right exactly when the first generated word is its answer (a stand-in decoder answers every other story)."""
    import hf_longssm as hl
    from hf_longssm.evaluation import babilong as module

    model, tokenizer = tiny_model("mamba2", vocab_size=257).eval(), byte_tokenizer()
    rows = builders.babilong("qa2", tokenizer="byte", max_seq_lengths=[400], num_samples=4)["test"]
    seen = []

    def decoder(model, state, first_token, max_new_tokens):
        answer = rows[len(seen)]["target"] if len(seen) % 2 == 0 else "nowhere"
        seen.append(state)
        return tokenizer(f" {answer}.", add_special_tokens=False)["input_ids"]

    monkeypatch.setattr(module, "greedy_from_state", decoder)
    cells = hl.evaluation.babilong_accuracy(model, tokenizer, "qa2", [400], num_samples=4, segment_length=128)
    mean_tokens = sum(row["length"] for row in rows) / 4  # the same prompts as the lm-eval task's
    assert cells == [{"length": 400, "accuracy": 0.5, "samples": 4, "mean_tokens": mean_tokens}]
    assert len(seen) == 4


def test_hf_longssm_eval_runs_a_babilong_task(tmp_path):
    from hf_longssm.cli.eval import main as eval_main

    folder = tmp_path / "tiny"
    tiny_model("mamba2", vocab_size=257).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    argv = ["--model", str(folder), "--task", "babilong_qa4", "--lengths", "300", "600", "--num_trials", "2"]
    payload = json.loads(eval_main([*argv, "--output_dir", str(tmp_path / "o")]).read_text())
    cells = payload["results"][str(folder)]["cells"]
    assert [c["length"] for c in cells] == [300, 600] and all(c["samples"] == 2 for c in cells)
    assert (tmp_path / "o" / "babilong_qa4.png").is_file()


def test_prompts_longer_than_the_filler_read_it_again_and_fit_exactly():
    story = babilong.qa1(random.Random(0))
    filler = [("To be, or not to be", 20), ("that is the question", 21)]
    count = lambda text: len(text.encode())  # noqa: E731 (bytes: the byte tokenizer's count)
    text = babilong.build_babilong_text(story, filler, 2000, count, random.Random(1))
    assert 2000 - 21 <= count(text) <= 2000 and text.count("that is the question") > 30
    assert [line for line in text.splitlines() if line in story.facts] == list(story.facts)


def test_the_answer_word_is_read_through_punctuation_and_case():
    assert babilong.is_the_answer(' "Kitchen".', "kitchen") and babilong.is_the_answer(" *mary*", "Mary")
    assert not babilong.is_the_answer(" kitchens", "kitchen") and not babilong.is_the_answer("", "kitchen")
