"""Step time of StatePassingTrainer on 2 CPU processes (gloo): FSDP2 and DeepSpeed ZeRO-3 against DDP.

    python benchmarks/distributed_step.py [--model_type mamba2] [--steps 30] [--repeats 3]

Each mode trains the same model (8 layers, hidden 256: 3.5M parameters for Mamba-2) on the same streams (TBTT,
segment 64, 2 rows per process) through the training script the tests use (tests/training/scripts/sharded_train.py),
launched with accelerate; the launches of the modes alternate, `--repeats` times, so that load on the machine hits
them alike. Per launch: the median `training_step` time of rank 0 after 3 warm-up steps; per mode: the median over
launches; ratio = mode / DDP. On 2 CPU cores the collectives FSDP2 and ZeRO-3 add (all-gather of each block's
weights, reduce-scatter of its gradients) are not hidden behind compute as on GPUs: read the ratios as CPU figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "training" / "scripts" / "sharded_train.py"
CONFIGS = ROOT / "recipes" / "accelerate_configs"


def launch(config: str, options: dict, output_dir: Path) -> list[float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
           "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(port), str(SCRIPT),
           str(output_dir), json.dumps(options)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads((output_dir / "records_rank0_fresh.json").read_text())["step_times"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_type", default="mamba2", choices=["mamba", "mamba2"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--modes", nargs="+", default=["ddp", "fsdp2", "zero3"], help="ddp is the reference; zero3 needs deepspeed"
    )
    parser.add_argument("--output", default="benchmarks/results/distributed_step_cpu.json")
    args = parser.parse_args()

    block = "Mamba2Block" if args.model_type == "mamba2" else "MambaBlock"
    # 8 layers, hidden 256: big enough that a step is mostly compute, not launch overhead
    model = {"hidden_size": 256, "num_hidden_layers": 8}
    model.update({"num_heads": 16, "head_dim": 32, "state_size": 32} if args.model_type == "mamba2" else {})
    model.update({"intermediate_size": 512, "time_step_rank": 16} if args.model_type == "mamba" else {})
    base = {"model_type": args.model_type, "state_init": "tbtt", "max_steps": args.steps, "model": model,
            "config": {"save_strategy": "no", "segment_length": 64}}  # fmt: skip
    fsdp = {"fsdp": True, "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": [block]}}
    modes = {
        "ddp": ("cpu_2proc.yaml", base),
        "fsdp2": ("cpu_2proc.yaml", {**base, "config": {**base["config"], **fsdp}}),
    }
    if importlib.util.find_spec("deepspeed") is not None:
        modes["zero3"] = ("zero3.yaml", base)
    modes = {mode: modes[mode] for mode in ["ddp", *args.modes] if mode in modes}  # ddp first: the reference
    medians: dict[str, list[float]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for mode, (config, options) in modes.items():
                times = launch(config, options, Path(tmp) / f"{mode}_{repeat}")
                medians[mode].append(statistics.median(times[3:]))
                print(f"{mode} repeat {repeat}: {medians[mode][-1] * 1e3:.1f} ms/step", flush=True)
    step = {mode: statistics.median(values) for mode, values in medians.items()}
    rows = [
        {
            "mode": mode,
            "median_step_s": step[mode],
            "per_launch_s": medians[mode],
            "ratio_vs_ddp": step[mode] / step["ddp"],
        }
        for mode in modes
    ]
    write_results(args.output, {"model_type": args.model_type, "processes": 2, "steps": args.steps, "rows": rows})
    for row in rows:
        print(f"{row['mode']}: {row['median_step_s'] * 1e3:.1f} ms/step, {row['ratio_vs_ddp']:.2f}x DDP")


if __name__ == "__main__":
    main()
