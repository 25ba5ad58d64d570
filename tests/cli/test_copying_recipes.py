"""The copying experiment's recipes (recipes/copying-tiny-bytes, run by its run.sh) train as written on their
synthetic data, shrunk on the command line, and `hf-longssm eval --task copying` scores what they write."""

import json
from pathlib import Path

import pytest

from hf_longssm.cli import eval as eval_command
from hf_longssm.cli import train
from hf_longssm.loading import load_model
from tests.cli.test_recipes_by_hub_id import COPYING_RECIPES, ROOT


SHRINK = ["--max_steps", "2", "--segment_length", "16", "--dataset_config", "16", "--per_device_train_batch_size", "2"]
SHRINK += ["--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]


def test_every_copying_recipe_is_run_here():
    names = {str(p.relative_to(ROOT / "recipes" / "copying-tiny-bytes")) for p in COPYING_RECIPES}
    expected = {f"{m}/config_{r}.yaml" for m in ("mamba2", "mamba") for r in ("pretrain", "zero", "sp", "tbtt")}
    assert names == expected


@pytest.mark.parametrize("model_type", ["mamba2", "mamba"])
def test_the_copying_recipes_pretrain_post_train_and_evaluate(model_type, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipes name their model_config relative to the repository root
    folder = ROOT / "recipes" / "copying-tiny-bytes" / model_type
    base = tmp_path / "base"
    pretrain = train.main(["--config", str(folder / "config_pretrain.yaml"), "--output_dir", str(base), *SHRINK])
    assert pretrain.args.state_init == "zero" and pretrain.state.global_step == 2
    # Only the copy (n <= 7 of a 16-token segment) and the EOS after it are scored: the mask reached the trainer.
    batch = next(iter(pretrain.get_train_dataloader()))
    assert 0 < int((batch["shift_labels"] != -100).sum()) <= batch["shift_labels"].numel() // 2
    inits = {"zero": "zero", "sp": "state_passing", "tbtt": "tbtt"}
    for name, init in inits.items() if model_type == "mamba2" else [("tbtt", "tbtt")]:
        out = tmp_path / name
        argv = ["--config", str(folder / f"config_{name}.yaml"), "--model_name_or_path", str(base)]
        trainer = train.main([*argv, "--output_dir", str(out), *SHRINK])
        assert trainer.args.state_init == init and trainer.state.global_step == 2
        assert trainer.args.reset_state_on_eos is (name != "tbtt")  # each segment starts after an EOS
        assert load_model(str(out)).config.model_type == model_type
    path = eval_command.main(
        ["--model", str(out), "--task", "copying", "--lengths", "16", "64", "--num_trials", "2", "--no_plot",
         "--output_dir", str(tmp_path / "eval")]
    )  # fmt: skip
    cells = json.loads(Path(path).read_text())["results"][str(out)]["cells"]
    assert [(c["length"], c["copy_tokens"]) for c in cells] == [(16, 7), (64, 31)]


def test_copying_runs_that_would_cut_or_misread_the_documents_are_refused(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(ROOT)
    recipe = str(ROOT / "recipes" / "copying-tiny-bytes" / "mamba2" / "config_pretrain.yaml")
    argv = ["--config", recipe, "--output_dir", str(tmp_path / "out"), *SHRINK]
    with pytest.raises(ValueError, match="dataset_config='64' and segment_length=16.*Set dataset_config: \"16\""):
        train.main([*argv, "--dataset_config", "64"])
    with pytest.raises(ValueError, match="divides 65536"):
        train.main([*argv, "--per_device_train_batch_size", "3"])
    bpe = tmp_path / "bpe"
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")), eos_token="<unk>"
    ).save_pretrained(bpe)
    with pytest.raises(ValueError, match="byte tokenizer's ids.*tokenizer_name_or_path: byte"):
        train.main([*argv, "--tokenizer_name_or_path", str(bpe)])
    assert not (tmp_path / "out" / "model.safetensors").exists()
    tbtt = str(ROOT / "recipes" / "copying-tiny-bytes" / "mamba2" / "config_tbtt.yaml")
    base = tmp_path / "base"
    train.main(["--config", recipe, "--output_dir", str(base), *SHRINK])
    with caplog.at_level("WARNING"):
        train.main(
            ["--config", tbtt, "--model_name_or_path", str(base), "--output_dir", str(tmp_path / "t"), *SHRINK,
             "--reset_state_on_eos", "true"]
        )  # fmt: skip
    assert "every state is reset and the run is the zero control" in caplog.text
