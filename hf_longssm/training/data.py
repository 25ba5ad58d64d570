"""Documents -> parallel streams -> segments.

Documents are tokenized, joined with EOS and laid out as `num_streams` contiguous streams, each cut into segments of
`segment_length` tokens (plus one token of look-ahead for the shifted labels). Streams are never padded.

A document may carry a loss mask: `labels` equal to its `input_ids` except -100 where a token is not a target (the
copying task scores only the copy); the mask travels with the tokens into the segments' shifted labels.

Item `k * num_streams + s` is segment `k` of stream `s`, so reading the dataset in order with a global batch of
`num_streams` rows gives every row the next segment of *its* stream at every step. Accelerate hands rank `r` rows
`r * B .. (r + 1) * B - 1` of each global batch (map-style datasets through its batch-sampler shard, iterable ones
through dispatch or shards alike), so a stream stays on the same row and rank through gradient accumulation, and
the carried state (TBTT) continues it. For the other interventions the segments may be shuffled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from transformers.utils import logging


logger = logging.get_logger(__name__)


Document = list[int] | tuple[list[int], list[int]]  # token ids, or (token ids, labels with -100 where unscored)
IGNORE_INDEX = -100  # transformers' loss ignores this label


def iter_token_documents(dataset, tokenizer=None, text_column: str = "text") -> Iterator[Document]:
    """Token ids of every document of `dataset` (rows with `input_ids`, or `text` tokenized by `tokenizer`), or
    `(input_ids, labels)` for a row whose `labels` mask tokens out of the loss (-100); empty documents are counted
    and reported (each would add only an EOS to its stream)."""
    empty = total = 0
    for doc in _token_documents(dataset, tokenizer, text_column):
        total += 1
        empty += not (doc[0] if isinstance(doc, tuple) else doc)
        yield doc
    if empty:
        logger.warning(
            f"{empty} of {total} documents have no tokens: each adds only an EOS to its stream"
            f"{'; the run would train on EOS tokens alone' if empty == total else ''}. Check the data (text_column, "
            "empty files)."
        )


def _token_documents(dataset, tokenizer, text_column: str) -> Iterator[Document]:
    for index, row in enumerate(dataset):
        mask = row.get("attention_mask")
        if mask is not None and not all(int(m) == 1 for m in mask):
            raise ValueError(
                f"Document {index} has an attention_mask with zeros: padded rows would feed pad tokens into the "
                "carried state. Give unpadded documents of any length (they are joined with EOS into streams) and "
                "drop the attention_mask column."
            )
        if "input_ids" in row:
            ids = row["input_ids"]
            ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
            labels = row.get("labels")
            labels = labels.tolist() if isinstance(labels, torch.Tensor) else labels
            if labels is None or list(labels) == ids:
                yield ids
                continue
            if len(labels) != len(ids) or any(lab not in (tok, IGNORE_INDEX) for lab, tok in zip(labels, ids)):
                raise ValueError(
                    f"Document {index} has labels that differ from its input_ids. Training targets are the next "
                    f"tokens of the documents themselves: labels may only equal input_ids or be {IGNORE_INDEX} (a "
                    "token left out of the loss), position by position; otherwise drop the labels column."
                )
            yield ids, list(labels)
        elif text_column in row:
            if row.get("labels") is not None:  # a mask over tokens the text has not been split into yet
                raise ValueError(
                    f"Document {index} has {text_column!r} and labels: a loss mask (-100 per token) needs the tokens "
                    "it masks. Give input_ids with the labels, or drop the labels column."
                )
            if tokenizer is None:
                raise ValueError(f"Rows have {text_column!r}: pass the tokenizer as `processing_class`.")
            yield tokenizer(row[text_column], add_special_tokens=False)["input_ids"]
        else:
            raise ValueError(f"Each row needs `input_ids` or {text_column!r}; got columns {sorted(row)}.")


def _split(doc: Document, eos_token_id: int) -> tuple[list[int], list[int]]:
    """A document's tokens and labels, the EOS that ends it appended to both (it is a target)."""
    ids, labels = doc if isinstance(doc, tuple) else (doc, doc)
    return [*ids, eos_token_id], [*labels, eos_token_id]


def _item(
    window: list[int],
    labels: list[int],
    eos_token_id: int,
    previous_token: int | None,
    segment_index: int,
    stream: int,
) -> dict:
    return {
        "input_ids": torch.tensor(window[:-1], dtype=torch.long),
        "labels": torch.tensor(labels[1:], dtype=torch.long),  # already shifted: the boundary token is kept
        # A document starts at the first token of this segment (the stream's start, or right after an EOS).
        "reset_mask": previous_token is None or previous_token == eos_token_id,
        "segment_index": segment_index,
        "stream": stream,
    }


