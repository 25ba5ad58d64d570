"""StatePassingTrainer: every intervention trains, state carrying learns what only it can, resume is exact."""

import math

import pytest
import torch
from datasets import Dataset

import hf_longssm as hl
from tests.utils import tiny_model


GROUPS, PER, IN_GROUP = 4, 4, 0.5


VOCAB = 2 + GROUPS + GROUPS * PER


def key_documents(n, length, seed):
    """A key token starts each document; later tokens come from the key's group half of the time, else uniform.

    Inside one short segment the group is only weakly identifiable, so a model that starts every segment from zero
    stays uncertain; a model that carries the state knows the group from everything it saw before.
    """
    g = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n):
        key = int(torch.randint(0, GROUPS, (1,), generator=g))
        in_group = torch.rand(length - 1, generator=g) < IN_GROUP
        body = torch.where(
            in_group,
            key * PER + torch.randint(0, PER, (length - 1,), generator=g),
            torch.randint(0, GROUPS * PER, (length - 1,), generator=g),
        )
        docs.append([GROUPS * PER + 1 + key] + (1 + body).tolist())
    return docs


def config(tmp_path, method, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / method),
        state_init=method,
        segment_length=8,
        per_device_train_batch_size=16,
        max_steps=300,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        logging_steps=50,
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_drop_last=True,
    )
    kwargs.update(overrides)
    return hl.StatePassingConfig(**kwargs)


