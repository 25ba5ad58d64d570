"""Runs killed with SIGKILL before, during and after a save resume exactly from their last complete checkpoint,
through the command a user runs (`python -m hf_longssm train --config ...`, and `accelerate launch` with 2 processes).

The comparison is the loss of every step in the final `trainer_state.json` against an uninterrupted run.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.utils import tiny_config


ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "tests" / "training" / "scripts" / "slow_save"
ACCELERATE_CONFIG = ROOT / "recipes" / "accelerate_configs" / "cpu_2proc.yaml"
MAX_STEPS, SAVE_STEPS = 8, 2


def write_recipe(tmp_path: Path, name: str) -> Path:
    texts = tmp_path / "texts"
    if not texts.is_dir():
        texts.mkdir()
        rng = random.Random(0)
        for i in range(6):
            words = [rng.choice(["to", "be", "or", "not", "that", "is", "the", "question"]) for _ in range(400)]
            (texts / f"doc{i}.txt").write_text(" ".join(words))
    recipe = {
        "model_config": json.dumps(tiny_config("mamba2", vocab_size=257).to_diff_dict()),
        "tokenizer_name_or_path": "byte",
        "data_files": sorted(str(p) for p in texts.iterdir()),
        "output_dir": str(tmp_path / name),
        "state_init": "tbtt",
        "segment_length": 32,
        "per_device_train_batch_size": 2,
        "max_steps": MAX_STEPS,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "save_strategy": "steps",
        "save_steps": SAVE_STEPS,
        "logging_steps": 1,
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_drop_last": True,
        "seed": 0,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def command(recipe: Path, processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "hf_longssm", "train", "--config", str(recipe)]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG)]
    return launch + [
        "--main_process_port",
        "29531",
        str(ROOT / "recipes" / "post_train_sp.py"),
        "--config",
        str(recipe),
    ]


def environment(tmp_path: Path, slow_save: float = 0.0) -> dict:
    pids = tmp_path / "pids"
    pids.mkdir(exist_ok=True)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HOOKS), str(ROOT)]),
        "OMP_NUM_THREADS": "1",
        "HF_LONGSSM_TEST_PID_DIR": str(pids),
        "HF_LONGSSM_TEST_SLOW_SAVE": str(slow_save),
    }


def run(recipe: Path, tmp_path: Path, processes: int = 1) -> str:
    """Run to the end; return what it logged."""
    result = subprocess.run(
        command(recipe, processes), env=environment(tmp_path), capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stderr


def timed_run(recipe: Path, tmp_path: Path, processes: int, slow_save: float) -> tuple[float, float]:
    """Run to the end; return how long it took, and how long from the creation of its output folder on."""
    output_dir = Path(yaml.safe_load(recipe.read_text())["output_dir"])
    env = environment(tmp_path, slow_save)
    started, created = time.time(), None
    process = subprocess.Popen(command(recipe, processes), env=env, stderr=subprocess.DEVNULL, cwd=ROOT)
    while process.poll() is None:
        if created is None and output_dir.exists():
            created = time.time()
        time.sleep(0.02)
    assert process.returncode == 0 and created is not None
    return time.time() - started, time.time() - created


def losses(output_dir: Path) -> list[float]:
    state = json.loads((output_dir / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    return [log["loss"] for log in state["log_history"] if "loss" in log]


def kill_when(
    recipe: Path, tmp_path: Path, condition, processes: int = 1, slow_save: float = 0.0, may_finish: bool = False
) -> bool:
    """Start the run, SIGKILL the launched process as soon as `condition(output_dir)` holds. Returns whether it was
    killed (False: it finished first, allowed only with `may_finish`)."""
    process = subprocess.Popen(
        command(recipe, processes),
        env=environment(tmp_path, slow_save),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    output_dir = Path(yaml.safe_load(recipe.read_text())["output_dir"])
    start = time.time()
    while not condition(output_dir):
        if process.poll() is not None:
            error = process.stderr.read()[-3000:]
            process.stderr.close()
            assert may_finish and process.returncode == 0, f"the run ended before the kill: {error}"
            return False
        assert time.time() - start < 300, "the kill condition never held"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    return True


def complete(step: int):
    return lambda out: (out / f"checkpoint-{step}" / "hf_longssm_checkpoint.json").is_file()


def saving(step: int):
    # transformers has written the optimizer of this checkpoint and pauses (slow-save hook): mid-save.
    return lambda out: (out / f"checkpoint-{step}" / "optimizer.pt").is_file()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's losses, one process."""
    tmp_path = tmp_path_factory.mktemp("reference")
    run(write_recipe(tmp_path, "run"), tmp_path)
    return losses(tmp_path / "run")


@pytest.mark.parametrize(
    "moment",
    ["before-the-first-save", "during-a-save", "right-after-a-save"],
)
def test_a_killed_run_resumes_exactly_from_its_last_complete_checkpoint(tmp_path, reference, moment):
    recipe = write_recipe(tmp_path, "run")
    output_dir = tmp_path / "run"
    if moment == "before-the-first-save":
        kill_when(recipe, tmp_path, lambda out: (out / "runs").exists() or out.exists())
    elif moment == "during-a-save":
        kill_when(recipe, tmp_path, saving(4), slow_save=3.0)
        assert (output_dir / "checkpoint-4").is_dir() and not complete(4)(output_dir)
    else:
        kill_when(recipe, tmp_path, complete(4))
    run(recipe, tmp_path)  # the same command again: resumes from the newest complete checkpoint
    assert losses(output_dir) == pytest.approx(reference, abs=1e-5)
    assert (output_dir / "train_results.json").is_file()


