"""Launch the two-process training script (scripts/sharded_train.py) and read what each rank recorded."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "training" / "scripts" / "sharded_train.py"
CONFIGS = ROOT / "recipes" / "accelerate_configs"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check(results: list[subprocess.CompletedProcess]) -> None:
    for result in results:
        assert result.returncode == 0, result.stderr[-4000:]


def accelerate_launch(config: str, output_dir: Path, options: dict, *extra: str) -> None:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
           "--num_processes", "2", "--main_process_port", str(free_port()), *extra, str(SCRIPT), str(output_dir),
           json.dumps(options)]  # fmt: skip
    check([subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600, cwd=ROOT)])


def torchrun_two_nodes(output_dir: Path, options: dict) -> None:
    """Two torchrun launches, one per "node" (`--node_rank 0` and `1`), one process each, meeting on localhost."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(node),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                str(SCRIPT),
                str(output_dir),
                json.dumps(options),
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=ROOT,
        )
        for node in (0, 1)
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    check(results)


def records(output_dir: Path, kind: str = "fresh") -> list[dict]:
    return [json.loads((output_dir / f"records_rank{r}_{kind}.json").read_text()) for r in (0, 1)]


def losses(rank_records: dict) -> list[float]:
    return [r["loss"] for r in rank_records["records"]]
