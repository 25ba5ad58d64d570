"""Synthetic copying: the generator (answers recoverable, seeded, lengths as asked), the loss mask through streams,
collator and trainer, the accuracy's bookkeeping, and `hf-longssm eval --task copying` offline."""

import json
import random
from types import SimpleNamespace

import pytest
import torch

import hf_longssm as hl
from hf_longssm.evaluation import copying
from hf_longssm.sources import COPYING, load_documents
from hf_longssm.synthetic import COPY_SYMBOLS, PAD, SEPARATOR, CopyingVocabulary, copying_documents, copying_example
from hf_longssm.tokenization import byte_tokenizer
from hf_longssm.training.collator import DataCollatorForStatePassing
from hf_longssm.training.data import SegmentDataset, StreamingSegmentDataset, iter_token_documents
from tests.utils import tiny_model


TOKENIZER = byte_tokenizer()
VOCAB = CopyingVocabulary.from_tokenizer(TOKENIZER)


def test_every_document_fills_one_segment_and_scores_only_a_recoverable_copy():
    rows = copying_documents(TOKENIZER, length=32, num_documents=200, seed=3)
    lengths = set()
    for row in rows:
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) == len(labels) == 31  # + the stream's EOS = one segment of 32
        text = TOKENIZER.decode(ids)
        source, rest = text.split(SEPARATOR)
        copy = rest.rstrip(PAD)
        assert copy == source and set(source) <= set(COPY_SYMBOLS) and 1 <= len(source) <= 15
        lengths.add(len(source))
        # Scored: exactly the copy (labels equal the tokens there), -100 everywhere else.
        scored = [i for i, label in enumerate(labels) if label != -100]
        assert scored == list(range(len(source) + 1, 2 * len(source) + 1))
        assert all(labels[i] == ids[i] for i in scored)
    assert lengths == set(range(1, 16))  # every copy length of the range occurs


def test_the_generator_is_seeded():
    assert copying_documents(TOKENIZER, 32, 20, seed=1) == copying_documents(TOKENIZER, 32, 20, seed=1)
    assert copying_documents(TOKENIZER, 32, 20, seed=1) != copying_documents(TOKENIZER, 32, 20, seed=2)
    example = copying_example(random.Random(0), VOCAB, 7)
    assert len(example) == 15 and example[:7] == example[8:] and example[7] == VOCAB.separator


def test_bad_lengths_and_tokenizers_are_refused():
    with pytest.raises(ValueError, match="cannot hold a copying example"):
        copying_documents(TOKENIZER, 3, 1)
    with pytest.raises(ValueError, match="at least one symbol"):
        copying_example(random.Random(0), VOCAB, 0)

    class TwoTokensEach:
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1, 2]}

    with pytest.raises(ValueError, match="needs 'a' to be one token.*byte tokenizer"):
        CopyingVocabulary.from_tokenizer(TwoTokensEach())
    model = tiny_model("mamba2", vocab_size=257)
    for lengths in ([64, 32], [], [2, 8]):
        with pytest.raises(ValueError, match="strictly increasing and >= 3"):
            copying.copying_accuracy(model, TOKENIZER, lengths)
    with pytest.raises(ValueError, match="num_trials must be >= 1"):
        copying.copying_accuracy(model, TOKENIZER, [8], num_trials=0)


def test_the_offline_source_needs_the_segment_length():
    held_out = load_documents(COPYING, split="held_out", config="16")
    assert len(held_out) == 1024 and len(held_out[0]["input_ids"]) == 15
    assert held_out[0] == copying_documents(TOKENIZER, 16, 1, seed=1)[0]
    with pytest.raises(ValueError, match="needs dataset_config: the training segment length"):
        load_documents(COPYING, split="train")


@pytest.mark.parametrize("streaming", [False, True])
def test_the_loss_mask_travels_into_the_shifted_labels(streaming):
    rows = copying_documents(TOKENIZER, 16, 12, seed=0)
    documents = list(iter_token_documents(rows))
    assert all(isinstance(doc, tuple) for doc in documents)
    dataset = (StreamingSegmentDataset if streaming else SegmentDataset)(documents, 16, 2, eos_token_id=0)
    items = list(dataset)
    # Streams built independently: documents + EOS, the map-style dataset cuts the corpus in two halves, the
    # streaming one deals documents in turn.
    order = [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]] if streaming else [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    for item in items:
        stream = [label for d in order[item["stream"]] for label in rows[d]["labels"] + [0]]
        start = item["segment_index"] * 16
        assert item["labels"].tolist() == stream[start + 1 : start + 17]
        assert (item["input_ids"] == 0).sum() == 1  # one document (and its EOS) per segment
    assert len(items) == 10
    # Each segment is one document + its EOS: its targets are the document's labels shifted by one and the next
    # document's first token (a source symbol: not scored).
    first = next(item for item in items if item["segment_index"] == 0 and item["stream"] == 0)
    assert first["labels"].tolist() == rows[0]["labels"][1:] + [0, -100]
    batch = DataCollatorForStatePassing()(items[:2])
    # transformers' unshifted labels carry the same mask (the tokens counted for num_items_in_batch).
    assert torch.equal(batch["labels"][:, 1:] == -100, batch["shift_labels"][:, :-1] == -100)
    assert int((batch["shift_labels"] != -100).sum()) == int((batch["labels"][:, 1:] != -100).sum())


def test_labels_other_than_the_tokens_or_minus_100_are_refused():
    row = copying_documents(TOKENIZER, 16, 1)[0]
    row["labels"][-1] = 5
    with pytest.raises(ValueError, match="may only equal input_ids or be -100"):
        list(iter_token_documents([row]))


def test_the_trainer_scores_only_the_copy(tmp_path):
    model = tiny_model("mamba2", vocab_size=257)
    rows = copying_documents(TOKENIZER, 16, 8, seed=0)
    args = hl.StatePassingConfig(
        output_dir=str(tmp_path), state_init="zero", segment_length=16, per_device_train_batch_size=2, max_steps=1,
        use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = hl.StatePassingTrainer(model=model, args=args, train_dataset=rows, processing_class=TOKENIZER)
    batch = DataCollatorForStatePassing()([trainer.train_dataset[i] for i in (0, 1)])
    loss = trainer.compute_loss(model, dict(batch))
    logits = model(batch["input_ids"]).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["shift_labels"].flatten())
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    unmasked = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten())
    assert abs(loss.item() - unmasked.item()) > 1e-3  # the padding and sources would change it