def late_nll(model, carry: bool) -> float:
    """Mean NLL of positions 32..63 of held-out documents, read in segments of 8 with or without the carried state."""
    ids = torch.tensor(key_documents(128, 64, seed=99))
    logits, state = [], None
    with torch.no_grad():
        for start in range(0, 64, 8):
            out, state = hl.forward_with_state(model, ids[:, start : start + 8], state if carry else None)
            logits.append(out.logits)
    nll = -torch.log_softmax(torch.cat(logits, 1)[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    return nll[:, 31:].mean().item()


def test_tbtt_learns_what_only_a_carried_state_can(tmp_path):
    train = Dataset.from_dict({"input_ids": key_documents(400, 64, seed=1)})
    results = {}
    for method in ("zero", "tbtt"):
        model = tiny_model("mamba2", vocab_size=VOCAB)
        hl.StatePassingTrainer(model=model, args=config(tmp_path, method), train_dataset=train).train()
        results[method] = {"carried": late_nll(model, True), "segmented": late_nll(model, False)}
    # Each method as it was trained: zero starts every segment fresh, TBTT carries the state.
    assert results["tbtt"]["carried"] + 0.06 < results["zero"]["segmented"], results
    # TBTT's advantage comes from the carried state: without it, it is no better.
    assert results["tbtt"]["carried"] + 0.06 < results["tbtt"]["segmented"], results
    # ... and it is at least as good as the zero model given the same long context.
    assert results["tbtt"]["carried"] < results["zero"]["carried"], results
    assert results["tbtt"]["carried"] < math.log(GROUPS * PER) - 0.2


@pytest.mark.parametrize("method", ["zero", "random_noise", "fitted_noise", "state_passing", "tbtt"])
def test_every_state_init_trains_and_changes_parameters(tmp_path, method):
    model = tiny_model("mamba2", vocab_size=VOCAB)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train = Dataset.from_dict({"input_ids": key_documents(60, 64, seed=1)})
    args = config(tmp_path, method, max_steps=8, logging_steps=1, fitted_noise_warmup_steps=3, noise_std=0.5)
    trainer = hl.StatePassingTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert "state_norm/layer_1" in trainer.state.log_history[0]
    if method in ("state_passing", "tbtt"):
        assert trainer.intervention.carried is not None and trainer.intervention.carried.norms().min() > 0
    if method == "fitted_noise":
        assert not trainer.intervention.fitted_stats.is_empty


@pytest.mark.parametrize("method", ["tbtt", "random_noise"])
def test_resume_equals_uninterrupted(tmp_path, method):
    train = Dataset.from_dict({"input_ids": key_documents(80, 64, seed=2)})

    def run(output_dir, max_steps, resume=None):
        model = tiny_model("mamba2", vocab_size=VOCAB)
        args = config(
            tmp_path,
            method,
            output_dir=str(output_dir),
            max_steps=max_steps,
            logging_steps=1,
            save_strategy="steps",
            save_steps=3,
        )
        trainer = hl.StatePassingTrainer(model=model, args=args, train_dataset=train)
        trainer.train(resume_from_checkpoint=resume)
        return [log["loss"] for log in trainer.state.log_history if "loss" in log]

    full = run(tmp_path / "full", 6)
    run(tmp_path / "part", 3)
    assert (tmp_path / "part" / "checkpoint-3" / "hf_longssm_state_rank0.pt").is_file()
    resumed = run(tmp_path / "part", 6, resume=str(tmp_path / "part" / "checkpoint-3"))
    assert len(full) == 6 and len(resumed) == 6
    for a, b in zip(full[3:], resumed[3:]):
        assert abs(a - b) < 1e-5, (full, resumed)


def test_resume_without_the_carried_state_differs(tmp_path):
    """The check above can fail: dropping the saved state changes the resumed losses."""
    train = Dataset.from_dict({"input_ids": key_documents(80, 64, seed=2)})
    losses = {}
    for name in ("with", "without"):
        out = tmp_path / name
        model = tiny_model("mamba2", vocab_size=VOCAB)
        args = config(
            tmp_path, "tbtt", output_dir=str(out), max_steps=3, logging_steps=1, save_strategy="steps", save_steps=3
        )
        hl.StatePassingTrainer(model=model, args=args, train_dataset=train).train()
        if name == "without":  # the carried state replaced by "none": TBTT restarts its rows from zero
            path = out / "checkpoint-3" / "hf_longssm_state_rank0.pt"
            payload = torch.load(path, weights_only=True)
            torch.save({**payload, "carried": None, "batch_size": None}, path)
        args = config(tmp_path, "tbtt", output_dir=str(out), max_steps=5, logging_steps=1)
        trainer = hl.StatePassingTrainer(model=tiny_model("mamba2", vocab_size=VOCAB), args=args, train_dataset=train)
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-3"))
        losses[name] = [log["loss"] for log in trainer.state.log_history if "loss" in log][-2:]
    assert abs(losses["with"][0] - losses["without"][0]) > 1e-4


def test_changed_batch_size_on_resume_is_refused(tmp_path):
    train = Dataset.from_dict({"input_ids": key_documents(80, 64, seed=2)})
    args = config(tmp_path, "tbtt", max_steps=2, save_strategy="steps", save_steps=2)
    hl.StatePassingTrainer(model=tiny_model("mamba2", vocab_size=VOCAB), args=args, train_dataset=train).train()
    args = config(tmp_path, "tbtt", max_steps=4, per_device_train_batch_size=8)
    trainer = hl.StatePassingTrainer(model=tiny_model("mamba2", vocab_size=VOCAB), args=args, train_dataset=train)
    with pytest.raises(ValueError, match="per_device_train_batch_size: saved 16, requested 8"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "tbtt" / "checkpoint-2"))


def test_bad_input_gets_clear_errors(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    train = Dataset.from_dict({"input_ids": key_documents(20, 64, seed=2)})
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(ValueError, match="does not support model_type='gpt2'"):
        hl.StatePassingTrainer(model=gpt2, args=config(tmp_path, "tbtt"), train_dataset=train)
    with pytest.raises(ValueError, match="state_init='carry' is not one of"):
        config(tmp_path, "carry")
    with pytest.raises(ValueError, match="not enough for one segment"):
        hl.StatePassingTrainer(
            model=tiny_model("mamba2", vocab_size=VOCAB),
            args=config(tmp_path, "tbtt", segment_length=4096),
            train_dataset=train,
        )

    class NoEos:
        eos_token_id = None

    with pytest.raises(ValueError, match="tokenizer has no eos_token_id"):
        hl.StatePassingTrainer(
            model=tiny_model("mamba2", vocab_size=VOCAB),
            args=config(tmp_path, "tbtt"),
            train_dataset=train,
            processing_class=NoEos(),
        )


def test_streaming_documents_train_with_tbtt(tmp_path):
    streaming = Dataset.from_dict({"input_ids": key_documents(40, 64, seed=3)}).to_iterable_dataset()
    model = tiny_model("mamba2", vocab_size=VOCAB)
    trainer = hl.StatePassingTrainer(
        model=model, args=config(tmp_path, "tbtt", max_steps=4, logging_steps=1), train_dataset=streaming
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 4 and trainer.intervention.carried.batch_size == 16
