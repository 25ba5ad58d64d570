"""`trainer.evaluate()` measures perplexity by position far past the training context, as
`evaluation.position_perplexity` does, without touching the training state."""

import json

import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard

import hf_longssm as hl
from hf_longssm import evaluation
from tests.utils import tiny_model


def documents(n, length, seed):
    g = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({"input_ids": torch.randint(1, 64, (n, length), generator=g).tolist()})


def config(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"), state_init="state_passing", segment_length=8, per_device_train_batch_size=4,
        per_device_eval_batch_size=2, eval_max_length=64, max_steps=6, learning_rate=1e-2, use_cpu=True,
        report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
    )  # fmt: skip
    kwargs.update(overrides)
    return hl.StatePassingConfig(**kwargs)


def test_evaluate_equals_position_perplexity_on_the_same_tokens(tmp_path):
    model = tiny_model("mamba2")
    eval_docs = documents(5, 80, seed=1)
    trainer = hl.StatePassingTrainer(
        model=model, args=config(tmp_path), train_dataset=documents(16, 100, 0), eval_dataset=eval_docs
    )
    metrics = trainer.evaluate()
    ids = torch.tensor([row[:64] for row in eval_docs["input_ids"]])
    expected = evaluation.position_perplexity(model, ids, segment_length=8)
    buckets = expected.perplexity(evaluation.log_buckets(63, start=1))  # segment_length // 8 = 1
    assert [k for k in metrics if k.startswith("eval_ppl_")] == [f"eval_ppl_{b['start']}_{b['end']}" for b in buckets]
    for bucket in buckets:
        assert metrics[f"eval_ppl_{bucket['start']}_{bucket['end']}"] == pytest.approx(bucket["perplexity"], rel=1e-4)
    assert metrics["eval_loss"] == pytest.approx(expected.nll.double().mean().item(), rel=1e-4)
    near = next(b for b in buckets if b["start"] <= 8 < b["end"])
    assert metrics["eval_far_near_ratio"] == pytest.approx(buckets[-1]["perplexity"] / near["perplexity"], rel=1e-6)
    assert buckets[-1]["end"] == 63  # the buckets reach eval_max_length


def test_short_evaluation_documents_are_skipped(tmp_path):
    mixed = Dataset.from_dict({"input_ids": [list(range(1, 70)), list(range(1, 20)), list(range(2, 70))]})
    trainer = hl.StatePassingTrainer(
        model=tiny_model("mamba2"), args=config(tmp_path), train_dataset=documents(16, 100, 0), eval_dataset=mixed
    )
    assert trainer._eval_input_ids.shape == (2, 64)


def test_training_losses_are_unchanged_by_evaluation(tmp_path):
    def losses(**overrides):
        trainer = hl.StatePassingTrainer(
            model=tiny_model("mamba2"),
            args=config(tmp_path, **overrides),
            train_dataset=documents(16, 100, 0),
            eval_dataset=documents(4, 70, 1),
        )
        trainer.train()
        return [log["loss"] for log in trainer.state.log_history if "loss" in log], trainer

    without, _ = losses()
    with_eval, trainer = losses(eval_strategy="steps", eval_steps=2)
    assert with_eval == without
    evals = [log for log in trainer.state.log_history if "eval_far_near_ratio" in log]
    assert [log["step"] for log in evals] == [2, 4, 6]


def test_every_evaluation_is_plotted_and_the_last_table_goes_into_the_card(tmp_path):
    trainer = hl.StatePassingTrainer(
        model=tiny_model("mamba2"),
        args=config(tmp_path, eval_strategy="steps", eval_steps=3),
        train_dataset=documents(16, 100, 0),
        eval_dataset=documents(4, 70, 1),
    )
    trainer.train()
    folder = tmp_path / "out" / "eval"
    history = json.loads((folder / "history.json").read_text())
    assert [h["step"] for h in history] == [3, 6] and "far_near_ratio" in history[-1]
    assert (folder / "perplexity_by_position.png").stat().st_size > 10_000
    trainer.create_model_card()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    values = {r.metric_name: r.metric_value for r in card.data.eval_results}
    last = history[-1]["buckets"][-1]
    assert values[f"perplexity@[{last['start']},{last['end']})"] == pytest.approx(last["perplexity"], rel=1e-3)


def test_metric_for_best_model_can_be_the_far_near_ratio(tmp_path):
    trainer = hl.StatePassingTrainer(
        model=tiny_model("mamba2"),
        args=config(
            tmp_path,
            eval_strategy="steps",
            eval_steps=2,
            save_strategy="steps",
            save_steps=2,
            metric_for_best_model="far_near_ratio",
            greater_is_better=False,
            load_best_model_at_end=True,
        ),  # fmt: skip
        train_dataset=documents(16, 100, 0),
        eval_dataset=documents(4, 70, 1),
    )
    trainer.train()
    ratios = {
        log["step"]: log["eval_far_near_ratio"] for log in trainer.state.log_history if "eval_far_near_ratio" in log
    }
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{min(ratios, key=ratios.get)}")


def test_eval_tasks_run_at_every_evaluation_and_their_tables_go_into_the_card(tmp_path):
    """`eval_tasks`: passkey, the BABILong twin and copying beside the perplexity, logged per prompt length at every
    evaluation (the same seeded prompts `run_eval_task` builds), the last evaluation's tables in the card."""
    from hf_longssm.tokenization import byte_tokenizer
    from hf_longssm.training.eval_tasks import run_eval_task

    tasks, lengths = ["passkey", "babilong_qa1", "copying"], [256, 384]
    model, tokenizer = tiny_model("mamba2", vocab_size=257), byte_tokenizer()
    args = config(
        tmp_path, eval_strategy="steps", eval_steps=3, eval_tasks=tasks, eval_task_lengths=lengths, eval_task_trials=1,
        segment_length=32, max_steps=3,
    )  # fmt: skip
    trainer = hl.StatePassingTrainer(
        model=model, args=args, train_dataset=documents(16, 100, 0), eval_dataset=documents(4, 70, 1),
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    evals = [log for log in trainer.state.log_history if "eval_passkey_acc" in log]
    assert [log["step"] for log in evals] == [3]
    for task in tasks:
        rows = run_eval_task(model, tokenizer, task, lengths, num_trials=1, segment_length=32)
        assert [r["length"] for r in rows] == lengths and all(0 <= r["accuracy"] <= 1 for r in rows)
        for row in rows:
            assert evals[-1][f"eval_{task}_acc_{row['length']}"] == row["accuracy"]
        assert evals[-1][f"eval_{task}_acc"] == pytest.approx(sum(r["accuracy"] for r in rows) / 2)
    trainer.create_model_card()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "passkey accuracy by prompt length" in card and "babilong_qa1 accuracy by prompt length" in card
    assert "| 384 |" in card


def test_eval_tasks_are_checked_when_configured(tmp_path):
    with pytest.raises(ValueError, match="are not tasks; choose from"):
        config(tmp_path, eval_tasks=["copy"])
    with pytest.raises(ValueError, match="strictly increasing"):
        config(tmp_path, eval_tasks=["passkey"], eval_task_lengths=[512, 256])
    with pytest.raises(ValueError, match="pass the tokenizer"):
        hl.StatePassingTrainer(
            model=tiny_model("mamba2"),
            args=config(tmp_path, eval_tasks=["passkey"]),
            train_dataset=documents(4, 40, 0),
        )