class _Oracle:
    """`iter_segments` stand-in whose logits predict the true next token, except at `wrong` positions."""

    def __init__(self, wrong=()):
        self.wrong, self.calls = set(wrong), []

    def __call__(self, model, input_ids, segment_length, **attention):
        self.calls.append((input_ids.shape[1], segment_length))
        target = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)
        for t in self.wrong:
            target[:, t] = VOCAB.pad
        logits = torch.nn.functional.one_hot(target, 257).float()
        for start in range(0, input_ids.shape[1], segment_length):
            yield start, None, SimpleNamespace(logits=logits[:, start : start + segment_length]), None


def test_accuracy_counts_exactly_the_copied_tokens(monkeypatch):
    model = tiny_model("mamba2", vocab_size=257)
    oracle = _Oracle()
    monkeypatch.setattr(copying, "iter_segments", oracle)
    rows = copying.copying_accuracy(model, TOKENIZER, [10, 65], num_trials=2, segment_length=8)
    assert [(r["length"], r["copy_tokens"], r["token_accuracy"], r["exact_match"]) for r in rows] == [
        (10, 4, 1.0, 1.0),
        (65, 32, 1.0, 1.0),
    ]
    assert oracle.calls == [(9, 8), (9, 8), (65, 8), (65, 8)]  # n + | + n tokens (as training starts), in segments
    # One wrong prediction inside the copy (position n predicts x_1): one token of n, and no exact match.
    monkeypatch.setattr(copying, "iter_segments", _Oracle(wrong=[5]))
    (row,) = copying.copying_accuracy(model, TOKENIZER, [10], num_trials=3)
    assert row["token_accuracy"] == pytest.approx(3 / 4) and row["exact_match"] == 0.0
    # A wrong prediction outside the copy (inside the source symbols) changes nothing.
    monkeypatch.setattr(copying, "iter_segments", _Oracle(wrong=[2]))
    assert copying.copying_accuracy(model, TOKENIZER, [10], num_trials=3)[0]["exact_match"] == 1.0


def test_segmented_accuracy_is_the_one_pass_accuracy():
    model = tiny_model("mamba2", vocab_size=257)
    rows = copying.copying_accuracy(model, TOKENIZER, [24, 40], num_trials=4, segment_length=7, seed=5)
    rng, right = random.Random("copying-5-40"), 0
    for _ in range(4):
        ids = torch.tensor([copying_example(rng, VOCAB, 19)])
        predicted = model(ids).logits.argmax(-1)
        right += int((predicted[0, 19:38] == ids[0, 20:]).sum())
    assert rows[1]["token_accuracy"] == right / (19 * 4)
    # A length's examples do not depend on the other lengths asked.
    assert copying.copying_accuracy(model, TOKENIZER, [40], num_trials=4, segment_length=7, seed=5) == rows[1:]


def test_hf_longssm_eval_task_copying_writes_the_table_and_figure(tmp_path):
    path = tmp_path / "tiny"
    tiny_model("mamba2", vocab_size=257).save_pretrained(path)
    TOKENIZER.save_pretrained(path)
    out = tmp_path / "eval"
    results = hl.evaluate(str(path), tasks=["copying"], lengths=[16, 64], num_trials=2, output_dir=out)
    cells = results["copying"]["cells"]
    assert [(c["length"], c["copy_tokens"], c["trials"]) for c in cells] == [(16, 7, 2), (64, 31, 2)]
    assert json.loads((out / "copying.json").read_text())["results"][str(path)]["cells"] == cells
    assert (out / "copying.png").is_file()


def test_copying_eval_tasks_are_checked_before_training(tmp_path):
    with pytest.raises(ValueError, match="strictly increasing and >= 3"):
        hl.StatePassingConfig(output_dir=str(tmp_path), eval_tasks=["copying"], eval_task_lengths=[2, 8])

    class NoSeparator:
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1, 2] if text == SEPARATOR else [ord(text)]}

    args = hl.StatePassingConfig(
        output_dir=str(tmp_path), state_init="zero", segment_length=16, eval_tasks=["copying"], use_cpu=True,
        report_to=[],
    )  # fmt: skip
    with pytest.raises(ValueError, match="needs '\\|' to be one token"):
        hl.StatePassingTrainer(model=tiny_model("mamba2", vocab_size=257), args=args, processing_class=NoSeparator())


def test_text_rows_with_a_loss_mask_are_refused():
    with pytest.raises(ValueError, match="has 'text' and labels: a loss mask"):
        list(iter_token_documents([{"text": "abc", "labels": [-100, 98, 99]}], TOKENIZER))
