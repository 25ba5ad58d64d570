"""`hf-longssm demo`: its recipes are found in --recipes_dir, or the error names the flag."""

from pathlib import Path

import pytest

from hf_longssm.cli import demo


ROOT = Path(__file__).resolve().parents[2]


def test_the_default_recipes_dir_holds_every_stage_from_the_repository_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    recipes = demo.stage_recipes(Path(demo.RECIPES_DIR))
    assert [name for name, _ in recipes] == ["base", "random_noise", "fitted_noise", "state_passing", "tbtt", "zero"]
    assert recipes[0][1] == Path("recipes/mamba2-tiny-bytes/zero/config_pretrain.yaml")


def test_missing_recipes_are_an_error_naming_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --recipes_dir"):
        demo.main(["--recipes_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_shrunk_demo_writes_results_with_the_far_near_ratio_of_every_model(tmp_path, monkeypatch):
    # `make demo`'s own command, shrunk (~2 minutes): six stages trained and evaluated.
    import json

    import torch

    monkeypatch.chdir(ROOT)
    out = tmp_path / "demo"
    shrunk = ["--max_steps", "3", "--eval_length", "4096", "--sequences_per_book", "1"]
    shrunk += ["--extend_samples", "1", "--extend_iterations", "2"]
    report = demo.main(["--output_dir", str(out), *shrunk, "--seed", "7"])
    assert torch.load(out / "tbtt" / "training_args.bin", weights_only=False).seed == 7
    names = ["base", "random_noise", "fitted_noise", "state_passing", "tbtt", "zero"]
    names += ["mamba_extend", "long_mamba", "delta_scale", "state_passing+mamba_extend"]
    assert list(report["models"]) == names and report["train_context"] == 32
    # The extensions are calibrated on the training plays, never on the held-out text they are evaluated on.
    for name in names[6:]:
        extension = json.loads((out / name / "extension.json").read_text())["settings"]
        assert extension["calibration_data"] in (None, {"dataset": "hf_longssm/offline-shakespeare", "split": "train"})
        assert report["seconds"][name] >= 0
    assert report["seconds"]["state_passing"] > 0 and not list(out.glob("*.partial"))
    assert all(b.keys() >= {"start", "end", "perplexity"} for b in report["models"]["base"])
    assert set(report["far_near_ratio"]) == set(names) and all(r > 0 for r in report["far_near_ratio"].values())
    assert [s["step"] for s in report["training_far_near_ratio"]["state_passing"]] == [0, 3]  # on start and end
    assert json.loads((out / "results.json").read_text()) == report
    assert "| state_passing |" in (out / "results.md").read_text()
    assert "| state_passing+mamba_extend |" in (out / "results.md").read_text()
    assert (out / "perplexity_by_position.png").stat().st_size > 10_000
    # A second run finds every stage done and changes nothing.
    before = (out / "results.json").read_text()
    demo.main(["--output_dir", str(out), *shrunk, "--seed", "7"])
    assert (out / "results.json").read_text() == before