def test_save_total_limit_never_deletes_the_last_complete_checkpoint_before_the_next_is_complete(tmp_path, reference):
    recipe = write_recipe(tmp_path, "run")
    recipe.write_text(recipe.read_text() + "save_total_limit: 1\n")
    output_dir = tmp_path / "run"
    kill_when(recipe, tmp_path, saving(6), slow_save=3.0)
    assert complete(4)(output_dir) and not complete(6)(output_dir)  # the old one survives the interrupted save
    run(recipe, tmp_path)
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == [f"checkpoint-{MAX_STEPS}"]
    assert losses(output_dir) == pytest.approx(reference, abs=1e-5)


def workers_of(tmp_path: Path) -> list[int]:
    """The PIDs the test hook recorded whose parent is another recorded process: `accelerate launch`'s workers."""
    recorded = {int(p.stem): int(p.read_text()) for p in (tmp_path / "pids").glob("*.pid")}
    return [pid for pid, parent in recorded.items() if parent in recorded]


def wait_until_gone(pids: list[int], seconds: float = 30.0) -> bool:
    deadline = time.time() + seconds
    while any(alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.1)
    return not any(alive(pid) for pid in pids)


@pytest.mark.multiprocess
def test_killing_accelerate_launch_while_its_workers_start_stops_them(tmp_path):
    # Killed while its workers are still importing, before they join the process group: a worker left running then
    # would join the next launch's rendezvous (same port) and hang it.
    recipe = write_recipe(tmp_path, "run")
    kill_when(recipe, tmp_path, lambda out: len(workers_of(tmp_path)) == 2, processes=2)
    assert wait_until_gone(workers_of(tmp_path))
    assert not (tmp_path / "run").exists()


@pytest.mark.multiprocess
def test_killing_accelerate_launch_stops_its_workers_and_the_run_resumes_exactly(tmp_path):
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    run(write_recipe(reference_dir, "run"), reference_dir, processes=2)
    recipe = write_recipe(tmp_path, "run")
    # Saves pause 1 s (test hook): the steps take milliseconds, so without it the run could complete checkpoint 8
    # within one poll of the kill condition.
    kill_when(recipe, tmp_path, complete(4), processes=2, slow_save=1.0)
    # The launcher is gone: its workers must not go on training on their own.
    assert wait_until_gone(workers_of(tmp_path))
    assert not complete(8)(tmp_path / "run")
    run(recipe, tmp_path, processes=2)
    assert losses(tmp_path / "run") == pytest.approx(losses(reference_dir / "run"), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_random_kills(tmp_path, processes):
    """20 kills at random moments (RUN_SLOW=1; 10 per process count): never more lost than the steps since the last
    complete checkpoint, and every resume exact. Start-up takes most of a run this small, so half the moments are
    drawn over the whole run and half over its training phase (from the output folder's creation on), where each
    save pauses 0.5 s (test hook) so that kills land inside saves too."""
    pause = 0.5
    reference_dir, timing_dir = tmp_path / "reference", tmp_path / "timing"
    reference_dir.mkdir()
    timing_dir.mkdir()
    run(write_recipe(reference_dir, "run"), reference_dir, processes=processes)
    expected = losses(reference_dir / "run")
    # Timed warm (the first launch also pays for cold imports), with the trials' paused saves.
    whole, phase = timed_run(write_recipe(timing_dir, "run"), timing_dir, processes, slow_save=pause)
    rng = random.Random(processes)
    killed, moments = 0, []
    for trial in range(10):
        trial_dir = tmp_path / f"trial{trial}"
        trial_dir.mkdir()
        recipe = write_recipe(trial_dir, "run")
        if trial % 2 == 0:  # anywhere in the run, start-up included
            at = time.time() + rng.uniform(0.05, 0.95) * whole

            def condition(out, at=at):
                return time.time() > at

        else:  # in the training phase: steps, saves, the final save
            delay, seen = rng.uniform(0.0, 1.0) * phase, []

            def condition(out, delay=delay, seen=seen):
                if not seen and out.exists():
                    seen.append(time.time())
                return bool(seen) and time.time() - seen[0] > delay

        # A late moment can still fall after a run's end (then nothing is left to resume).
        killed_now = kill_when(recipe, trial_dir, condition, processes=processes, slow_save=pause, may_finish=True)
        killed += killed_now
        assert wait_until_gone(workers_of(trial_dir)), trial  # none left to join the next launch
        saved = [s for s in range(SAVE_STEPS, MAX_STEPS + 1, SAVE_STEPS) if complete(s)(trial_dir / "run")]
        partial = [p.name for p in sorted((trial_dir / "run").glob("checkpoint-*")) if int(p.name[11:]) not in saved]
        moments.append((trial, killed_now, saved, partial))
        log = run(recipe, trial_dir, processes=processes)
        if saved and saved[-1] < MAX_STEPS:  # lost only the steps since the newest complete checkpoint
            assert f"Resuming from {trial_dir / 'run' / f'checkpoint-{saved[-1]}'}" in log, trial
        assert losses(trial_dir / "run") == pytest.approx(expected, abs=1e-5), trial
    for trial, killed_now, saved, partial in moments:  # what the kills hit (pytest -s)
        print(f"{processes} process(es), trial {trial}: killed={killed_now} complete={saved} mid-save={partial}")
    assert killed >= 8, f"only {killed} of 10 runs were killed before they finished"
