"""The Δ hook (`modeling/delta.py`) and the extension's life cycle (`hf_longssm.extension`): exact, neutral when
neutral, saved and loaded, refused where it would be ignored."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_longssm as hl
from hf_longssm import extend
from hf_longssm.extension import CONFIG_KEY, EXTENSION_FILE, LengthExtension, stateful_mixers
from hf_longssm.modeling.delta import DeltaTransform, FilterDelta, ScaleDelta, set_delta_transform
from tests.utils import HYBRID_TYPES, MODEL_TYPES, run_segments, tiny_hybrid, tiny_model


class Recording(DeltaTransform):
    """Records the Δ it is given (channels first) and hands it to `inner`."""

    method = "recording"

    def __init__(self, inner: DeltaTransform | None = None):
        self.inner, self.seen = inner, []

    def transform(self, dt, channel_dim):
        self.seen.append(dt.detach().movedim(channel_dim, 1).clone())
        return dt if self.inner is None else self.inner(dt, channel_dim)


def layer0_decay_rates(model) -> torch.Tensor:
    """A of layer 0: `(channels, state)` for Mamba-1, `(heads,)` for Mamba-2."""
    return -torch.exp(stateful_mixers(model)[0].A_log.detach().float())


def layer0_state_change(model, ids, initial: float, inner: DeltaTransform | None):
    """Layer 0's final SSM state from a constant initial state minus the one from zeros, and the Δ it saw.

    The scan is linear in its initial state and layer 0's input does not depend on it, so the difference is exactly
    the decay the segment applied to the initial state."""
    recording = Recording(inner)
    set_delta_transform(stateful_mixers(model)[0], recording)
    zero = hl.CarriedState.zeros(model, ids.shape[0])
    start = zero._with(recurrent_states=[torch.full_like(s, initial) for s in zero.recurrent_states])
    with torch.no_grad():
        _, from_zero = hl.forward_with_state(model, ids, zero)
        _, from_start = hl.forward_with_state(model, ids, start)
    return from_start.recurrent_states[0] - from_zero.recurrent_states[0], start.recurrent_states[0], recording.seen[0]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("scale", [1.0, 0.25, 3.0])
def test_scaled_delta_decays_the_state_by_exp_of_scaled_steps(model_type, scale):
    """MambaExtend's equation: with Δ' = sΔ the initial state decays by exp(s A Σ_t Δ_t) over the segment."""
    model = tiny_model(model_type).eval()
    ids = torch.randint(0, 64, (2, 23))
    change, start, dt = layer0_state_change(model, ids, 0.5, ScaleDelta(torch.tensor(scale)))
    total = dt.sum(-1)  # (b, channels): the unscaled Δ summed over the segment
    A = layer0_decay_rates(model)
    if model_type == "mamba2":  # (b, h, p, n) state, one A per head
        expected = torch.exp(scale * A * total)[:, :, None, None] * start
    else:  # (b, d, n) state, A per channel and state
        expected = torch.exp(scale * A[None] * total[..., None]) * start
    torch.testing.assert_close(change, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_filtered_tokens_leave_the_state_untouched(model_type):
    """LongMamba's equation: tokens with Δ <= θ add nothing and decay nothing; a channel filtering every token ends
    the segment with its initial state, bit for bit, and the others decay by the kept steps only."""
    model = tiny_model(model_type).eval()
    ids = torch.randint(0, 64, (2, 23))
    channels = stateful_mixers(model)[0].num_heads if model_type == "mamba2" else 32
    dt = layer0_state_change(model, ids, 0.5, None)[2]
    threshold = dt.median(dim=-1).values.median(dim=0).values  # about half the tokens of each channel kept
    threshold[0] = float("inf")  # channel 0 filters everything
    threshold[1] = 0.0  # channel 1 filters nothing
    assert threshold.numel() == channels
    change, start, dt = layer0_state_change(model, ids, 0.5, FilterDelta(threshold))
    kept = torch.where(dt > threshold[None, :, None], dt, torch.zeros(()))
    A = layer0_decay_rates(model)
    if model_type == "mamba2":
        expected = torch.exp(A * kept.sum(-1))[:, :, None, None] * start
    else:
        expected = torch.exp(A[None] * kept.sum(-1)[..., None]) * start
    torch.testing.assert_close(change, expected, rtol=1e-5, atol=1e-6)

    # Channel 0 took no token in: its whole final state is its initial state, whatever the input.
    set_delta_transform(stateful_mixers(model)[0], FilterDelta(threshold))
    start_state = hl.CarriedState.zeros(model, 2)
    start_state = start_state._with(recurrent_states=[torch.randn_like(s) for s in start_state.recurrent_states])
    with torch.no_grad():
        _, final = hl.forward_with_state(model, ids, start_state)
    assert torch.equal(final.recurrent_states[0][:, 0], start_state.recurrent_states[0][:, 0])
    assert not torch.equal(final.recurrent_states[0][:, 1], start_state.recurrent_states[0][:, 1])


def neutral_extensions(model):
    layers = len(stateful_mixers(model))
    channels = [m.num_heads if hasattr(m, "num_heads") else m.intermediate_size for m in stateful_mixers(model)]
    return [
        LengthExtension("mamba_extend", [torch.tensor(1.0)] * layers),
        LengthExtension("long_mamba", [torch.zeros(c) for c in channels]),
    ]


@pytest.mark.parametrize("model_type", MODEL_TYPES + ["jamba", "bamba"])
def test_neutral_extension_is_bit_identical(model_type):
    """Scales of 1 and no filtering leave logits and final states bit-identical to the model without them."""
    model = (tiny_hybrid(model_type) if model_type in HYBRID_TYPES else tiny_model(model_type)).eval()
    ids = torch.randint(0, 64, (2, 37))
    with torch.no_grad():
        reference, reference_state = run_segments(model, ids, [20, 17])
        for extension in neutral_extensions(model):
            extend.install_extension(model, extension)
            logits, state = run_segments(model, ids, [20, 17])
            assert torch.equal(logits, reference), extension.method
            for a, b in zip(
                state.recurrent_states + state.conv_states,
                reference_state.recurrent_states + reference_state.conv_states,
            ):
                assert torch.equal(a, b)
            extend.remove_extension(model)


def full_attention(model, batch):
    """A zero state whose hybrid attention keeps every key: segments then equal one pass exactly."""
    return hl.CarriedState.zeros(model, batch, attention_state="full")


@pytest.mark.parametrize("model_type", MODEL_TYPES + ["jamba", "bamba"])
def test_extended_model_segmented_equals_one_pass(model_type):
    """The contract holds with an extension: logits and final states of segments == one pass; gradients too."""
    model = (tiny_hybrid(model_type) if model_type in HYBRID_TYPES else tiny_model(model_type)).eval()
    mixers = stateful_mixers(model)
    ids = torch.randint(0, 64, (2, 41))
    for transform in (
        lambda m: ScaleDelta(torch.tensor(0.3)),
        lambda m: FilterDelta(torch.full((m.num_heads if hasattr(m, "num_heads") else m.intermediate_size,), 0.05)),
    ):
        for mixer in mixers:
            set_delta_transform(mixer, transform(mixer))
        one, one_state = run_segments(model, ids, [41], full_attention(model, 2))
        seg, seg_state = run_segments(model, ids, [16, 1, 24], full_attention(model, 2))
        torch.testing.assert_close(seg, one, rtol=1e-4, atol=1e-5)
        for a, b in zip(seg_state.recurrent_states, one_state.recurrent_states):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        # Gradients through the carried state reach the weights equally.
        grads = []
        for sizes in ([41], [16, 1, 24]):
            model.zero_grad()
            logits, _ = run_segments(model, ids, sizes, full_attention(model, 2))
            logits.logsumexp(-1).mean().backward()
            grads.append(mixers[0].in_proj.weight.grad.clone())
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_scale_gradient_segmented_equals_one_pass():
    """MambaExtend's backprop calibration differentiates the loss in the scales across segments exactly."""
    model = tiny_model("mamba2").eval()
    ids = torch.randint(0, 64, (1, 40))
    grads = []
    for sizes in ([40], [13, 27]):
        scale = torch.tensor(0.7, requires_grad=True)
        for mixer in stateful_mixers(model):
            set_delta_transform(mixer, ScaleDelta(scale))
        logits, _ = run_segments(model, ids, sizes)
        logits.logsumexp(-1).mean().backward()
        grads.append(scale.grad.clone())
    assert grads[0].abs() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def test_plain_forward_of_an_extended_model_is_refused():
    """transformers' forward would ignore Δ's transform: refused with what to do, not silently un-extended."""
    model = tiny_model("mamba").eval()
    ids = torch.randint(0, 64, (1, 8))
    before = model(ids).logits
    extend.delta_scale(model, 0.5)
    with pytest.raises(RuntimeError, match="length extension.*remove_extension"):
        model(ids)
    extend.remove_extension(model)
    assert torch.equal(model(ids).logits, before)


