"""MambaExtend (Azizi et al., ICLR 2025): one scale per Mamba layer on its step Δ, calibrated at the target length.

Each layer's discretized step becomes `s_l * Δ` (after softplus, before it multiplies A and B: `modeling/delta.py`);
no other weight changes. The scales minimise the perplexity of a few calibration sequences of the target length,
read in segments with the state carried (bounded memory):

* `method="spsa"` (the paper's zeroth-order optimiser, as in its code `perplexity_eval/eval.py`): per iteration k,
  perturb all scales by `±c_k δ` (δ Rademacher), `c_k = c / (1 + k)^γ`; estimate the gradient
  `g = (ppl(s + c_k δ) - ppl(s - c_k δ)) δ / (2 c_k)`; step `s -= a_k g` with `a_k = a cos(k π / (2 (2K - 1)))`;
  clamp every scale at `min_scale`. Two forward passes over the calibration text per iteration, no gradients.
* `method="backprop"`: Adam on the scales alone (every weight frozen), the loss the mean NLL over the whole
  calibration sequences with gradients through the carried state (memory grows with the target length).

Defaults are the paper's (20 calibration samples, 50 SPSA iterations, c = 0.1, γ = 0.1, a = 1e-3, clamp at 0.01),
except two choices made here: the scales start at 1 (the untouched model; the code draws them from U[0.75, 1)), and
the result is the best point *on the calibration text* among all evaluated -- the code keeps whichever scored best on
the test set, which leaks the evaluation text into the calibration. Calibration text must be disjoint from the text
you evaluate on (`hf-longssm extend` records where it came from and `hf-longssm eval` refuses the same data).
"""

from __future__ import annotations

import math
import time

import torch

from ..evaluation.perplexity import position_nll_sum
from ..extension import LengthExtension, calibrating, install_extension
from ..forward import forward_with_state
from ..modeling import input_device
from ..modeling.delta import ScaleDelta, set_delta_transform


def mamba_extend(
    model: torch.nn.Module,
    calibration_ids: torch.LongTensor,
    *,
    target_length: int,
    method: str = "spsa",
    iterations: int | None = None,
    segment_length: int = 4096,
    batch_size: int = 1,
    c: float = 0.1,
    gamma: float = 0.1,
    learning_rate: float | None = None,
    min_scale: float = 0.01,
    seed: int = 0,
    progress: bool = False,
) -> torch.nn.Module:
    """Calibrate MambaExtend's per-layer Δ scales at `target_length` and install them; returns `model`.

    Args:
        model: a supported model (every Mamba layer gets one scale; a hybrid's attention layers are untouched).
        calibration_ids (`torch.LongTensor` of shape `(samples, >= target_length)`): calibration text, never the
            text you will evaluate on (the paper: 20 samples).
        target_length (`int`): the length to extend to; each sample's first `target_length` tokens are read.
        method (`str`, *optional*, defaults to `"spsa"`): `"spsa"` (zeroth order) or `"backprop"`.
        iterations (`int`, *optional*): SPSA iterations (default 50) or Adam steps (default 20).
        segment_length (`int`, *optional*, defaults to 4096): tokens per forward (memory, not the result).
        batch_size (`int`, *optional*, defaults to 1): calibration rows per forward (memory: one row's logits per
            segment without gradients; with `method="backprop"` every segment's activations of a row).
        c, gamma (`float`): SPSA's perturbation size and its decay.
        learning_rate (`float`, *optional*): SPSA's `a` (default 1e-3) or Adam's (default 5e-2).
        min_scale (`float`, *optional*, defaults to 0.01): the lower clamp of every scale.
        seed (`int`): the Rademacher draws.

    Returns:
        the model, with `hl.extend.get_extension(model).settings` holding the scales, the calibration perplexity
        before (all scales 1) and after (the returned scales), and the calibration time. If calibration fails or is
        interrupted, the model is left as it was.
    """
    if method not in ("spsa", "backprop"):
        raise ValueError(f"method must be 'spsa' or 'backprop', got {method!r}.")
    ids = _calibration_rows(calibration_ids, target_length)
    iterations = iterations if iterations is not None else 50 if method == "spsa" else 20
    start = time.perf_counter()
    with calibrating(model) as mixers:
        if method == "spsa":
            a = learning_rate if learning_rate is not None else 1e-3
            scales, before, after = _spsa(
                model, mixers, ids, segment_length, batch_size, iterations, c, gamma, a, min_scale, seed, progress
            )
        else:
            lr = learning_rate if learning_rate is not None else 5e-2
            scales, before, after = _backprop(
                model, mixers, ids, segment_length, batch_size, iterations, lr, min_scale, progress
            )
    seconds = time.perf_counter() - start
    settings = {
        "target_length": target_length,
        "calibration": method,
        "calibration_samples": ids.shape[0],
        "iterations": iterations,
        "calibration_perplexity_before": before,
        "calibration_perplexity_after": after,
        "calibration_seconds": round(seconds, 1),
        "scales": [round(float(s), 6) for s in scales],
        "seed": seed,
    }
    return install_extension(model, LengthExtension("mamba_extend", [s.detach().clone() for s in scales], settings))


