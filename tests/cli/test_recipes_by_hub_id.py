"""Every shipped recipe trains as written, by its real model and tokenizer ids (served from the offline Hub cache
fixture), shrunk on the command line: 2 steps of 2 x 16 tokens on CPU, local text files instead of the dataset.

The demo recipes run as the demo does: `zero/config_pretrain.yaml` (built from `model_config`) writes
`outputs/demo/base`, which the post-training recipes name, all from one working folder."""

import math
from pathlib import Path

import pytest
import yaml

from hf_longssm.cli import train
from hf_longssm.loading import load_model
from tests import hub_cache as fixtures


hub_cache, hub_cache_files = fixtures.hub_cache, fixtures.hub_cache_files  # the offline Hub cache fixtures
ROOT = Path(__file__).resolve().parents[2]
# The GLA recipes need fla (which imports Triton): they run in the kernels job (tests/kernels_cpu/test_fla_families).
FLA_FOLDERS = ("gla-tiny-bytes", "gla-1.3b")
FLA_RECIPES = sorted(p for folder in FLA_FOLDERS for p in (ROOT / "recipes" / folder).glob("**/config_*.yaml"))
# The copying experiment's recipes train on their own synthetic data: tests/cli/test_copying_recipes.py.
COPYING_RECIPES = sorted((ROOT / "recipes" / "copying-tiny-bytes").glob("**/config_*.yaml"))
RECIPES = sorted(set((ROOT / "recipes").glob("**/config_*.yaml")) - set(FLA_RECIPES) - set(COPYING_RECIPES))
PRETRAIN = ROOT / "recipes" / "mamba2-tiny-bytes" / "zero" / "config_pretrain.yaml"
TEXT = "Now is the winter of our discontent made glorious summer by this sun of York. " * 12
SHRINK = {
    "--max_steps": "2",
    "--segment_length": "16",
    "--per_device_train_batch_size": "2",
    "--gradient_accumulation_steps": "1",
    "--bf16": "false",
    "--save_strategy": "no",
    "--logging_steps": "1",
    "--report_to": "none",
    "--push_to_hub": "false",
    "--use_cpu": "true",
}


def recipe_args(recipe: Path, workdir: Path, output_dir: Path | None) -> list[str]:
    files = [str(workdir / "data" / f"doc{i}.txt") for i in range(2)]
    args = ["--config", str(recipe), "--data_files", *files]
    for key, value in SHRINK.items():
        args += [key, value]
    return args + (["--output_dir", str(output_dir)] if output_dir is not None else [])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder like the repository root (`recipes/` linked in, text files in `data/`), holding the demo's
    base model at `outputs/demo/base`: the pretraining recipe run there with its own output_dir."""
    folder = tmp_path_factory.mktemp("workdir")
    (folder / "recipes").symlink_to(ROOT / "recipes")
    (folder / "data").mkdir()
    for i in range(2):
        (folder / "data" / f"doc{i}.txt").write_text(f"Document {i}. " + TEXT)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        pretrain = train.main(recipe_args(PRETRAIN, folder, output_dir=None))
    return folder, pretrain


def test_every_recipe_is_run_here():
    assert PRETRAIN in RECIPES and len(RECIPES) >= 7 and len(FLA_RECIPES) == 7


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(ROOT / "recipes")) for p in RECIPES])
def test_the_recipe_trains_by_its_real_model_id(recipe, workdir, hub_cache, tmp_path, monkeypatch):
    folder, pretrain = workdir
    raw = yaml.safe_load(recipe.read_text())
    monkeypatch.chdir(folder)
    if recipe == PRETRAIN:
        trainer, output_dir = pretrain, folder / raw["output_dir"]
    else:
        name = raw["model_name_or_path"]
        # Every model a recipe names loads: a Hub id from the cache, or the demo's base model.
        assert name in hub_cache.sources or (folder / name / "config.json").is_file(), name
        output_dir = tmp_path / "out"
        if raw.get("fsdp"):  # one process here: the recipe without its sharding (FSDP2 itself: test_fsdp.py)
            unsharded = {k: v for k, v in raw.items() if k not in ("fsdp", "fsdp_config")}
            recipe = tmp_path / recipe.name
            recipe.write_text(yaml.safe_dump(unsharded))
        trainer = train.main(recipe_args(recipe, folder, output_dir))
        if name in hub_cache.sources:
            assert trainer.model.config.model_type == hub_cache.sources[name].config.model_type
    assert trainer.state.global_step == 2
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
    saved = load_model(str(output_dir))  # a LoRA recipe saves an adapter: its base model by id, then the adapter
    expected = hub_cache.sources[name].config.model_type if recipe != PRETRAIN and name in hub_cache.sources else None
    assert saved.config.model_type == (expected or ("mamba2" if "mamba2" in str(recipe) else "mamba"))
    if raw.get("use_peft"):
        assert (output_dir / "adapter_config.json").is_file() and saved.active_adapters == ["default"]
