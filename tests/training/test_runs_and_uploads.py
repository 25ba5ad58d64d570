"""Runs and uploads users can trust: one run per output folder, exact ends, pushes that fail safely, honest cards."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file

from hf_longssm.cli import push, train
from hf_longssm.training import checkpoints
from hf_longssm.training.output_lock import LOCK_FILE, OutputDirInUseError, hold_output_dir
from tests.utils import tiny_config


ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "tests" / "training" / "scripts" / "slow_save"


def run_args(tmp_path, *extra) -> list[str]:
    (tmp_path / "doc.txt").write_text("to be or not to be, that is the question. " * 40)
    model_config = json.dumps(tiny_config("mamba2", vocab_size=257).to_diff_dict())
    return [
        "--model_config", model_config, "--tokenizer_name_or_path", "byte", "--data_files", str(tmp_path / "doc.txt"),
        "--output_dir", str(tmp_path / "run"), "--state_init", "tbtt", "--segment_length", "16",
        "--per_device_train_batch_size", "2", "--max_steps", "6", "--save_steps", "3", "--logging_steps", "1",
        "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def holder(folder: Path) -> subprocess.Popen:
    """Another process holding `folder` as a run does, until killed."""
    code = (
        "import sys, time; from hf_longssm.training.output_lock import hold_output_dir\n"
        "with hold_output_dir(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout.readline().strip() == "held"
    return process


def from_local_base(tmp_path, output: str, *extra: str, lora: bool = True) -> tuple[Path, list[str]]:
    """A small base model trained into `tmp_path/run` (a local folder, no Hub id), and the arguments of a run that
    post-trains it (LoRA by default) into `tmp_path/<output>`."""
    train.main(run_args(tmp_path, "--max_steps", "1", "--save_strategy", "no"))
    base = tmp_path / "run"
    (base / "train_results.json").unlink()  # now a model folder to start from, not a finished run of ours
    args = run_args(tmp_path, "--output_dir", str(tmp_path / output), *extra)
    i = args.index("--model_config")
    args[i : i + 2] = ["--model_name_or_path", str(base), *(["--use_peft", "true"] if lora else [])]
    return base, args


# ----- 1. one run per output folder ----------------------------------------------------------------------------------
def test_a_second_run_into_a_held_folder_is_refused_and_writes_nothing(tmp_path):
    folder = tmp_path / "run"
    other = holder(folder)
    try:
        with pytest.raises(OutputDirInUseError, match=rf"in use by another run \(.*\"pid\": {other.pid}"):
            train.main(run_args(tmp_path, "--learning_rate", "0"))
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]  # the holder's lock, nothing of ours
    finally:
        other.kill()
        other.wait()
    # The holder died without releasing: the next launch takes the folder over and runs.
    trainer = train.main(run_args(tmp_path))
    assert trainer.state.global_step == 6 and not (folder / LOCK_FILE).exists()


def test_two_launches_at_once_one_is_refused_and_the_folder_holds_the_first_runs_weights(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The second launch imports first and waits for `go`, so it reaches the folder while the first runs; the first
    # run's saves pause 3 s each (test hook) to be sure of that.
    go = tmp_path / "go"
    code = (
        "import pathlib, sys, time; from hf_longssm.cli import train\n"
        "while not pathlib.Path(sys.argv[1]).exists(): time.sleep(0.05)\n"
        "train.main(sys.argv[2:])\n"
    )
    second = subprocess.Popen(
        [sys.executable, "-c", code, str(go), *run_args(tmp_path, "--learning_rate", "0")],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    slow = {**env, "PYTHONPATH": os.pathsep.join([str(HOOKS), str(ROOT)]), "HF_LONGSSM_TEST_SLOW_SAVE": "3"}
    command = [sys.executable, "-m", "hf_longssm", "train", *run_args(tmp_path, "--learning_rate", "0.01")]
    first = subprocess.Popen(command, cwd=ROOT, env=slow, stderr=subprocess.PIPE, text=True)
    while not (tmp_path / "run" / LOCK_FILE).exists():
        assert first.poll() is None, first.stderr.read()[-2000:]
        time.sleep(0.05)
    go.touch()
    assert second.wait(timeout=300) != 0 and first.poll() is None  # refused while the first still runs
    assert "is in use by another run" in second.stderr.read()
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    state = json.loads((tmp_path / "run" / "checkpoint-6" / "trainer_state.json").read_text())
    assert {log["learning_rate"] for log in state["log_history"] if "loss" in log} != {0.0}  # the first run's


def test_temporary_names_are_unique_per_writer(tmp_path, monkeypatch):
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: renamed.append(Path(src).name) or real_replace(src, dst))
    for _ in range(2):
        checkpoints.save_state_file(tmp_path, 0, {"x": torch.zeros(1)})
    assert len(set(renamed)) == 2 and all(name.startswith("hf_longssm_state_rank0.pt.") for name in renamed)


def test_the_lock_is_reentrant_and_released(tmp_path):
    with hold_output_dir(tmp_path), hold_output_dir(tmp_path):
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


# ----- 2. a resume from the checkpoint at max_steps finishes without training ----------------------------------------
def test_a_run_killed_after_its_last_save_finishes_without_another_step(tmp_path):
    train.main(run_args(tmp_path))
    run = tmp_path / "run"
    # What a kill between the last save and the end leaves: the checkpoints, none of the end's files.
    for name in ["train_results.json", "README.md", "model.safetensors", "config.json", "tokenizer.json"]:
        (run / name).unlink(missing_ok=True)
    trainer = train.main(run_args(tmp_path))
    assert trainer.state.global_step == 6
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert (run / "train_results.json").is_file()
    assert "| optimizer steps | 6 |" in (run / "README.md").read_text()
    final, saved = load_file(run / "model.safetensors"), load_file(run / "checkpoint-6" / "model.safetensors")
    assert final.keys() == saved.keys() and all(torch.equal(final[k], saved[k]) for k in final)


# ----- 3. pushes: everything local first, one upload, retryable ------------------------------------------------------
@pytest.fixture()
def hub(monkeypatch):
    """The Hub's network boundary: repositories created, folders uploaded (or a network that drops)."""
    calls = {"create": [], "upload": [], "fail": False}

    def create_repo(self, repo_id, **kwargs):
        calls["create"].append(repo_id)
        return type("RepoUrl", (), {"repo_id": repo_id if "/" in repo_id else f"me/{repo_id}"})()

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        if calls["fail"]:
            raise ConnectionError("network is unreachable")
        files = sorted(
            p.name for p in Path(folder_path).iterdir() if any(p.match(x) for x in kwargs["allow_patterns"])
        )
        calls["upload"].append((repo_id, files, {f: (Path(folder_path) / f).read_bytes() for f in files}))
        return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_a_push_uploads_once_after_every_local_result(tmp_path, hub):
    """Before: transformers uploaded the folder at every save (training_args.bin included) and again at the end."""
    train.main(run_args(tmp_path, "--push_to_hub", "true", "--hub_model_id", "me/tiny"))
    assert len(hub["upload"]) == 1 and (tmp_path / "run" / "checkpoint-6").is_dir()
    repo_id, files, contents = hub["upload"][0]
    assert repo_id == "me/tiny" and {"README.md", "train_results.json", "model.safetensors"} <= set(files)
    assert "training_args.bin" not in files and not any(f.startswith("_") for f in files)


