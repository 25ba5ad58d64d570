"""Which attention policy lets a hybrid generalize past its training context: the offline demo with attention.

    python benchmarks/hybrid_attention_policy.py [--output_dir outputs/hybrid-demo] [--pretrain_steps 1800]

The demo's byte-level Mamba-2 (hidden 128, two Mamba-2 layers, state 64, decays log-spaced 0.01..1) with one
attention layer between them (Nemotron-H, pattern "M*M", 4 heads of 32, no positional encoding) is pretrained at
T = 32 bytes from a zero state (the demo's `zero/config_pretrain.yaml`), then post-trained with state passing and
TBTT (the demo's `sp` / `tbtt` recipes, 400 steps) under each `attention_state`: `window` (the previous segment's 32
keys), `none` and `full`. Every model is evaluated under the policy it was trained with (the base under each) on the
first 4,096 bytes of the 4 held-out plays, segment by segment: far/near = perplexity at [2048, 4095) over that at
[32, 64). Writes `results.json` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from hf_longssm import evaluation  # noqa: E402
from hf_longssm.cli import train  # noqa: E402
from hf_longssm.evaluation.text import documents_to_input_ids  # noqa: E402
from hf_longssm.loading import load_model, load_tokenizer  # noqa: E402
from hf_longssm.sources import load_documents  # noqa: E402


RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "mamba2-tiny-bytes"
HYBRID = {
    "model_type": "nemotron_h", "vocab_size": 257, "hidden_size": 128, "num_hidden_layers": 3,
    "hybrid_override_pattern": "M*M", "mamba_num_heads": 8, "mamba_head_dim": 32, "ssm_state_size": 64,
    "n_groups": 1, "chunk_size": 32, "conv_kernel": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
    "head_dim": 32, "intermediate_size": 256, "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0,
    "tie_word_embeddings": True,
}  # fmt: skip
POLICIES = ("window", "none", "full")


def far_near(model, input_ids, policy: str) -> tuple[float, float, float]:
    result = evaluation.position_perplexity(model, input_ids, segment_length=32, attention_state=policy)
    near, far = result.perplexity([(32, 64), (2048, input_ids.shape[1] - 1)])
    return near["perplexity"], far["perplexity"], far["perplexity"] / near["perplexity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/hybrid-demo")
    parser.add_argument("--pretrain_steps", type=int, default=1800)
    parser.add_argument("--post_train_steps", type=int, default=400)
    args = parser.parse_args()
    out = Path(args.output_dir)
    common = [
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--overwrite_output_dir",
        "true",
        "--report_to",
        "none",
    ]

    start = time.time()
    base = out / "base"
    train.main(["--config", str(RECIPES / "zero" / "config_pretrain.yaml"), "--model_config", json.dumps(HYBRID),
                "--max_steps", str(args.pretrain_steps), "--output_dir", str(base), *common])  # fmt: skip
    timings = {"pretrain_s": round(time.time() - start, 1)}

    tokenizer = load_tokenizer("byte")
    plays = load_documents(dataset_name="hf_longssm/offline-shakespeare", split="held_out")
    input_ids = documents_to_input_ids(plays, tokenizer, 4096)
    rows = [{"model": "base", "policy": policy, **dict(zip(("near", "far", "far_near"), far_near(
        load_model(str(base)).eval(), input_ids, policy)))} for policy in POLICIES]  # fmt: skip
    for method in ("sp", "tbtt"):
        for policy in POLICIES:
            folder = out / f"{method}-{policy}"
            start = time.time()
            train.main(["--config", str(RECIPES / method / "config_demo.yaml"), "--model_name_or_path", str(base),
                        "--attention_state", policy, "--max_steps", str(args.post_train_steps),
                        "--output_dir", str(folder), *common])  # fmt: skip
            timings[f"{method}-{policy}_s"] = round(time.time() - start, 1)
            values = far_near(load_model(str(folder)).eval(), input_ids, policy)
            rows.append({"model": method, "policy": policy, **dict(zip(("near", "far", "far_near"), values))})
            print(rows[-1], flush=True)
    write_results(out / "results.json", {"rows": rows, "timings": timings, "model_config": HYBRID})
    print("| model | policy | ppl [32, 64) | ppl [2048, 4095) | far / near |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['policy']} | {row['near']:.2f} | {row['far']:.2f} | {row['far_near']:.3f} |")


if __name__ == "__main__":
    main()
