"""Documents -> streams -> segments (`hf_longssm.training.data`) and the collator."""

import pytest
import torch
from datasets import Dataset

import hf_longssm as hl


def test_tbtt_rows_continue_their_streams():
    """Row b at step k+1 holds the segment right after row b at step k (the data layout TBTT relies on)."""
    docs = [list(range(1, 200)), list(range(300, 420)), list(range(500, 700))]
    dataset = hl.data.SegmentDataset(docs, segment_length=10, num_streams=4, eos_token_id=0)
    collate = hl.DataCollatorForStatePassing()
    step0 = collate([dataset[i] for i in range(4)])
    step1 = collate([dataset[i] for i in range(4, 8)])
    flat = dataset.streams
    for row in range(4):
        assert step1["input_ids"][row, 0] == flat[row, 10]
        assert step0["shift_labels"][row, -1] == step1["input_ids"][row, 0]  # the boundary prediction is kept
        assert torch.equal(step0["labels"][row], step0["input_ids"][row])  # transformers: labels unshifted
    assert step0["reset_mask"].all() and (step0["segment_index"] == 0).all()


def test_streaming_dataset_shorter_than_a_segment_is_a_clear_error():
    streaming = Dataset.from_dict({"input_ids": [[1, 2, 3]] * 4}).to_iterable_dataset()
    segments = hl.data.build_segment_dataset(streaming, segment_length=64, num_streams=2, eos_token_id=0)
    with pytest.raises(ValueError, match="streaming dataset ended before"):
        list(segments)
    long_enough = Dataset.from_dict({"input_ids": [list(range(1, 40))] * 4}).to_iterable_dataset()
    items = list(hl.data.build_segment_dataset(long_enough, segment_length=16, num_streams=2, eos_token_id=0))
    assert len(items) >= 4 and [it["stream"] for it in items[:4]] == [0, 1, 0, 1]
    assert torch.equal(items[0]["labels"][-1:], items[2]["input_ids"][:1])
