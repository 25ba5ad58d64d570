"""Post-train with a recipe: `hf-longssm train` as a script, for `accelerate launch`.

    accelerate launch [--config_file recipes/accelerate_configs/multi_gpu.yaml] recipes/post_train_sp.py \
        --config recipes/mamba2-130m/sp/config_full.yaml [--any_key value ...]

Also runs as plain `python recipes/post_train_sp.py --config ...`; the code is `hf_longssm/cli/train.py`.
"""

from hf_longssm.cli.train import main


if __name__ == "__main__":
    main()
