#!/usr/bin/env bash
# The synthetic copying experiment, offline on a CPU (~35 minutes on one core): a Mamba-2 and a Mamba-1 pretrained
# on copying at T = 64 tokens (copies of 1..31 symbols, hf_longssm/copying), each post-trained for 400 steps with a
# zero state (the control), state passing and TBTT, then scored on copies up to 16 T long (`hf-longssm eval --task
# copying`: per-token and exact-match accuracy by sequence length, a JSON and a figure).
#
#     bash recipes/copying-tiny-bytes/run.sh [output folder, default outputs/copying]
#
# Run from the repository root. Finished runs are skipped and killed ones resume: re-running continues.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-outputs/copying}
PYTHON=${PYTHON:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny models: one thread is faster, and two runs side by side do not fight
RECIPES=recipes/copying-tiny-bytes
models=()
for model in mamba2 mamba; do
    "$PYTHON" -m hf_longssm train --config "$RECIPES/$model/config_pretrain.yaml" --output_dir "$OUT/$model/base"
    models+=("$OUT/$model/base")
    for init in zero sp tbtt; do
        "$PYTHON" -m hf_longssm train --config "$RECIPES/$model/config_$init.yaml" \
            --model_name_or_path "$OUT/$model/base" --output_dir "$OUT/$model/$init"
        models+=("$OUT/$model/$init")
    done
done
"$PYTHON" -m hf_longssm eval --model "${models[@]}" --task copying --tokenizer byte --train_context 64 \
    --lengths 64 128 256 512 1024 --num_trials 32 --output_dir "$OUT/eval"
