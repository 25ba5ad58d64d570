"""`python -m hf_longssm <command> ...`: the `hf-longssm` command."""

from hf_longssm.cli import main


if __name__ == "__main__":
    main()
