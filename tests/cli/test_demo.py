"""`hf-longssm demo`: its recipes are found in --recipes_dir, or the error names the flag."""

from pathlib import Path

import pytest

from hf_longssm.cli import demo


ROOT = Path(__file__).resolve().parents[2]


def test_the_default_recipes_dir_holds_every_stage_from_the_repository_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    recipes = demo.stage_recipes(Path(demo.RECIPES_DIR))
    assert [name for name, _ in recipes] == ["base", "state_passing", "tbtt", "zero"]
    assert recipes[0][1] == Path("recipes/mamba2-tiny-bytes/zero/config_pretrain.yaml")


def test_missing_recipes_are_an_error_naming_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --recipes_dir"):
        demo.main(["--recipes_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
