"""The published benchmark figures, rendered from the summary JSONs that `run_all.py` writes.

    python benchmarks/make_table.py [--results_dir benchmarks/results]   # print every table
    python benchmarks/run_all.py --render-only                           # rewrite the marked blocks

A block between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in README.md, benchmarks/README.md, docs/scale_out.md
or docs/hybrids.md (`run_all.RENDERED`) is generated: `render_text` replaces what is between the two markers with
`blocks(summaries, standalone)[NAME]` and leaves the rest of the file alone, so no figure in those blocks is typed by
hand. Summaries of several environments (pinned, newest, a GPU run) are shown side by side in the targets table; the
detailed tables show the pinned run, the others folded below it. `standalone` holds the JSONs of the experiments
`make bench` does not run (`STANDALONE`), rendered as they were committed. Standard library only: the tests render a
fake summary without loading torch.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path


RESULTS = Path(__file__).resolve().parent / "results"
# Column order of the environments; any other (a custom `--env`) comes after these.
ENV_ORDER = ("pinned", "newest", "gpu")
MARKER = re.compile(r"(<!-- bench:(?P<name>[a-z0-9_]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


# ---------------------------------------------------------------------------------------------------------- numbers
def fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def fmt_ratio(x: float | None) -> str:
    """Three decimals near the targets (0.97, 1.03), three significant digits above 2 (62.9, 216); a relative
    difference (exactness) in scientific notation."""
    if x is None:
        return "—"
    if x < 1e-3:
        return f"{x:.1e}"
    return f"{x:.3f}" if x < 2 else f"{x:.3g}"


def fmt_target(target: dict | None) -> str:
    return "none" if not target else f"{target['op']} {fmt_ratio(target['value'])}"


def holds(ratio: float | None, target: dict | None) -> bool | None:
    """Whether `ratio` meets `target` ({"op": ">=" or "<=", "value": x}); None when either is missing."""
    if ratio is None or not target:
        return None
    if target["op"] == ">=":
        return ratio >= target["value"]
    if target["op"] == "<=":
        return ratio <= target["value"]
    raise ValueError(f"unknown target op {target['op']!r}: use '>=' or '<='")


def result_cell(row: dict | None) -> str:
    """A ratio with ✓ / ✗ against its target; why it is missing otherwise."""
    if row is None:
        return "not run"
    if row.get("ratio") is None:
        return row.get("note") or "—"
    mark = {True: " ✓", False: " ✗", None: ""}[row.get("holds")]
    return fmt_ratio(row["ratio"]) + mark


# ------------------------------------------------------------------------------------------------------- summaries
def env_key(summary: dict) -> tuple:
    env = summary.get("env", "")
    return (ENV_ORDER.index(env) if env in ENV_ORDER else len(ENV_ORDER), env)


def load_summaries(results_dir: str | Path = RESULTS, smoke: bool = False) -> list[dict]:
    """Every `summary_<env>.json` in `results_dir`, pinned first; a smoke run's only with `smoke` (its figures are
    never published)."""
    summaries = []
    for path in sorted(Path(results_dir).glob("summary_*.json")):
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise SystemExit(f"{path} is not JSON ({error}): rerun the benchmark that wrote it.") from None
        missing = [key for key in ("env", "rows", "git", "versions") if key not in summary]
        if missing:
            raise SystemExit(f"{path} lacks {missing}: not a summary run_all.py wrote; rerun it or remove the file.")
        summaries.append(summary)
    return sorted([s for s in summaries if smoke or s.get("mode") != "smoke"], key=env_key)


def measured_at(summary: dict) -> str:
    """The commit(s) a summary's rows were measured at (several after a partial rerun), marked when modified."""
    git = summary.get("git", {})
    commits = summary.get("commits") or [git.get("commit") or "unknown"]
    text = ", ".join(f"`{(c or 'unknown')[:10]}`" for c in commits)
    return text + (" (modified)" if git.get("dirty") else "")


