"""No file a user loads runs code (SECURITY.md): every `torch.save` file hf_longssm reads refuses a pickle payload
with an error naming the file, the payload never runs, and the honest files still load."""

import copy
import os
import pickle
from pathlib import Path

import pytest
import torch
from datasets import Dataset

import hf_longssm as hl
from hf_longssm.training import checkpoints
from hf_longssm.training.interventions import INTERVENTIONS
from tests import hub_cache as fixtures
from tests.fixtures.make_state_file import FOLDER as STATE_FIXTURE
from tests.fixtures.make_state_file import expected_payload
from tests.hub_cache import MAMBA1_ID, mamba_ssm_files
from tests.utils import tiny_model


hub_cache, hub_cache_files = fixtures.hub_cache, fixtures.hub_cache_files


class RunsACommand:
    """What an attacker puts in a file: unpickling it runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious(path: Path, marker: Path, *, zip_format: bool = True) -> None:
    payload = {"carried": None, "evil": RunsACommand(marker)}
    if zip_format:
        torch.save(payload, path)
    else:  # a plain pickle, the pre-1.6 layout
        path.write_bytes(pickle.dumps(payload))


def assert_tensors_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_tensors_equal(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_tensors_equal(x, y)
    else:
        assert a == b


@pytest.fixture()
def saved_run(tmp_path):
    data = Dataset.from_dict({"input_ids": torch.randint(1, 64, (8, 160)).tolist()})
    args = hl.StatePassingConfig(
        output_dir=str(tmp_path / "run"), state_init="state_passing", segment_length=16,
        per_device_train_batch_size=2, max_steps=2, save_steps=2, use_cpu=True, report_to=[], disable_tqdm=True,
    )  # fmt: skip
    hl.StatePassingTrainer(model=tiny_model("mamba2"), args=args, train_dataset=data).train()
    return tmp_path / "run", args, data


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch.save", "plain-pickle"])
def test_resuming_a_checkpoint_whose_state_file_runs_code_is_refused_and_nothing_runs(tmp_path, saved_run, zip_format):
    run, args, data = saved_run
    checkpoint = run / "checkpoint-2"
    marker = tmp_path / "PWNED"
    malicious(checkpoint / "hf_longssm_state_rank0.pt", marker, zip_format=zip_format)
    args.max_steps = 4
    trainer = hl.StatePassingTrainer(model=tiny_model("mamba2"), args=args, train_dataset=data)
    with pytest.raises(ValueError, match=r"state_rank0.pt was refused.*Nothing in it was run\. Resume from"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert not marker.exists()
    assert not (run / "checkpoint-4").exists()


def test_a_mamba_ssm_checkpoint_whose_weights_run_code_is_refused_and_nothing_runs(tmp_path, hub_cache):
    files = mamba_ssm_files(hub_cache.sources[MAMBA1_ID], {"d_model": 16, "n_layer": 2, "vocab_size": 257})
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_bytes(files["config.json"])
    marker = tmp_path / "PWNED"
    malicious(folder / "pytorch_model.bin", marker)
    with pytest.raises(ValueError, match=r"pytorch_model.bin was refused.*Nothing in it was run"):
        hl.load_model(str(folder))
    assert not marker.exists()


def test_a_state_file_written_by_hf_longssm_0_1_still_loads_exactly():
    """The fixture (tests/fixtures/make_state_file.py) was written by the release before `weights_only=True`."""
    payload = checkpoints.load_state_file(STATE_FIXTURE, 0)
    expected = expected_payload()
    assert_tensors_equal(payload, expected)
    # ... and it restores the intervention: same carried state, statistics, and the noise generator continues.
    config = hl.StatePassingConfig(output_dir="unused", state_init="fitted_noise", use_cpu=True, report_to=[])
    restored = INTERVENTIONS["fitted_noise"](config, num_layers=2, seed=0)
    restored.load_state_dict(payload, tiny_model("mamba2").config, torch.device("cpu"))
    reference = torch.Generator().manual_seed(1234)
    torch.randn(3, generator=reference)
    assert torch.equal(torch.randn(5, generator=restored.generator), torch.randn(5, generator=reference))
    config = tiny_model("mamba2").config
    assert restored.fitted_stats.count == [2 * config.head_dim * config.state_size] * 2  # per head: rows x p x n
    assert_tensors_equal(restored.carried.state_dict(), expected["carried"])


def test_a_state_file_the_trainer_writes_loads_with_weights_only(saved_run):
    run, _, _ = saved_run
    payload = torch.load(run / "checkpoint-2" / "hf_longssm_state_rank0.pt", weights_only=True)
    assert payload["carried"] is not None and payload["global_step"] == 2


def test_no_hub_token_is_written_into_training_args_bin(tmp_path):
    """transformers pickles the arguments into `training_args.bin`, which `push_to_hub` uploads."""
    args = hl.StatePassingConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], hub_token="hf_SECRETxyz")
    trainer = hl.StatePassingTrainer(model=tiny_model("mamba2"), args=args)
    trainer.save_model()
    written = (tmp_path / "training_args.bin").read_bytes()
    assert b"hf_SECRETxyz" not in written
    assert torch.load(tmp_path / "training_args.bin", weights_only=False).hub_token is None
    assert args.hub_token == "hf_SECRETxyz" and copy.deepcopy(args).hub_token == "hf_SECRETxyz"