def _calibration_rows(calibration_ids: torch.Tensor, length: int) -> torch.LongTensor:
    if not isinstance(calibration_ids, torch.Tensor) or calibration_ids.dim() != 2:
        raise ValueError("calibration_ids must be a (samples, length) tensor of token ids.")
    if length < 2 or calibration_ids.shape[1] < length:
        raise ValueError(
            f"The calibration samples have {calibration_ids.shape[1]} tokens; calibrating at {length} needs at least "
            f"that many per sample (and at least 2)."
        )
    return calibration_ids[:, :length]


def _set_scales(mixers, scales: torch.Tensor) -> None:
    for mixer, scale in zip(mixers, scales):
        set_delta_transform(mixer, ScaleDelta(scale))


def _perplexity(model, mixers, scales: torch.Tensor, ids, segment_length, batch_size) -> float:
    """exp(mean NLL) of the calibration text under `scales` (no gradients, the state carried segment to segment)."""
    _set_scales(mixers, scales)
    nll = position_nll_sum(model, ids, segment_length, batch_size=batch_size)
    return _exp(nll.sum().item() / (ids.shape[0] * (ids.shape[1] - 1)))


def _exp(mean_nll: float) -> float:
    return math.exp(min(mean_nll, 700.0))  # a diverged point scores huge, not an OverflowError


def _spsa(model, mixers, ids, segment_length, batch_size, iterations, c, gamma, a, min_scale, seed, progress):
    """SPSA from scales of 1; returns `(the best evaluated scales, perplexity at 1, perplexity at the best)`."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.ones(len(mixers), dtype=torch.float64)
    best = (_perplexity(model, mixers, scales, ids, segment_length, batch_size), scales.clone())
    before = best[0]
    for k in range(iterations):
        c_k = c / (1 + k) ** gamma
        a_k = a * math.cos(k * math.pi / (2 * (2 * iterations - 1)))
        delta = torch.randint(0, 2, (len(mixers),), generator=generator).double() * 2 - 1
        plus, minus = (scales + c_k * delta).clamp_min(min_scale), (scales - c_k * delta).clamp_min(min_scale)
        ppl_plus = _perplexity(model, mixers, plus, ids, segment_length, batch_size)
        ppl_minus = _perplexity(model, mixers, minus, ids, segment_length, batch_size)
        if math.isfinite(ppl_plus) and math.isfinite(ppl_minus):  # a NaN would poison every scale
            scales = (scales - a_k * (ppl_plus - ppl_minus) * delta / (2 * c_k)).clamp_min(min_scale)
        for ppl, point in ((ppl_plus, plus), (ppl_minus, minus)):
            if math.isfinite(ppl) and ppl < best[0]:
                best = (ppl, point.clone())
        if progress:
            print(f"[mamba_extend] spsa {k + 1}/{iterations}: ppl +{ppl_plus:.4g} -{ppl_minus:.4g}", flush=True)
    final = _perplexity(model, mixers, scales, ids, segment_length, batch_size)
    if final < best[0]:
        best = (final, scales.clone())
    return best[1].float(), before, best[0]


def _backprop(model, mixers, ids, segment_length, batch_size, iterations, learning_rate, min_scale, progress):
    """Adam on the scales alone; returns `(the best scales scored, perplexity at 1, perplexity at the best)`."""
    scales = torch.ones(len(mixers), dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.Adam([scales], lr=learning_rate)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    best, before = (math.inf, scales.detach().clone()), None
    was_training, grad_enabled = model.training, torch.is_grad_enabled()
    model.eval()
    try:
        torch.set_grad_enabled(True)  # restored below: calibration may be called under `torch.no_grad()`
        for k in range(iterations + 1):
            optimizer.zero_grad()
            _set_scales(mixers, scales)  # the transforms hold views of the leaf: gradients reach it
            total = 0.0
            for row in range(0, ids.shape[0], batch_size):
                loss = _differentiable_nll_sum(model, ids[row : row + batch_size], segment_length) / ids[:, 1:].numel()
                if k < iterations:
                    loss.backward()
                total += loss.item()
            ppl = _exp(total)
            before = ppl if before is None else before
            if ppl < best[0]:
                best = (ppl, scales.detach().clone())
            if progress:
                print(f"[mamba_extend] backprop {k}/{iterations}: ppl {ppl:.4g}", flush=True)
            if k < iterations:  # the last pass only scores the last step
                optimizer.step()
                with torch.no_grad():
                    scales.clamp_(min=min_scale)
    finally:
        torch.set_grad_enabled(grad_enabled)
        model.train(was_training)
        for p, requires_grad in frozen:
            p.requires_grad_(requires_grad)
    return best[1], before, best[0]


def _differentiable_nll_sum(model, ids: torch.LongTensor, segment_length: int) -> torch.Tensor:
    """The summed NLL of `ids` read in segments with the state carried and attached (gradients cross segments)."""
    ids = ids.to(input_device(model))
    state, total = None, ids.new_zeros((), dtype=torch.float32)
    for start in range(0, ids.shape[1] - 1, segment_length):
        end = min(start + segment_length, ids.shape[1] - 1)
        out, state = forward_with_state(model, ids[:, start:end], state)
        log_probs = torch.log_softmax(out.logits.float(), dim=-1)
        total = total - log_probs.gather(-1, ids[:, start + 1 : end + 1, None]).sum()
    return total