@pytest.mark.parametrize("method", ["mamba_extend", "long_mamba"])
def test_save_pretrained_and_load_model_restore_the_extension(tmp_path, method):
    model = tiny_model("mamba2").eval()
    ids = torch.randint(0, 64, (1, 30))
    with torch.no_grad():
        base_logits, _ = run_segments(model, ids, [30])
    if method == "mamba_extend":
        extension = LengthExtension(method, [torch.tensor(0.4), torch.tensor(1.7)], {"target_length": 64})
    else:
        extension = LengthExtension(method, [torch.rand(8) * 0.1, torch.zeros(8)], {"target_length": 64})
    extend.install_extension(model, extension)
    with torch.no_grad():
        extended_logits, _ = run_segments(model, ids, [30])
    assert not torch.allclose(extended_logits, base_logits)
    model.save_pretrained(tmp_path / "m")

    assert (tmp_path / "m" / EXTENSION_FILE).is_file()
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config[CONFIG_KEY]["method"] == method and config[CONFIG_KEY]["target_length"] == 64
    loaded = hl.load_model(tmp_path / "m").eval()
    assert extend.get_extension(loaded).method == method
    with torch.no_grad():
        assert torch.equal(run_segments(loaded, ids, [30])[0], extended_logits)
    # The weights are the base model's: transformers alone loads the un-extended model.
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, base_logits, rtol=1e-4, atol=1e-5)  # transformers' own scan
    # Without the file, loading says what is missing rather than dropping the extension.
    (tmp_path / "m" / EXTENSION_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=EXTENSION_FILE):
        hl.load_model(tmp_path / "m")


