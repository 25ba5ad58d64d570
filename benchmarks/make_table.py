"""Markdown tables of the latest benchmark JSONs (pasted into benchmarks/README.md)."""

import json
from pathlib import Path


RESULTS = Path(__file__).parent / "results"


def fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}g}"


def forward_backward():
    lines = []
    for path in sorted(RESULTS.glob("forward_backward_cpu*.json")):
        lines += forward_backward_file(json.loads(path.read_text())) + [""]
    return "\n".join(lines)


def forward_backward_file(data):
    lines = [
        f"`{data['command']}`",
        "",
        "| model | size | L | fwd+bwd ours (s) | fwd+bwd transformers (s) | speedup fwd+bwd | speedup fwd | "
        "peak MiB fwd+bwd ours / transformers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        fb = row["time"].get("forward_backward", {})
        ours = fb.get("hf_longssm", {}).get("median_s")
        plain = fb.get("transformers", {}).get("median_s")
        mem = row["memory"]
        peak = (
            f"{fmt(mem['hf_longssm'].get('peak_rss_mib_forward_backward'))} / "
            f"{fmt(mem['transformers'].get('peak_rss_mib_forward_backward'))}"
        )
        plain_cell = fmt(plain) if plain is not None else "not run (quadratic)"
        lines.append(
            f"| {row['model_type']} | {row['size']} | {row['length']} | {fmt(ours)} | {plain_cell} | "
            f"{fmt(row.get('speedup_forward_backward'))} | {fmt(row.get('speedup_forward'))} | {peak} |"
        )
    return lines


def trainer_step():
    path = RESULTS / "trainer_step_cpu.json"
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    lines = [f"`{data['command']}`", "", "| method | median step (s) | ratio to plain Trainer |", "|---|---|---|"]
    for kind, median in data["median_step_s"].items():
        ratio = data["ratio_to_plain"].get(kind)
        lines.append(f"| {kind} | {fmt(median)} | {fmt(ratio) if ratio else '1'} |")
    return "\n".join(lines)


def position_perplexity():
    path = RESULTS / "position_perplexity_cpu.json"
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    lines = [
        f"`{data['command']}`",
        "",
        "| L | tokens/s ours | tokens/s one plain forward | throughput ratio | peak MiB ours | peak MiB plain |",
        "|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        ours, plain = row["hf_longssm"], row["transformers"]
        lines.append(
            f"| {row['length']} | {fmt(ours.get('tokens_per_s'), 4)} | {fmt(plain.get('tokens_per_s'), 4)} | "
            f"{fmt(row.get('throughput_ratio'))} | {fmt(ours.get('peak_rss_mib'), 4)} | "
            f"{fmt(plain.get('peak_rss_mib'), 4)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    for title, table in (
        ("forward / backward", forward_backward()),
        ("trainer step", trainer_step()),
        ("position_perplexity", position_perplexity()),
    ):
        print(f"## {title}\n\n{table}\n")
