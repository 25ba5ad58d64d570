"""Position-wise perplexity of recurrent language models, to 128k tokens in bounded memory (hf_longssm)."""

import datasets
import evaluate
import torch

from hf_longssm.evaluation import log_buckets, position_perplexity
from hf_longssm.loading import resolve_model


_DESCRIPTION = """
Mean next-token negative log-likelihood at every token position, and perplexity per position bucket, for Mamba,
Mamba-2 and FalconMamba models. Sequences are read in segments with the recurrent state carried between them, so
memory does not grow with the length (128k tokens fit on one GPU for a 130m model). A model that generalizes beyond
its training context keeps a flat curve; one that does not climbs past it.
"""

_KWARGS_DESCRIPTION = """
Args:
    input_ids (`list[list[int]]`): token ids, one row per sequence, all rows the same length (no padding).
    model (`PreTrainedModel`, *optional*): a loaded model; or
    model_id (`str`, *optional*): a Hub id or local path to load.
    segment_length (`int`, *optional*, defaults to 4096): tokens per forward (memory, not results).
    buckets (`list[list[int]]`, *optional*): `[start, end)` position buckets; log-spaced by default.
    device (`str`, *optional*): where to run a model loaded from `model_id`.
Returns:
    nll (`list[float]`): mean NLL at each position (length L - 1).
    buckets (`list[dict]`): `start`, `end`, `nll`, `perplexity` per bucket.
Examples:
    >>> from hf_longssm import evaluation
    >>> metric = evaluation.load("position_perplexity")
    >>> result = metric.compute(input_ids=[[1, 2, 3, 4, 5]], model=model, segment_length=2)
    >>> len(result["nll"])
    4
"""

_CITATION = """
@article{buitrago2025understanding,
  title={Understanding and Improving Length Generalization in Recurrent Models},
  author={Buitrago Ruiz, Ricardo and Gu, Albert}, journal={arXiv preprint arXiv:2507.02782}, year={2025}
}
"""


class PositionPerplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int64"))}),
            reference_urls=["https://arxiv.org/abs/2507.02782"],
        )

    def _compute(self, input_ids, model=None, model_id=None, segment_length=4096, buckets=None, device=None):
        lengths = {len(row) for row in input_ids}
        if len(lengths) != 1:
            raise ValueError(f"All sequences must have the same length (no padding); got lengths {sorted(lengths)}.")
        model = resolve_model(model, model_id, device)
        ids = torch.tensor(input_ids, dtype=torch.long)
        result = position_perplexity(model, ids, segment_length=segment_length)
        buckets = [tuple(b) for b in buckets] if buckets else log_buckets(len(result.nll))
        return {"nll": result.nll.tolist(), "buckets": result.perplexity(buckets)}
