"""`python -m hf_longssm.evaluate ...`: the same command as `hf-longssm eval`."""

import sys

from hf_longssm.cli import main


if __name__ == "__main__":
    main(["eval", *sys.argv[1:]])
