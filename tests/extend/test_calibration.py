"""The calibrations of `hf_longssm.extend` against direct computations of the papers' procedures."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import hf_longssm as hl
from hf_longssm import extend
from hf_longssm.extension import stateful_mixers
from hf_longssm.modeling.delta import ScaleDelta, set_delta_transform
from tests.utils import tiny_model


# The modules, not the functions of the same name that `hf_longssm.extend` exports.
mamba_extend_module = importlib.import_module("hf_longssm.extend.mamba_extend")


def test_spsa_follows_the_paper_update(monkeypatch):
    """SPSA's iterates are the paper's: perturb by ±c_k δ, g = (f+ - f-) δ / 2c_k, s -= a_k g, clamp at min_scale;
    on a quadratic objective it walks to the minimum and returns the best point it evaluated."""
    target = torch.tensor([0.4, 1.6], dtype=torch.float64)
    calls = []

    def objective(model, mixers, scales, ids, segment_length, batch_size):
        calls.append(scales.clone())
        return 1.0 + 50.0 * float(((scales.double() - target) ** 2).sum())

    monkeypatch.setattr(mamba_extend_module, "_perplexity", objective)
    model = tiny_model("mamba2")
    ids = torch.randint(0, 64, (2, 16))
    extend.mamba_extend(model, ids, target_length=16, iterations=200, learning_rate=2e-3, seed=3)
    scales = extend.get_extension(model).values

    # The first iteration, recomputed by hand from the draws the optimiser saw.
    generator = torch.Generator().manual_seed(3)
    delta = torch.randint(0, 2, (2,), generator=generator).double() * 2 - 1
    c0, a0 = 0.1, 2e-3
    plus, minus = torch.ones(2, dtype=torch.float64) + c0 * delta, torch.ones(2, dtype=torch.float64) - c0 * delta
    assert torch.equal(calls[1], plus) and torch.equal(calls[2], minus)
    f = lambda s: 1.0 + 50.0 * float(((s - target) ** 2).sum())  # noqa: E731
    first = (torch.ones(2, dtype=torch.float64) - a0 * (f(plus) - f(minus)) * delta / (2 * c0)).clamp_min(0.01)
    # The next perturbations are centred on the first iterate, at c_1 = c / 2^0.1.
    c1 = 0.1 / 2**0.1
    assert torch.allclose((calls[3] - calls[4]).abs() / 2, torch.full((2,), c1, dtype=torch.float64))
    assert torch.allclose((calls[3] + calls[4]) / 2, first)
    torch.testing.assert_close(torch.stack(scales).double(), target, atol=0.05, rtol=0)
    settings = extend.get_extension(model).settings
    assert settings["calibration_perplexity_after"] < settings["calibration_perplexity_before"]


def test_spsa_clamps_scales(monkeypatch):
    monkeypatch.setattr(
        mamba_extend_module, "_perplexity", lambda m, mx, scales, *a: 1.0 + 100.0 * float(scales.double().sum())
    )
    model = tiny_model("mamba")
    extend.mamba_extend(model, torch.randint(0, 64, (1, 8)), target_length=8, iterations=30, learning_rate=1.0)
    assert min(float(s) for s in extend.get_extension(model).values) == pytest.approx(0.01)


def sample_from(model, rows: int, length: int, seed: int) -> torch.LongTensor:
    """Text drawn from `model` token by token through hf_longssm's forward (the state carried)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (rows, 1), generator=generator)
    state = None
    with torch.no_grad():
        for _ in range(length - 1):
            out, state = hl.forward_with_state(model, ids[:, -1:], state)
            probs = torch.softmax(out.logits[:, -1].float(), -1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return ids


@pytest.mark.parametrize("method", ["spsa", "backprop"])
def test_mamba_extend_recovers_the_scale_the_text_was_written_with(method):
    """Text sampled from the model with Δ scaled by 0.3: calibrating the plain model on it moves the scales towards
    0.3 and lowers the calibration perplexity."""
    # Large weights: the predictions hang on the state, so the perplexity is sharp in the scales (min at 0.3).
    model = tiny_model("mamba2", seed=1, initializer_range=1.0).eval()
    for mixer in stateful_mixers(model):
        with torch.no_grad():
            mixer.out_proj.weight.mul_(5)
        set_delta_transform(mixer, ScaleDelta(torch.tensor(0.3)))
    text = sample_from(model, rows=4, length=96, seed=0)
    extend.remove_extension(model)
    options = (
        {"iterations": 40, "learning_rate": 5e-3} if method == "spsa" else {"iterations": 30, "learning_rate": 0.05}
    )
    extend.mamba_extend(model, text, target_length=96, method=method, segment_length=32, **options)
    extension = extend.get_extension(model)
    scales = torch.stack(extension.values)
    before, after = (
        extension.settings["calibration_perplexity_before"],
        extension.settings["calibration_perplexity_after"],
    )
    assert after < before / 4  # measured: 59.8 -> 6.8 (SPSA, 40 iterations), the true scales give 2.4
    # Layer 0 (the one the perplexity hangs on most) lands near 0.3; gradients find the second layer's too.
    recovered = scales if method == "backprop" else scales[:1]
    assert ((recovered > 0.15) & (recovered < 0.5)).all(), scales


def paper_thresholds(delta_t: torch.Tensor, A: torch.Tensor, clamp: float, length: int):
    """LongMamba's `load_align_target.py` for one sample and layer, transcribed: `delta_t (channels, L)`."""
    values, _ = torch.topk(delta_t, k=max(1, int(delta_t.shape[1] * clamp)), dim=1, largest=True, sorted=False)
    delta_t = torch.clamp(delta_t, max=values.min(dim=1, keepdim=True).values)
    tA_prod = torch.exp(A * delta_t.sum(-1))
    standard_dt_sum = torch.stack([torch.sum(delta_t[i]) for i in range(delta_t.shape[0])])
    mod_dt = torch.sort(delta_t, descending=True, dim=1)[0]
    mod_dt = F.interpolate(mod_dt.unsqueeze(1), size=int(length), mode="linear", align_corners=False).squeeze(1)
    mod_dt_cum = torch.cumsum(mod_dt, dim=1)
    top_k = torch.argmax((mod_dt_cum > standard_dt_sum.unsqueeze(1)).to(torch.int), dim=1) + 1
    delta_thre = torch.gather(mod_dt, 1, top_k.unsqueeze(1)).squeeze(1)
    return tA_prod, delta_thre


@pytest.mark.parametrize("model_type", ["mamba2", "mamba"])
def test_long_mamba_calibration_is_the_papers(model_type):
    """Thresholds and global channels equal the paper's procedure applied to the Δ each layer computed."""
    model = tiny_model(model_type).eval()
    ids = torch.randint(0, 64, (3, 48))
    # The Δ every layer computes on each calibration sample (recorded through the same hook).
    seen = {i: [] for i in range(len(stateful_mixers(model)))}

    class Record(ScaleDelta):
        def __init__(self, layer):
            super().__init__(torch.tensor(1.0))
            self.layer = layer

        def transform(self, dt, channel_dim):
            seen[self.layer].append(dt.movedim(channel_dim, 1)[0].clone())
            return dt

    for i, mixer in enumerate(stateful_mixers(model)):
        set_delta_transform(mixer, Record(i))
    with torch.no_grad():
        for row in ids:
            hl.forward_with_state(model, row[None, :32])
    extend.long_mamba(model, ids, train_length=32, target_length=200, c=0.3, clamp_top=0.2)
    extension = extend.get_extension(model)
    for i, mixer in enumerate(stateful_mixers(model)):
        A = -torch.exp(mixer.A_log.float())
        A = A.max(-1).values if A.dim() == 2 else A
        decays, thresholds = zip(*(paper_thresholds(dt, A, 0.2, 200) for dt in seen[i]))
        decay, threshold = torch.stack(decays).mean(0), torch.stack(thresholds).mean(0)
        expected = torch.where(decay > 0.3, threshold, torch.zeros_like(threshold))
        torch.testing.assert_close(extension.values[i], expected, rtol=1e-5, atol=1e-7)
        assert extension.settings["global_channels"][i] == int((decay > 0.3).sum())
        assert 0 < extension.settings["global_channels"][i] < A.numel()  # the test separates both kinds


def test_long_mamba_thresholds_shrink_the_kept_steps_to_the_training_budget():
    """On the calibration text stretched to the target length, the kept Δ of a global channel add up to about what
    the channel accumulated over the training length (the paper's alignment)."""
    model = tiny_model("mamba2").eval()
    ids = torch.randint(0, 64, (1, 256))
    extend.long_mamba(model, ids, train_length=64, target_length=256, c=0.0)
    thresholds = extend.get_extension(model).values[0]
    seen = []

    class Record(ScaleDelta):
        def transform(self, dt, channel_dim):
            seen.append(dt.movedim(channel_dim, 1)[0].clone())
            return dt

    extend.remove_extension(model)
    set_delta_transform(stateful_mixers(model)[0], Record(torch.tensor(1.0)))
    with torch.no_grad():
        hl.forward_with_state(model, ids)
    dt = seen[0]  # (heads, 256)
    budget = dt[:, :64].sum(-1)
    kept = torch.where(dt > thresholds[:, None], dt, torch.zeros(())).sum(-1)
    assert (kept < dt.sum(-1)).all()
    ratio = kept / budget
    assert (dt.sum(-1) / budget > 3).all()  # unfiltered, 4x the training budget
    assert ((ratio > 0.4) & (ratio < 2.5)).all(), ratio  # measured 0.59-1.98 (the sample's own Δ vary)


def test_long_mamba_refuses_what_it_cannot_do():
    model = tiny_model("mamba2")
    with pytest.raises(ValueError, match="must exceed train_length"):
        extend.long_mamba(model, torch.randint(0, 64, (2, 32)), train_length=32, target_length=32)
    with pytest.raises(ValueError, match="train_length=32"):
        extend.long_mamba(model, torch.randint(0, 64, (2, 16)), train_length=32, target_length=64)
    with pytest.raises(ValueError, match="at least that many"):
        extend.mamba_extend(model, torch.randint(0, 64, (2, 16)), target_length=64)


def test_delta_scale_is_the_length_ratio():
    model = tiny_model("mamba")
    extend.delta_scale(model, train_length=32, target_length=128)
    assert [float(v) for v in extend.get_extension(model).values] == [0.25, 0.25]
    assert math.isclose(extend.get_extension(model).settings["scale"], 0.25)


@pytest.mark.parametrize("which", ["mamba_extend", "long_mamba"])
def test_an_interrupted_calibration_leaves_the_model_as_it_was(which, monkeypatch):
    """A calibration that fails midway (here: the second forward raises) clears its trial transforms and puts the
    previous extension back: the model's outputs are exactly those before the call."""
    model = tiny_model("mamba2").eval()
    extend.delta_scale(model, 0.5)
    ids = torch.randint(0, 64, (2, 48))
    with torch.no_grad():
        before, _ = hl.forward_with_state(model, ids)
    calls = {"n": 0}
    original = hl.forward.forward_with_state

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    module = importlib.import_module(f"hf_longssm.extend.{which}")
    monkeypatch.setattr(module, "forward_with_state", failing, raising=False)
    monkeypatch.setattr(importlib.import_module("hf_longssm.evaluation.perplexity"), "iter_segments",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        if which == "mamba_extend":
            extend.mamba_extend(model, ids, target_length=48, iterations=3)
        else:
            extend.long_mamba(model, ids, train_length=16, target_length=48)
    monkeypatch.undo()
    assert extend.get_extension(model).method == "delta_scale"
    with torch.no_grad():
        after, _ = hl.forward_with_state(model, ids)
    assert torch.equal(after.logits, before.logits)


def test_long_mamba_statistics_do_not_depend_on_the_batch_size():
    model = tiny_model("mamba").eval()
    ids = torch.randint(0, 64, (3, 40))
    thresholds = []
    for batch_size in (1, 3):
        extend.long_mamba(model, ids, train_length=24, target_length=96, c=0.0, batch_size=batch_size)
        thresholds.append(torch.stack(extend.get_extension(model).values))
    torch.testing.assert_close(thresholds[1], thresholds[0], rtol=1e-5, atol=1e-7)
