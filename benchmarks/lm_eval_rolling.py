"""Tokens/s of the lm-eval adapter's `loglikelihood_rolling` vs one plain transformers forward on the same tokens.

    python benchmarks/lm_eval_rolling.py [--model_type mamba2] [--size tiny] [--length 8192] [--repeats 1]

The adapter (`hf_longssm.evaluation.harness.LongSSMLM`) tokenizes the document, reads it in segments with the state
carried and sums the log-probabilities; the plain path is one forward over the same token ids plus log-softmax and
gather. Both are timed after one warm-up run (`--repeats` timed runs each, interleaved; the issue asks for one).
The ratio is adapter / plain tokens per second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from lm_eval.api.instance import Instance


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model, interleaved_medians, write_results  # noqa: E402

from hf_longssm.evaluation.harness import LongSSMLM  # noqa: E402
from hf_longssm.tokenization import byte_tokenizer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_type", default="mamba2", choices=["mamba", "mamba2", "falcon_mamba"])
    p.add_argument("--size", default="tiny")
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--segment_length", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--output", default="benchmarks/results/lm_eval_rolling_cpu.json")
    args = p.parse_args()

    model = build_model(args.model_type, args.size).eval()
    lm = LongSSMLM(model, tokenizer=byte_tokenizer(), segment_length=args.segment_length)
    # ASCII text: byte ids 33..127, inside every benchmark size's vocabulary.
    text = "".join(chr(33 + (i * 7919) % 94) for i in range(args.length))
    tokens = lm.tok_encode(text)
    assert len(tokens) == args.length
    request = [Instance("loglikelihood_rolling", {}, (text,), 0)]
    ids = torch.tensor([[lm.prefix_token_id] + tokens[:-1]])
    targets = torch.tensor([tokens])

    def adapter():
        return lm.loglikelihood_rolling(request, disable_tqdm=True)[0]

    def plain():
        with torch.no_grad():
            logits = model(ids).logits
            return float(torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None]).sum())

    difference = abs(adapter() - plain())
    times = interleaved_medians({"adapter": adapter, "plain": plain}, repeats=args.repeats)
    rate = {name: args.length / t["median_s"] for name, t in times.items()}
    print(
        f"{args.model_type}/{args.size} at {args.length} tokens: adapter {rate['adapter']:.0f} tok/s, plain "
        f"{rate['plain']:.0f} tok/s, ratio {rate['adapter'] / rate['plain']:.2f} (|delta loglik| {difference:.2e})"
    )
    write_results(
        args.output,
        {
            "model_type": args.model_type,
            "size": args.size,
            "length": args.length,
            "segment_length": args.segment_length,
            "adapter": {"time": times["adapter"], "tokens_per_s": rate["adapter"]},
            "plain": {"time": times["plain"], "tokens_per_s": rate["plain"]},
            "ratio_adapter_over_plain": rate["adapter"] / rate["plain"],
            "abs_loglikelihood_difference": difference,
        },
    )


if __name__ == "__main__":
    main()
