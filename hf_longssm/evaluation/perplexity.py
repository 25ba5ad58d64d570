"""Position-wise perplexity to 128k tokens in bounded memory."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..forward import check_token_ids, eval_mode, forward_with_state, iter_segments
from ..modeling import input_device, unwrap_model


def log_buckets(length: int, start: int = 1) -> list[tuple[int, int]]:
    """Log-spaced position buckets [0, start), [start, 2 start), ... covering positions 0..length-1."""
    edges = [0]
    edge = start
    while edge < length:
        edges.append(edge)
        edge *= 2
    edges.append(length)
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


@dataclass
class PositionPerplexity:
    """Mean next-token NLL at every position (averaged over the batch).

    Attributes:
        nll (`torch.Tensor` of shape `(L - 1,)`): `nll[t]` is the mean NLL of predicting token `t + 1` at position t.
        num_sequences (`int`): rows averaged.
    """

    nll: torch.Tensor
    num_sequences: int

    def perplexity(self, buckets: list[tuple[int, int]] | None = None) -> list[dict[str, float]]:
        """Perplexity per position bucket `[start, end)` (log-spaced by default)."""
        buckets = log_buckets(len(self.nll)) if buckets is None else buckets
        out = []
        for start, end in buckets:
            if not 0 <= start < end <= len(self.nll):
                raise ValueError(f"Bucket [{start}, {end}) is outside positions 0..{len(self.nll)}.")
            mean = self.nll[start:end].double().mean().item()
            out.append({"start": start, "end": end, "nll": mean, "perplexity": math.exp(mean)})
        return out


@torch.no_grad()
def position_nll_sum(
    model,
    input_ids: torch.LongTensor,
    segment_length: int,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    attention_state: str = "window",
    attention_window: int | None = None,
) -> torch.Tensor:
    """The NLL at every position summed over the rows of `input_ids` (float64, `(L - 1,)`), read in segments with the
    state carried: what `position_perplexity` averages, and what processes add up before averaging (the trainer's
    evaluation). Memory: one segment's activations plus `L` floats."""
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [B, L] with L >= 2, got {tuple(input_ids.shape)}.")
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}.")
    check_token_ids(input_ids, unwrap_model(model).get_input_embeddings().num_embeddings)
    device = input_device(model)
    rows, length = input_ids.shape
    batch_size = max(1, rows if batch_size is None else batch_size)  # a process may have no rows to score
    # Summed where the logits are and copied to the host once: a copy per segment would wait for the device each time.
    total = torch.zeros(length - 1, dtype=torch.float64, device=device)
    bar = tqdm(total=rows * math.ceil((length - 1) / segment_length), desc="position perplexity", disable=not progress)
    with eval_mode(model):
        for row_start in range(0, rows, batch_size):
            ids = input_ids[row_start : row_start + batch_size].to(device)
            # The targets run one past each segment: the prediction across the boundary is scored.
            segments = iter_segments(
                model, ids[:, :-1], segment_length, attention_state=attention_state, attention_window=attention_window
            )
            for start, end, out, _ in segments:
                log_probs = torch.log_softmax(out.logits.float(), dim=-1)
                nll = -log_probs.gather(-1, ids[:, start + 1 : end + 1, None]).squeeze(-1)
                total[start:end] += nll.double().sum(0)
                bar.update(ids.shape[0])
    bar.close()
    return total.cpu()


@torch.no_grad()
def position_perplexity(
    model,
    input_ids: torch.LongTensor,
    segment_length: int = 4096,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    attention_state: str = "window",
    attention_window: int | None = None,
) -> PositionPerplexity:
    """Position-wise NLL of `input_ids` read in segments with the state carried, so memory does not grow with L.

    Args:
        model: a supported causal LM.
        input_ids (`torch.LongTensor` of shape `(B, L)`): token ids, one row per sequence, never padded.
        segment_length (`int`, *optional*, defaults to 4096): tokens per forward; for a pure Mamba family only memory
            and speed depend on it.
        batch_size (`int`, *optional*): rows per forward (defaults to all B).
        progress (`bool`, *optional*): show a progress bar over segments.
        attention_state, attention_window: a hybrid's attention policy (`CarriedState`): by default each segment's
            attention also sees the previous `segment_length` keys, so memory stays bounded; `"full"` is exact.

    Returns:
        [`PositionPerplexity`]: `nll` of shape `(L - 1,)`; `.perplexity(buckets)` per position bucket.
    """
    total = position_nll_sum(
        model,
        input_ids,
        segment_length,
        batch_size=batch_size,
        progress=progress,
        attention_state=attention_state,
        attention_window=attention_window,
    )
    rows = input_ids.shape[0]
    return PositionPerplexity(nll=(total / rows).float(), num_sequences=rows)


def position_metrics(
    result: PositionPerplexity, buckets: list[dict], train_context: int, prefix: str = "eval"
) -> dict[str, float]:
    """`{prefix}_loss`, `{prefix}_ppl_<lo>_<hi>` per bucket and `{prefix}_far_near_ratio`: the perplexity of the last
    bucket over that of the bucket holding position `train_context` (1.0 = no degradation past the training
    context; the number to watch while post-training and to pick checkpoints by)."""
    metrics = {f"{prefix}_loss": result.nll.double().mean().item()}
    metrics.update({f"{prefix}_ppl_{b['start']}_{b['end']}": b["perplexity"] for b in buckets})
    near = next((b for b in buckets if b["start"] <= train_context < b["end"]), None)
    if near is not None and near is not buckets[-1]:
        metrics[f"{prefix}_far_near_ratio"] = buckets[-1]["perplexity"] / near["perplexity"]
    return metrics


@torch.no_grad()
def restarted_position_nll(
    model, input_ids: torch.LongTensor, window: int, *, batch_windows: int = 512
) -> torch.Tensor:
    """Mean NLL at every position when the context is restarted `window / 2 .. window` tokens earlier.

    Each position is scored from a zero state started at most `window` and at least `window / 2` tokens back (the
    first `window / 2` positions keep their whole context). Comparing it with `position_perplexity` on the same
    tokens isolates what the long context does: `carried - restarted < 0` where the far past helps, `> 0` where the
    model is hurt by states longer than it was trained on. Raw perplexity per position bucket mostly reflects which
    text falls there; this difference does not.

    Returns:
        `torch.Tensor` of shape `(L - 1,)`, aligned with `PositionPerplexity.nll`.
    """
    if window < 2 or window % 2:
        raise ValueError(f"window must be an even number >= 2, got {window}.")
    device = input_device(model)
    rows, length = input_ids.shape
    half = window // 2
    starts = list(range(0, max(length - 1 - half, 1), half))
    padded = torch.nn.functional.pad(input_ids, (0, window + 1))
    # Summed where the logits are and copied to the host once: a copy per segment would wait for the device each time.
    total = torch.zeros(length - 1, dtype=torch.float64, device=device)
    jobs = [(r, s) for r in range(rows) for s in starts]
    with eval_mode(model):
        for i in range(0, len(jobs), batch_windows):
            chunk = jobs[i : i + batch_windows]
            ids = torch.stack([padded[r, s : s + window + 1] for r, s in chunk]).to(device)
            logits = forward_with_state(model, ids[:, :-1])[0].logits.float()
            nll = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1).double().cpu()
            for (_, s), row_nll in zip(chunk, nll):
                first = 0 if s == 0 else half  # positions s+half .. s+window-1 have between half and window of context
                end = min(s + window, length - 1)
                if s + first < end:
                    total[s + first : end] += row_nll[first : end - s]
    return (total / rows).float()