class SegmentDataset(Dataset):
    """Map-style: the whole corpus is laid out at once (see the module docstring for the item order).

    Args:
        documents (`Iterable[list[int]]`): token ids per document, or `(input_ids, labels)` pairs whose labels are
            -100 where a token is not a target.
        segment_length (`int`): tokens per segment.
        num_streams (`int`): parallel streams; for TBTT the global batch size (per-device batch x processes).
        eos_token_id (`int`): appended to every document.
    """

    def __init__(self, documents: Iterable[Document], segment_length: int, num_streams: int, eos_token_id: int):
        if eos_token_id is None:
            raise ValueError("Documents are joined with EOS: the tokenizer (or model config) needs an eos_token_id.")
        tokens: list[int] = []
        labels: list[int] = []
        num_documents = 0
        for doc in documents:
            doc_tokens, doc_labels = _split(doc, eos_token_id)
            tokens.extend(doc_tokens)
            labels.extend(doc_labels)
            num_documents += 1
        stream_len = len(tokens) // num_streams
        self.segments_per_stream = (stream_len - 1) // segment_length
        if self.segments_per_stream < 1:
            raise ValueError(
                f"The dataset has {len(tokens)} tokens in {num_documents} documents: not enough for one segment of "
                f"{segment_length} (+1) tokens in each of {num_streams} streams. Lower `segment_length` or the batch "
                "size, or add data."
            )
        self.streams = torch.tensor(tokens[: stream_len * num_streams], dtype=torch.long).view(num_streams, -1)
        # Only a corpus with a loss mask keeps a second copy of its streams.
        masked = labels != tokens
        self.labels = torch.tensor(labels[: stream_len * num_streams]).view(num_streams, -1) if masked else None
        self.segment_length, self.num_streams, self.eos_token_id = segment_length, num_streams, eos_token_id

    def __len__(self) -> int:
        return self.segments_per_stream * self.num_streams

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):  # (also ends iteration by indexing, as `list(dataset)` does)
            raise IndexError(f"Segment {index} of a dataset of {len(self)}.")
        segment_index, stream = divmod(index, self.num_streams)
        start = segment_index * self.segment_length
        end = start + self.segment_length + 1
        window = self.streams[stream, start:end].tolist()
        labels = window if self.labels is None else self.labels[stream, start:end].tolist()
        previous = None if start == 0 else int(self.streams[stream, start - 1])
        return _item(window, labels, self.eos_token_id, previous, segment_index, stream)


class StreamingSegmentDataset(IterableDataset):
    """Iterable: streams are filled document by document (each document goes to the shortest stream) and one segment
    per stream is yielded, in stream order, as soon as every stream holds one. Works with `datasets` streaming."""

    def __init__(self, documents: Iterable[Document], segment_length: int, num_streams: int, eos_token_id: int):
        if eos_token_id is None:
            raise ValueError("Documents are joined with EOS: the tokenizer (or model config) needs an eos_token_id.")
        self.documents, self.segment_length = documents, segment_length
        self.num_streams, self.eos_token_id = num_streams, eos_token_id

    def __iter__(self) -> Iterator[dict]:
        length, streams = self.segment_length, self.num_streams
        buffers: list[list[int]] = [[] for _ in range(streams)]
        label_buffers: list[list[int]] = [[] for _ in range(streams)]
        previous: list[int | None] = [None] * streams
        segment_index = 0
        for doc in self.documents:
            shortest = min(range(streams), key=lambda s: len(buffers[s]))
            doc_tokens, doc_labels = _split(doc, self.eos_token_id)
            buffers[shortest].extend(doc_tokens)
            label_buffers[shortest].extend(doc_labels)
            while all(len(b) >= length + 1 for b in buffers):
                for s in range(streams):
                    window, labels = buffers[s][: length + 1], label_buffers[s][: length + 1]
                    yield _item(window, labels, self.eos_token_id, previous[s], segment_index, s)
                    previous[s] = buffers[s][length - 1]
                    del buffers[s][:length], label_buffers[s][:length]
                segment_index += 1
        worker = get_worker_info()
        if segment_index == 0 and not (worker is not None and worker.id > 0 and not any(buffers)):
            # (A data-loader worker given none of the shards, e.g. 1 shard for 2 workers, has nothing to read.)
            raise ValueError(
                f"The streaming dataset ended before every one of {streams} streams held one segment of {length} "
                f"(+1) tokens (they hold {[len(b) for b in buffers]}). Lower `segment_length` or the batch size."
            )


class _TokenDocuments:
    """Re-iterable token documents of a streaming dataset (every epoch reads the stream again); a module-level class,
    so data-loader workers started with `spawn` can pickle it."""

    def __init__(self, dataset, tokenizer, text_column: str):
        self.dataset, self.tokenizer, self.text_column = dataset, tokenizer, text_column

    def __iter__(self) -> Iterator[Document]:
        return iter_token_documents(self.dataset, self.tokenizer, self.text_column)


def build_segment_dataset(
    dataset,
    segment_length: int,
    num_streams: int,
    eos_token_id: int,
    tokenizer=None,
    text_column: str = "text",
) -> Dataset | IterableDataset:
    """Documents (a `datasets` dataset, streaming or not, or any iterable of rows) -> segments."""
    if isinstance(dataset, (SegmentDataset, StreamingSegmentDataset)):
        return dataset
    streaming = isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__")
    if streaming:
        documents = _TokenDocuments(dataset, tokenizer, text_column)
        return StreamingSegmentDataset(documents, segment_length, num_streams, eos_token_id)
    return SegmentDataset(
        iter_token_documents(dataset, tokenizer, text_column), segment_length, num_streams, eos_token_id
    )


def check_loader_settings(dataset, args) -> None:
    """Refuse data-loader settings that would break TBTT's streams: a streaming dataset read by several workers gives
    each worker its own streams (its share of the shards), and their batches alternate, so a row's next segment would
    come from another worker's stream."""
    if args.state_init == "tbtt" and isinstance(dataset, StreamingSegmentDataset) and args.dataloader_num_workers > 0:
        raise ValueError(
            f"TBTT with a streaming dataset and dataloader_num_workers={args.dataloader_num_workers}: each worker "
            "would build its own streams and their batches would alternate, so a segment would start from another "
            "stream's state. Set dataloader_num_workers: 0 (or use a map-style dataset, which keeps the order)."
        )