def test_a_failed_push_leaves_a_finished_run_that_hf_longssm_push_uploads(tmp_path, hub):
    hub["fail"] = True
    args = run_args(tmp_path, "--push_to_hub", "true", "--hub_model_id", "me/tiny", "--save_strategy", "no")
    with pytest.raises(
        RuntimeError, match=r"upload to me/tiny failed.*Retry it with: hf-longssm push .*run --repo_id"
    ):
        train.main(args)
    run = tmp_path / "run"
    assert {"train_results.json", "README.md", "model.safetensors", "config.json"} <= {p.name for p in run.iterdir()}
    assert train.main(args) is None  # the run is finished: a rerun trains nothing
    hub["fail"] = False
    push.main([str(run), "--repo_id", "me/tiny"])
    assert [call[0] for call in hub["upload"]] == ["me/tiny"]
    assert "train_results.json" in hub["upload"][0][1]


def test_push_refuses_a_folder_without_a_finished_run(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(SystemExit, match="holds no finished run"):
        push.main([str(tmp_path / "half")])


# ----- 4. card metadata --------------------------------------------------------------------------------------------
def card_data(folder: Path) -> dict:
    return ModelCard.load(folder / "README.md").data.to_dict()


def test_a_local_dataset_path_never_goes_into_the_card(tmp_path):
    data = tmp_path / "corpus"
    data.mkdir()
    train.main(run_args(tmp_path))
    trainer = train.main(run_args(tmp_path, "--overwrite_output_dir", "true"))
    trainer.create_model_card(dataset_name=str(data))
    assert "datasets" not in card_data(tmp_path / "run")
    trainer.create_model_card(dataset_name="org/long-texts")
    assert card_data(tmp_path / "run")["datasets"] == ["org/long-texts"]


@pytest.mark.parametrize(
    ("state_init", "tag"), [("tbtt", "tbtt"), ("zero", "zero"), ("state_passing", "state-passing")]
)
def test_the_card_is_tagged_with_its_own_method_only(tmp_path, state_init, tag):
    train.main(run_args(tmp_path, "--state_init", state_init, "--max_steps", "1", "--save_strategy", "no"))
    tags = set(card_data(tmp_path / "run")["tags"])
    assert tag in tags and ({"state-passing", "tbtt", "zero"} - {tag}).isdisjoint(tags)


def test_the_licence_is_the_base_models_or_the_given_one_never_a_guess(tmp_path):
    base, args = from_local_base(tmp_path, "post", "--max_steps", "1", "--save_strategy", "no", lora=False)
    assert "license" not in card_data(base)  # built from a config: no licence known
    ModelCard("---\nlicense: mit\n---\nA base model.").save(base / "README.md")
    train.main(args)
    assert card_data(tmp_path / "post")["license"] == "mit"
    train.main(args + ["--overwrite_output_dir", "true", "--license", "apache-2.0"])
    assert card_data(tmp_path / "post")["license"] == "apache-2.0"


def test_a_lora_adapter_with_a_local_base_is_uploaded_naming_the_hub_base(tmp_path, hub):
    base, args = from_local_base(tmp_path, "lora", "--max_steps", "1", "--save_strategy", "no")
    train.main(args)
    with pytest.raises(ValueError, match="names the local base model.*base_model_id"):
        push.main([str(tmp_path / "lora"), "--repo_id", "me/lora"])
    push.main([str(tmp_path / "lora"), "--repo_id", "me/lora", "--base_model_id", "me/tiny-base"])
    _, files, contents = hub["upload"][-1]
    assert json.loads(contents["adapter_config.json"])["base_model_name_or_path"] == "me/tiny-base"
    local = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert local["base_model_name_or_path"] == str(base)  # the folder still loads here
    # With base_model_id in the recipe the card names it too.
    train.main(args + ["--overwrite_output_dir", "true", "--base_model_id", "me/tiny-base"])
    assert card_data(tmp_path / "lora")["base_model"] == "me/tiny-base"


def test_no_checkpoint_of_a_lora_run_from_a_local_base_holds_a_card_naming_the_path(tmp_path):
    """peft writes a placeholder card naming the base's local path into every adapter folder."""
    base, args = from_local_base(tmp_path, "lora", "--max_steps", "2", "--save_steps", "1")
    train.main(args)
    for folder in [tmp_path / "lora" / "checkpoint-1", tmp_path / "lora" / "checkpoint-2", tmp_path / "lora"]:
        card = folder / "README.md"
        assert not card.exists() or str(base) not in card.read_text(), folder
    assert "hf_longssm" in card_data(tmp_path / "lora")["tags"]  # the run's own card is there


def test_a_push_that_could_only_fail_is_refused_before_training(tmp_path, hub):
    _, args = from_local_base(tmp_path, "lora", "--push_to_hub", "true")
    with pytest.raises(ValueError, match="LoRA on the local model .*Set base_model_id"):
        train.main(args)
    with pytest.raises(ValueError, match="hub_strategy='checkpoint'.*once"):
        train.main(run_args(tmp_path, "--push_to_hub", "true", "--hub_strategy", "checkpoint"))
    with pytest.raises(ValueError, match="base_model_id='me/tiny-base.' is not a Hub repository id"):
        train.main(args + ["--base_model_id", "me/tiny-base."])
    assert not list((tmp_path / "lora").glob("checkpoint-*")) and hub["upload"] == []


def test_push_refuses_a_folder_whose_newer_run_is_unfinished_or_running(tmp_path, hub):
    train.main(run_args(tmp_path, "--max_steps", "2", "--save_strategy", "no"))
    run = tmp_path / "run"
    other = holder(run)
    try:
        with pytest.raises(OutputDirInUseError):
            push.main([str(run), "--repo_id", "me/tiny"])
    finally:
        other.kill()
        other.wait()
    # overwrite_output_dir starts a new run: the old run's finished marker goes, so its files are not pushed as done.
    with pytest.raises(ValueError, match="max_steps=0"):  # the new run fails at once, after its start
        train.main(run_args(tmp_path, "--overwrite_output_dir", "true", "--max_steps", "0"))
    train_results = run / "train_results.json"
    assert train_results.exists()  # refused before it started: nothing was deleted
    trainer_args = run_args(tmp_path, "--overwrite_output_dir", "true", "--max_steps", "1", "--save_strategy", "no")
    trainer_args[trainer_args.index("--data_files") + 1] = str(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError):
        train.main(trainer_args)
    assert not train_results.exists()
    with pytest.raises(SystemExit, match="holds no finished run"):
        push.main([str(run), "--repo_id", "me/tiny"])
    assert hub["upload"] == []


def test_push_with_a_base_model_id_names_it_in_the_card_too(tmp_path, hub):
    _, args = from_local_base(tmp_path, "lora", "--max_steps", "1", "--save_strategy", "no")
    train.main(args)
    push.main([str(tmp_path / "lora"), "--repo_id", "me/lora", "--base_model_id", "me/tiny-base"])
    card = ModelCard(hub["upload"][-1][2]["README.md"].decode())
    assert card.data.base_model == "me/tiny-base"