def test_extension_for_another_model_is_refused():
    model = tiny_model("mamba2")
    with pytest.raises(ValueError, match="calibrated for another model"):
        extend.install_extension(model, LengthExtension("mamba_extend", [torch.tensor(1.0)] * 5))


def test_an_extended_model_deep_copies_and_pickles_with_its_extension(tmp_path):
    import copy
    import pickle

    model = tiny_model("mamba")
    extend.delta_scale(model, 0.5)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert extend.get_extension(clone).method == "delta_scale"
        clone.save_pretrained(tmp_path / "clone")  # the copy's own save, extension file included
        assert (tmp_path / "clone" / EXTENSION_FILE).is_file()
        (tmp_path / "clone" / EXTENSION_FILE).unlink()


def test_broken_or_foreign_extension_files_are_refused_clearly(tmp_path):
    model = tiny_model("mamba2")
    extend.install_extension(model, LengthExtension("long_mamba", [torch.rand(8), torch.rand(8)]))
    model.save_pretrained(tmp_path / "m")
    # Thresholds from a model with as many layers but other channels (Mamba-1's 32 per layer).
    foreign = LengthExtension("long_mamba", [torch.rand(32), torch.rand(32)])
    with pytest.raises(ValueError, match="32 values for Mamba layer 0, which has 8 channels"):
        extend.install_extension(model, foreign)
    (tmp_path / "m" / EXTENSION_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable length extension file"):
        hl.load_model(tmp_path / "m")


@pytest.mark.parametrize(
    "kwargs", [{"scale": float("inf")}, {"scale": 0.0}, {"train_length": 64, "target_length": 32}]
)
def test_delta_scale_refuses_scales_that_extend_nothing(kwargs):
    with pytest.raises(ValueError, match="positive finite|nothing to extend"):
        extend.delta_scale(tiny_model("mamba"), **kwargs)
