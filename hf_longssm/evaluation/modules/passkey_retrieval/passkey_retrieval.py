"""Passkey retrieval accuracy by prompt length and key depth, prefilled with a carried state (hf_longssm)."""

import datasets
import evaluate

from hf_longssm.evaluation import passkey_retrieval
from hf_longssm.loading import resolve_model, resolve_tokenizer


_DESCRIPTION = """
The standard passkey task: a random 5-digit key hidden at a relative depth inside filler text of an exact token
length, then asked for. The prompt is prefilled in segments with the recurrent state carried, and the answer is
decoded greedily from that state. Exact match per trial; accuracy per (length, depth). Seeded and reproducible.
"""

_KWARGS_DESCRIPTION = """
Args:
    lengths (`list[int]`): prompt lengths in tokens, strictly increasing.
    depths (`list[float]`, *optional*, defaults to [0.0, 0.25, 0.5, 0.75, 1.0]): relative key depths.
    model / model_id: a loaded model, or a Hub id or local path.
    tokenizer (*optional*): a tokenizer, `"byte"`, or (default) the one saved with `model_id`.
    num_trials (`int`, *optional*, defaults to 3), segment_length (`int`, *optional*, defaults to 4096), seed.
Returns:
    results (`list[dict]`): `length`, `depth`, `accuracy`, `trials` per cell; accuracy (`float`): the mean.
Examples:
    >>> from hf_longssm import evaluation
    >>> metric = evaluation.load("passkey_retrieval")
    >>> out = metric.compute(lengths=[1024, 4096], depths=[0.5], model=model, tokenizer=tokenizer)
"""

_CITATION = """
@article{mohtashami2023landmark,
  title={Landmark Attention: Random-Access Infinite Context Length for Transformers},
  author={Mohtashami, Amirkeivan and Jaggi, Martin}, journal={arXiv preprint arXiv:2305.16300}, year={2023}
}
"""


class PasskeyRetrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"lengths": datasets.Value("int64")}),
        )

    def _compute(
        self,
        lengths,
        depths=(0.0, 0.25, 0.5, 0.75, 1.0),
        model=None,
        model_id=None,
        tokenizer=None,
        num_trials=3,
        segment_length=4096,
        seed=0,
        device=None,
    ):
        model = resolve_model(model, model_id, device)
        tokenizer = resolve_tokenizer(tokenizer, model_id)
        results = passkey_retrieval(
            model,
            tokenizer,
            list(lengths),
            list(depths),
            num_trials=num_trials,
            segment_length=segment_length,
            seed=seed,
        )
        return {"results": results, "accuracy": sum(r["accuracy"] for r in results) / len(results)}