def env_label(summary: dict) -> str:
    versions = summary.get("versions", {})
    device = summary.get("machine", {}).get("device", "cpu")
    parts = [f"{name} {versions[name]}" for name in ("torch", "transformers") if versions.get(name)]
    label = f"{summary['env']} ({', '.join(parts)}"
    return label + (f"; {device})" if device != "cpu" else ")")


def runs_table(summaries: list[dict]) -> str:
    """Which run each column comes from: commit, versions, machine, load, time."""
    lines = [
        "| run | commit | versions | machine | load average (1 min) before → after | duration |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        git = s.get("git", {})
        commits = s.get("commits") or [git.get("commit") or "unknown"]  # several after a partial rerun
        commit = ", ".join(f"`{c[:10]}`" for c in commits) + (" (modified)" if git.get("dirty") else "")
        versions = ", ".join(f"{k} {v}" for k, v in s.get("versions", {}).items() if v)
        machine = s.get("machine", {})
        where = f"{machine.get('device', 'cpu')}, {machine.get('cpu_count', '?')} × {machine.get('cpu_model', '?')}"
        before, after = s.get("load_average_before"), s.get("load_average_after")
        load = f"{before[0]:.2f} → {after[0]:.2f}" if before and after else "—"
        duration = f"{s['duration_s'] / 60:.1f} min" if s.get("duration_s") is not None else "—"
        run = f"{s['env']} ({s.get('mode', '?')})"
        lines.append(f"| {run} | {commit} | {versions} | {where} | {load} | {duration} |")
    return "\n".join(lines)


def targets_table(summaries: list[dict]) -> str:
    """Every row with a target (and the headline rows without one), one column per environment: the ratio and
    whether it holds."""
    keys: list[tuple[str, str]] = []
    found: dict[tuple[str, str, str], dict] = {}
    for s in summaries:
        for row in s.get("rows", []):
            key = (row["benchmark"], row["name"])
            if (row.get("target") or row.get("headline")) and key not in keys:
                keys.append(key)
            found[(s["env"], *key)] = row
    header = "| benchmark | measurement | ratio | target | " + " | ".join(env_label(s) for s in summaries) + " |"
    lines = [header, "|---|---|---|---|" + "---|" * len(summaries)]
    for benchmark, name in keys:
        first = next(found[(s["env"], benchmark, name)] for s in summaries if (s["env"], benchmark, name) in found)
        cells = [result_cell(found.get((s["env"], benchmark, name))) for s in summaries]
        lines.append(
            f"| {benchmark} | {name} | {first.get('metric', '')} | {fmt_target(first['target'])} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def skipped_lines(summaries: list[dict]) -> list[str]:
    lines = []
    for s in summaries:
        for name, job in s.get("jobs", {}).items():
            if job.get("skipped"):
                lines.append(f"- {s['env']}: `{name}` not run: {job['skipped']}")
            elif job.get("error"):
                lines.append(f"- {s['env']}: `{name}` failed: {job['error'].strip().splitlines()[-1][:200]}")
    return lines


# ---------------------------------------------------------------------------------------------- per-benchmark tables
def forward_backward_table(result: dict) -> list[str]:
    lines = [
        "| model | size | L | fwd ours (s) | fwd transformers (s) | speedup fwd | fwd+bwd ours (s) | "
        "fwd+bwd transformers (s) | speedup fwd+bwd | peak MiB fwd+bwd ours / transformers |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        cells = []
        for mode in ("forward", "forward_backward"):
            timing = row["time"].get(mode, {})
            medians = [timing.get(p, {}).get("median_s") for p in ("hf_longssm", "transformers")]
            skipped = "skipped" in timing.get("transformers", {})
            cells += [fmt(m) if not skipped else "not run (quadratic)" for m in medians]
            cells.append(fmt_ratio(row.get(f"speedup_{mode}")))
        memory = row.get("memory", {})
        peak = " / ".join(
            fmt(memory.get(p, {}).get("peak_rss_mib_forward_backward")) for p in ("hf_longssm", "transformers")
        )
        lines.append(f"| {row['model_type']} | {row['size']} | {row['length']} | {' | '.join(cells)} | {peak} |")
    return lines


def trainer_step_table(result: dict) -> list[str]:
    lines = ["| method | median step (s) | ratio to plain Trainer |", "|---|---|---|"]
    for kind, median in result["median_step_s"].items():
        ratio = result["ratio_to_plain"].get(kind)
        lines.append(f"| {kind} | {fmt(median)} | {fmt_ratio(ratio) if ratio is not None else '1 (reference)'} |")
    return lines


def position_perplexity_table(result: dict) -> list[str]:
    lines = [
        "| L | tokens/s ours | tokens/s one plain forward | throughput ratio | peak MiB ours | peak MiB plain |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        ours, plain = row["hf_longssm"], row["transformers"]
        lines.append(
            f"| {row['length']} | {fmt(ours.get('tokens_per_s'), 4)} | {fmt(plain.get('tokens_per_s'), 4)} | "
            f"{fmt_ratio(row.get('throughput_ratio'))} | {fmt(ours.get('peak_rss_mib'), 4)} | "
            f"{fmt(plain.get('peak_rss_mib'), 4)} |"
        )
    return lines


def lm_eval_rolling_table(result: dict) -> list[str]:
    model = f"{result['model_type']} {result['size']}"
    return [
        "| model | L | tokens/s adapter | tokens/s one plain forward | throughput ratio | abs. loglikelihood diff. |",
        "|---|---|---|---|---|---|",
        f"| {model} | {result['length']} | {fmt(result['adapter']['tokens_per_s'], 4)} | "
        f"{fmt(result['plain']['tokens_per_s'], 4)} | {fmt_ratio(result['ratio_adapter_over_plain'])} | "
        f"{result['abs_loglikelihood_difference']:.1e} |",
    ]


MAMBA1_SCAN_PATHS = ("hf_longssm", "mambapy", "transformers")


def mamba1_scan_table(result: dict) -> list[str]:
    """Times, ratios and peak memory per shape and mode; the largest difference to mambapy under the table."""
    lines = [
        "| shape (b, d, n, l), dt | mode | hf_longssm (s) | mambapy (s) | transformers (s) | mambapy / ours | "
        "transformers / ours | peak MiB ours / mambapy / transformers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        b, d, n, seq_len, regime = row["shape"]
        for mode, label in (("forward_backward", "fwd+bwd"), ("forward", "fwd")):
            timing = row["time"].get(mode, {})
            median = {p: timing.get(p, {}).get("median_s") for p in MAMBA1_SCAN_PATHS}
            ours = median["hf_longssm"]
            ratio = {p: (median[p] / ours if median[p] and ours else None) for p in ("mambapy", "transformers")}
            memory = row.get("memory", {}).get(mode, {})
            peak = " / ".join(fmt(memory.get(p, {}).get("peak_rss_mib"), 4) for p in MAMBA1_SCAN_PATHS)
            cells = [fmt(median[p]) if median[p] is not None else "not run" for p in MAMBA1_SCAN_PATHS]
            lines.append(
                f"| {b}, {d}, {n}, {seq_len}; {regime} | {label} | {' | '.join(cells)} | "
                f"{fmt(ratio['mambapy'], 2)} | {fmt(ratio['transformers'], 2)} | {peak} |"
            )
    diffs = [mamba1_scan_difference(row) for row in result["rows"]]
    diffs = [d for d in diffs if d is not None]
    if diffs:
        lines += ["", f"Largest difference to mambapy over y, the final state and all gradients: {max(diffs):.1e}."]
    return lines


def mamba1_scan_difference(row: dict) -> float | None:
    """The largest relative difference to mambapy of one shape (y, final state, every gradient); None without it."""
    diffs = row["time"].get("max_relative_difference_to_hf_longssm", {}).get("mambapy")
    return max(diffs.values()) if diffs else None


def distributed_step_table(result: dict) -> list[str]:
    labels = {"ddp": "DDP", "fsdp2": "FSDP2", "zero3": "ZeRO-3"}
    lines = ["| mode | median step (ms) | ratio to DDP |", "|---|---|---|"]
    for row in result["rows"]:
        lines.append(
            f"| {labels.get(row['mode'], row['mode'])} | {row['median_step_s'] * 1e3:.1f} | "
            f"{fmt_ratio(row['ratio_vs_ddp'])} |"
        )
    return lines


def eval_during_training_table(result: dict) -> list[str]:
    per_1k = result["seconds_per_1k_tokens"]
    return [
        "| path | seconds per 1k tokens | ratio to position_perplexity |",
        "|---|---|---|",
        f"| `trainer.evaluate()` | {fmt(per_1k['trainer_evaluate'])} | "
        f"{fmt_ratio(result['ratio_trainer_over_position_perplexity'])} |",
        f"| `evaluation.position_perplexity` | {fmt(per_1k['position_perplexity'])} | 1 (reference) |",
    ]


def gpu_throughput_table(result: dict) -> list[str]:
    lines = [
        f"Device: {result.get('device', '?')}.",
        "",
        "| model (130m shape) | tokens/s ours, carried state | tokens/s plain, fused | ratio | peak GiB ours / plain |"
        "",
        "|---|---|---|---|---|",
    ]
    for model_type, t in result.get("training", {}).items():
        plain = max((t["plain_fused"], t["plain_fused_again"]), key=lambda x: x["tokens_per_s"])
        ours = t["hf_longssm_carried"]
        lines.append(
            f"| {model_type} | {fmt(ours['tokens_per_s'], 4)} | {fmt(plain['tokens_per_s'], 4)} | "
            f"{fmt_ratio(t['throughput_ratio'])} | {fmt(ours['peak_cuda_gib'])} / {fmt(plain['peak_cuda_gib'])} |"
        )
    lines += ["", "| position_perplexity, mamba2 130m, L | tokens/s | peak GiB |", "|---|---|---|"]
    for row in result.get("evaluation", []):
        lines.append(f"| {row['length']} | {fmt(row['tokens_per_s'], 4)} | {fmt(row['peak_cuda_gib'])} |")
    return lines


# The detailed table of each benchmark, from the JSON its script wrote.
DETAIL_TABLES: dict[str, Callable[[dict], list[str]]] = {
    "forward_backward": forward_backward_table,
    "trainer_step": trainer_step_table,
    "position_perplexity": position_perplexity_table,
    "lm_eval_rolling": lm_eval_rolling_table,
    "mamba1_scan": mamba1_scan_table,
    "distributed_step": distributed_step_table,
    "eval_during_training": eval_during_training_table,
    "gpu_throughput": gpu_throughput_table,
}


def distributed_step_scale_out_table(result: dict) -> list[str]:
    """docs/scale_out.md's table: benchmarks/README.md's, and how many launches and steps each median is over."""
    launches = {len(row.get("per_launch_s", [])) for row in result["rows"]}
    count = launches.pop() if len(launches) == 1 else None
    over = "1 launch" if count == 1 else f"{count or 'the'} alternating launches"
    return distributed_step_table(result) + [
        "",
        f"{result.get('model_type', '?')}, {result.get('processes', '?')} processes; per mode the median over {over} "
        f"of {result.get('steps', '?')} steps (per launch: the median step of rank 0 after 3 warm-up steps).",
    ]


def detail_block(summaries: list[dict], benchmark: str, table: Callable[[dict], list[str]] | None = None) -> str:
    """Every job of `benchmark`: its command and table (`table`, by default `DETAIL_TABLES[benchmark]`); the first
    environment open, the others folded."""
    table = table or DETAIL_TABLES[benchmark]
    parts = []
    for i, s in enumerate(summaries):
        jobs = [(name, job) for name, job in s.get("jobs", {}).items() if job.get("benchmark") == benchmark]
        if not jobs:
            continue
        lines = []
        for name, job in jobs:
            if job.get("result") is None:
                why = job.get("skipped") or (job.get("error") or "no result").strip().splitlines()[-1][:200]
                lines += [f"`{name}`: not run ({why}).", ""]
                continue
            lines += [f"`{job['command']}`", "", *table(job["result"]), ""]
        if i == 0:
            parts.append(f"{env_label(s)}:\n\n" + "\n".join(lines).rstrip())
        else:
            parts.append(
                f"<details><summary>{env_label(s)}</summary>\n\n" + "\n".join(lines).rstrip() + "\n\n</details>"
            )
    if parts:
        return "\n\n".join(parts)
    if benchmark == "gpu_throughput":
        return "No GPU run yet: `benchmarks/gpu_run.sh` on a GPU machine, then `run_all.py --gpu_json` (above)."
    return "Not measured yet: run `make bench`."


# ------------------------------------------------------------------------------- experiments make bench does not run
# Their JSONs, in results/ as committed (block name: file). Rendered as they are, never rerun by `make bench`.
STANDALONE = {"hybrid_attention_policy": "hybrid_attention_policy_cpu.json"}
HYBRID_MODELS = {"base": ("base (zero state, T = 32)", "base"), "sp": ("state passing",) * 2, "tbtt": ("TBTT",) * 2}


def load_standalone(results_dir: str | Path = RESULTS) -> dict[str, dict]:
    """The JSON of every `STANDALONE` experiment found in `results_dir`, by block name."""
    paths = {name: Path(results_dir) / file for name, file in STANDALONE.items()}
    return {name: json.loads(path.read_text()) for name, path in paths.items() if path.is_file()}


def hybrid_attention_policy_block(result: dict | None) -> str:
    """docs/hybrids.md's table: perplexities by model and attention policy (the lowest far perplexity in bold), how
    to regenerate it, the versions and the training times."""
    json_path = f"benchmarks/results/{STANDALONE['hybrid_attention_policy']}"
    if result is None:
        return (
            "Not measured yet: `python benchmarks/hybrid_attention_policy.py` (`make bench` does not run it), then"
            f" copy its `results.json` to `{json_path}` and `python benchmarks/run_all.py --render-only`."
        )
    command = result.get("command", "python benchmarks/hybrid_attention_policy.py")
    arguments = shlex.split(command)
    output_dir = arguments[arguments.index("--output_dir") + 1] if "--output_dir" in arguments[:-1] else None
    environment = result.get("environment", {})
    versions = environment.get("versions", {})
    label = ", ".join(f"{name} {versions[name]}" for name in ("torch", "transformers") if versions.get(name))
    lines = [
        f"Regenerated by `{command}` (`make bench` does not rerun it), its "
        f"`{output_dir or '<output_dir>'}/results.json` copied to `{json_path}`, then `python benchmarks/run_all.py "
        f"--render-only`; measured with {label or 'versions not recorded'} on {environment.get('cpu_count', '?')} "
        "CPU cores:",
        "",
        "| model | attention_state | ppl [32, 64) | ppl [2048, 4095) | far / near |",
        "|---|---|---|---|---|",
    ]
    lowest = min(row["far"] for row in result["rows"])
    seen = set()
    for row in result["rows"]:
        first, again = HYBRID_MODELS.get(row["model"], (row["model"],) * 2)
        far = f"{row['far']:.2f}" if row["far"] != lowest else f"**{row['far']:.2f}**"
        lines.append(
            f"| {again if row['model'] in seen else first} | {row['policy']} | {row['near']:.2f} | {far} | "
            f"{row['far_near']:.3f} |"
        )
        seen.add(row["model"])
    timings = result.get("timings", {})
    if timings:
        policies = list(dict.fromkeys(row["policy"] for row in result["rows"] if row["model"] != "base"))
        methods = [m for m in HYBRID_MODELS if any(f"{m}-{p}_s" in timings for p in policies)]
        post = ", ".join(
            f"{HYBRID_MODELS[m][0]} " + " / ".join(seconds(timings.get(f"{m}-{p}_s")) for p in policies) + " s"
            for m in methods
        )
        lines += [
            "",
            f"Training times: pretraining {seconds(timings.get('pretrain_s'))} s; post-training "
            f"({' / '.join(policies)}): {post}; {sum(timings.values()) / 60:.1f} minutes of training in all.",
        ]
    return "\n".join(lines)


def seconds(x: float | None) -> str:
    return "—" if x is None else f"{x:.0f}"


# ------------------------------------------------------------------------------------------------------- rendering
def blocks(summaries: list[dict], standalone: dict[str, dict] | None = None) -> dict[str, str]:
    """The text of every marked block, by marker name; `standalone`: the JSONs of `STANDALONE` (by default
    `load_standalone()`'s, the committed ones; a missing one's block says how to make it)."""
    if not summaries:
        return {}
    standalone = load_standalone() if standalone is None else standalone
    out = {
        "runs": runs_table(summaries),
        "targets": targets_table(summaries),
        # README.md: the targets alone, with where they come from.
        "readme_targets": targets_table(summaries)
        + "\n\nMeasured at commit "
        + "; ".join(f"{measured_at(s)} ({s['env']})" for s in summaries)
        + "; the medians, the commands and the machine: benchmarks/README.md.",
        "skipped": "\n".join(skipped_lines(summaries)) or "Nothing was skipped.",
    }
    for benchmark in DETAIL_TABLES:
        out[benchmark] = detail_block(summaries, benchmark)
    # docs/scale_out.md: the same summary's distributed_step jobs as benchmarks/README.md's block.
    out["scale_out_distributed_step"] = detail_block(summaries, "distributed_step", distributed_step_scale_out_table)
    out["hybrid_attention_policy"] = hybrid_attention_policy_block(standalone.get("hybrid_attention_policy"))
    return out


def render_text(text: str, rendered: dict[str, str]) -> str:
    """`text` with the body of every `<!-- bench:NAME -->` block replaced by `rendered[NAME]`.

    A block whose name is not in `rendered` raises (a typo in a marker would otherwise go stale silently), unless
    `rendered` is empty (no summary yet: the file is left as it is).
    """
    if not rendered:
        return text
    unknown = sorted({m["name"] for m in MARKER.finditer(text)} - set(rendered))
    if unknown:
        raise ValueError(f"unknown benchmark blocks {unknown}; known: {sorted(rendered)}")
    return MARKER.sub(lambda m: f"{m.group(1)}{rendered[m['name']].rstrip()}\n{m.group(4)}", text)


def render_file(
    path: str | Path,
    summaries: list[dict],
    output: str | Path | None = None,
    standalone: dict[str, dict] | None = None,
) -> Path:
    """Rewrite the marked blocks of `path` (into `output` when given, e.g. a copy in smoke mode)."""
    path = Path(path)
    output = Path(output) if output else path
    text = path.read_text()
    output.write_text(render_text(text, blocks(summaries, standalone)))
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results_dir", default=str(RESULTS))
    args = parser.parse_args()
    summaries = load_summaries(args.results_dir, smoke=True)
    if not summaries:
        raise SystemExit(f"no summary_*.json in {args.results_dir}: run `python benchmarks/run_all.py` first")
    for name, text in blocks(summaries, load_standalone(args.results_dir)).items():
        print(f"## {name}\n\n{text}\n")


if __name__ == "__main__":
    main()
