"""benchmarks/run_all.py and make_table.py on fake results: the summary rows, the targets' verdicts, the rendered
tables. The benchmarks themselves run in CI's smoke step (`.ci/run pinned`: `run_all.py --mode smoke`)."""

import importlib.util
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(ROOT / "benchmarks"))  # run_all imports make_table from its folder
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


run_all = load("run_all")
make_table = run_all.make_table


def timing(seconds: float) -> dict:
    return {"median_s": seconds, "runs": 3, "all_s": [seconds] * 3}


def fb_row(model_type: str, size: str, length: int, fwd: tuple, fb: tuple | None) -> dict:
    """A forward_backward.py row from (ours, transformers) seconds; fb None: not run (quadratic)."""
    row = {"model_type": model_type, "size": size, "length": length, "memory": {}}
    row["time"] = {"forward": {"hf_longssm": timing(fwd[0]), "transformers": timing(fwd[1])}}
    row["speedup_forward"] = fwd[1] / fwd[0]
    if fb is None:
        row["time"]["forward_backward"] = {p: {"skipped": "quadratic"} for p in ("hf_longssm", "transformers")}
    else:
        row["time"]["forward_backward"] = {"hf_longssm": timing(fb[0]), "transformers": timing(fb[1])}
        row["speedup_forward_backward"] = fb[1] / fb[0]
    return row


def scan_row(shape_name: str, fwd: tuple, fb: tuple, difference: float) -> dict:
    """A mamba1_scan.py row from (ours, mambapy) seconds per mode and the largest difference to mambapy."""
    times = {
        mode: {"hf_longssm": timing(ours), "mambapy": timing(theirs)}
        for mode, (ours, theirs) in (("forward", fwd), ("forward_backward", fb))
    }
    times["max_relative_difference_to_hf_longssm"] = {"mambapy": {"y": difference / 2, "grad_u": difference}}
    return {"shape_name": shape_name, "shape": [1, 1536, 16, 2048, "softplus"], "time": times, "memory": {}}


# distributed_step.py's JSON (no target: its rows only fill tables).
DISTRIBUTED_STEP = {
    "model_type": "mamba2",
    "processes": 2,
    "steps": 20,
    "rows": [
        {"mode": "ddp", "median_step_s": 0.0950181, "per_launch_s": [0.094, 0.096], "ratio_vs_ddp": 1.0},
        {"mode": "fsdp2", "median_step_s": 0.1741854, "per_launch_s": [0.179, 0.169], "ratio_vs_ddp": 1.8331803},
        {"mode": "zero3", "median_step_s": 0.2008924, "per_launch_s": [0.199, 0.201], "ratio_vs_ddp": 2.1142536},
    ],
}
# hybrid_attention_policy.py's JSON, which `make bench` does not rerun (rendered into docs/hybrids.md as committed).
HYBRID = {
    "command": "python benchmarks/hybrid_attention_policy.py --output_dir outputs/hybrid-x",
    "environment": {"cpu_count": 2, "versions": {"torch": "2.13.0+cpu", "transformers": "5.25.0"}},
    "rows": [
        {"model": model, "policy": policy, "near": near, "far": far, "far_near": far / near}
        for model, policy, near, far in (
            ("base", "window", 6.7396, 11.5199),
            ("base", "none", 7.1055, 12.1579),
            ("sp", "window", 6.8286, 5.6169),
            ("sp", "none", 6.9521, 5.6571),
            ("tbtt", "window", 7.4446, 5.8111),
            ("tbtt", "none", 7.6595, 5.7921),
        )
    ],
    "timings": {
        "pretrain_s": 246.9,
        "sp-window_s": 46.5,
        "sp-none_s": 38.0,
        "tbtt-window_s": 37.4,
        "tbtt-none_s": 73.8,
    },
}


def fake_summary(env: str, scale: float = 1.0) -> dict:
    """A summary as run_all writes it, from hand-made results; `scale` multiplies hf_longssm's forward times."""
    results = {
        "forward_backward": {
            "rows": [
                fb_row("mamba", "10m", 2048, (2.0 * scale, 2.4), None),  # 1.2 vs >= 1.0
                fb_row("mamba2", "10m", 2048, (2.5 * scale, 2.4), (3.8, 3.7)),  # 0.96 vs >= 0.97
                fb_row("mamba2", "tiny", 512, (0.02, 0.01), (0.03, 0.03)),  # tiny: no target
                fb_row("lfm2", "10m", 2048, (0.4, 0.44), (1.1, 1.1)),  # a headline row without a target
            ]
        },
        "trainer_step": {
            "model_type": "mamba2",
            "size": "tiny",
            "median_step_s": {"plain": 0.1, "zero": 0.102, "random_noise": 0.105},
            "ratio_to_plain": {"zero": 1.02, "random_noise": 1.05},
        },
        "position_perplexity": {
            "model_type": "mamba2",
            "size": "tiny",
            "rows": [
                {
                    "length": length,
                    "throughput_ratio": ratio,
                    "hf_longssm": {"time": timing(1.0)},
                    "transformers": {"time": timing(ratio)},
                }
                for length, ratio in ((8192, 0.96), (32768, 1.5))
            ],
        },
        "lm_eval_rolling": {
            "model_type": "mamba2",
            "size": "tiny",
            "length": 8192,
            "adapter": {"time": timing(1.0), "tokens_per_s": 8192.0},
            "plain": {"time": timing(0.94), "tokens_per_s": 8192 / 0.94},
            "ratio_adapter_over_plain": 0.94,
            "abs_loglikelihood_difference": 1e-3,
        },
        "mamba1_scan": {
            "extra_versions": {"mambapy": "1.2.0"},
            "rows": [
                scan_row("130m-b1", (0.7, 4.6), (3.3, 12.9), 8e-7),
                scan_row("small", (0.1, 0.3), (0.5, 1.2), 2e-6),
            ],
        },
        "distributed_step": DISTRIBUTED_STEP,
    }
    jobs = {
        name: {"benchmark": name, "command": f"python benchmarks/{name}.py", "result": result,
               "load_average_before": [0.5, 0.4, 0.3], "load_average_after": [0.9, 0.5, 0.3]}
        for name, result in results.items()
    }  # fmt: skip
    jobs["forward_backward_fla"] = {"benchmark": "forward_backward", "skipped": "no fla"}
    summary = {
        "env": env,
        "mode": "full",
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "versions": {"torch": "2.13.0", "transformers": "5.25.0" if env == "pinned" else "5.26.0"},
        "machine": {"device": "cpu", "cpu_count": 2, "cpu_model": "test CPU"},
        "load_average_before": [0.5, 0.4, 0.3],
        "load_average_after": [0.9, 0.5, 0.3],
        "duration_s": 600.0,
        "jobs": jobs,
    }
    return run_all.summarize(summary)


def by_name(summary: dict, benchmark: str | None = None) -> dict:
    return {row["name"]: row for row in summary["rows"] if benchmark in (None, row["benchmark"])}


def test_targets_and_their_verdicts():
    summary = fake_summary("pinned")
    expected = {
        ("forward_backward", "mamba 10m L=2048 fwd, no grad"): (1.2, ">=", 1.0, True),
        ("forward_backward", "mamba2 10m L=2048 fwd, no grad"): (0.96, ">=", 0.97, False),
        ("trainer_step", "mamba2 tiny state_init=zero step"): (1.02, "<=", 1.03, True),
        ("trainer_step", "mamba2 tiny state_init=random_noise step"): (1.05, "<=", 1.03, False),
        ("position_perplexity", "mamba2 tiny L=8192"): (0.96, ">=", 0.95, True),
        ("lm_eval_rolling", "mamba2 tiny L=8192"): (0.94, ">=", 0.95, False),
        ("mamba1_scan", "130m-b1 fwd, mambapy / ours"): (4.6 / 0.7, ">=", 5.0, True),
        ("mamba1_scan", "130m-b1 fwd+bwd, mambapy / ours"): (12.9 / 3.3, ">=", 5.0, False),
        ("mamba1_scan", "130m-b1 largest difference to mambapy"): (8e-7, "<=", 1e-6, True),
        ("mamba1_scan", "small largest difference to mambapy"): (2e-6, "<=", 1e-6, False),
    }
    for (benchmark, name), (ratio, op, value, verdict) in expected.items():
        row = by_name(summary, benchmark)[name]
        assert row["ratio"] == pytest.approx(ratio), name
        assert row["target"] == {"op": op, "value": value}, name
        assert row["holds"] is verdict, name
    untargeted = {
        "forward_backward": ["mamba2 tiny L=512 fwd, no grad", "lfm2 10m L=2048 fwd, no grad"],
        "position_perplexity": ["mamba2 tiny L=32768"],
        "mamba1_scan": ["small fwd, mambapy / ours"],
    }
    for benchmark, names in untargeted.items():
        for name in names:
            row = by_name(summary, benchmark)[name]
            assert row["target"] is None and row["holds"] is None, name
    skipped = by_name(summary, "forward_backward")["mamba 10m L=2048 fwd+bwd"]
    assert skipped["ratio"] is None and skipped["note"] == "not run: quadratic"
    assert summary["targets"] == {"holding": 5, "failing": 5, "unmeasured": 0}


def test_rows_carry_their_context():
    summary = fake_summary("pinned")
    row = by_name(summary, "forward_backward")["mamba2 10m L=2048 fwd, no grad"]
    assert row["medians"] == {"hf_longssm": 2.5, "transformers": 2.4}
    assert row["command"] == "python benchmarks/forward_backward.py"
    assert row["git_commit"] == "0123456789abcdef" and row["versions"]["transformers"] == "5.25.0"
    assert row["machine"]["cpu_model"] == "test CPU" and row["device"] == "cpu"
    assert row["load_average_before"] == [0.5, 0.4, 0.3] and row["load_average_after"] == [0.9, 0.5, 0.3]


def table_cells(markdown: str, first_column: str) -> dict[str, list[str]]:
    """The rows of a markdown table as {measurement: cells}, for rows whose first cell is `first_column`."""
    out = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first_column:
            out[cells[1]] = cells
    return out


def test_rendered_targets_equal_the_summary_side_by_side():
    pinned, newest = fake_summary("pinned"), fake_summary("newest", scale=0.5)
    text = "before\n<!-- bench:targets -->\nold\n<!-- /bench:targets -->\nafter\n"
    rendered = make_table.render_text(text, make_table.blocks([pinned, newest]))
    assert rendered.startswith("before\n<!-- bench:targets -->\n| benchmark |") and rendered.endswith("after\n")
    assert "old" not in rendered
    header = next(line for line in rendered.splitlines() if line.startswith("| benchmark |"))
    assert "pinned (torch 2.13.0, transformers 5.25.0)" in header
    assert "newest (torch 2.13.0, transformers 5.26.0)" in header
    cells = table_cells(rendered, "forward_backward")
    for summary, column in ((pinned, 4), (newest, 5)):
        for name, row in by_name(summary, "forward_backward").items():
            if row["target"] or row["headline"]:
                mark = {True: " ✓", False: " ✗", None: ""}[row["holds"]]
                assert cells[name][column] == make_table.fmt_ratio(row["ratio"]) + mark, name
    assert cells["mamba2 10m L=2048 fwd, no grad"][3:] == [">= 0.970", "0.960 ✗", "1.920 ✓"]
    assert cells["lfm2 10m L=2048 fwd, no grad"][3:] == ["none", "1.100", "1.100"]
    assert "mamba2 tiny L=512 fwd, no grad" not in cells  # no target, not a headline row
    scan = table_cells(rendered, "mamba1_scan")
    assert scan["130m-b1 largest difference to mambapy"][3:] == ["<= 1.0e-06", "8.0e-07 ✓", "8.0e-07 ✓"]


def test_detail_tables_and_skips():
    blocks = make_table.blocks([fake_summary("pinned"), fake_summary("newest")])
    fb = blocks["forward_backward"]
    assert fb.startswith("pinned (torch 2.13.0, transformers 5.25.0):")
    assert "<details><summary>newest (torch 2.13.0, transformers 5.26.0)</summary>" in fb
    row = table_cells(fb, "mamba")["10m"]
    assert row[2:] == ["2048", "2", "2.4", "1.200", "not run (quadratic)", "not run (quadratic)", "—", "— / —"]
    assert "`forward_backward_fla`: not run (no fla)." in fb
    assert "- pinned: `forward_backward_fla` not run: no fla" in blocks["skipped"]
    assert "Largest difference to mambapy over y, the final state and all gradients: 2.0e-06." in blocks["mamba1_scan"]
    assert blocks["gpu_throughput"].startswith("No GPU run yet")


def test_markers():
    blocks = {"targets": "new"}
    with pytest.raises(ValueError, match="unknown benchmark blocks \\['tragets'\\]"):
        make_table.render_text("<!-- bench:tragets -->\nx\n<!-- /bench:tragets -->\n", blocks)
    all_blocks = make_table.blocks([fake_summary("pinned")], {"hybrid_attention_policy": HYBRID})
    with pytest.raises(ValueError, match="unknown benchmark blocks \\['hybrid_attention'\\]"):
        make_table.render_text("<!-- bench:hybrid_attention -->\nx\n<!-- /bench:hybrid_attention -->\n", all_blocks)
    text = "a\n<!-- bench:targets -->\nx\n<!-- /bench:targets -->\nb\n"
    assert make_table.render_text(text, {}) == text  # no summary yet: left as it is
    assert make_table.render_text(text, blocks) == "a\n<!-- bench:targets -->\nnew\n<!-- /bench:targets -->\nb\n"
    # Every block of the published files has a renderer, and rendering touches nothing outside the blocks.
    rendered = make_table.blocks([fake_summary("pinned")])
    assert {path.relative_to(ROOT).as_posix() for path in run_all.RENDERED} == {
        "README.md",
        "benchmarks/README.md",
        "docs/scale_out.md",
        "docs/hybrids.md",
    }
    for path in run_all.RENDERED:
        text = path.read_text()
        names = {m["name"] for m in make_table.MARKER.finditer(text)}
        assert names and names <= set(rendered), path
        out = make_table.render_text(text, rendered)
        assert make_table.MARKER.sub("", out) == make_table.MARKER.sub("", text)
    docs = {path.name: path.read_text() for path in run_all.RENDERED if path.parent.name == "docs"}
    assert "<!-- bench:scale_out_distributed_step -->" in docs["scale_out.md"]
    assert "<!-- bench:hybrid_attention_policy -->" in docs["hybrids.md"]


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every markdown table row in `markdown`, headers and separators left out."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in markdown.splitlines()]
    rows = [r for r, line in zip(rows, markdown.splitlines()) if line.startswith("|") and set(r[0]) != {"-"}]
    return [r for r in rows if r[0] not in ("mode", "model")]


def distributed_step_cells(result: dict) -> list[list[str]]:
    labels = {"ddp": "DDP", "fsdp2": "FSDP2", "zero3": "ZeRO-3"}
    return [
        [labels[row["mode"]], f"{row['median_step_s'] * 1e3:.1f}", make_table.fmt_ratio(row["ratio_vs_ddp"])]
        for row in result["rows"]
    ]


def hybrid_cells(result: dict) -> list[list[str]]:
    lowest = min(row["far"] for row in result["rows"])
    names = {"base": "base", "sp": "state passing", "tbtt": "TBTT"}
    cells = []
    for row in result["rows"]:
        far = f"{row['far']:.2f}"
        cells.append(
            [names[row["model"]], row["policy"], f"{row['near']:.2f}", f"**{far}**" if row["far"] == lowest else far,
             f"{row['far_near']:.3f}"]
        )  # fmt: skip
    cells[0][0] = "base (zero state, T = 32)"
    return cells


def test_scale_out_and_hybrid_blocks_render_the_json():
    blocks = make_table.blocks([fake_summary("pinned")], {"hybrid_attention_policy": HYBRID})
    # docs/scale_out.md: the distributed_step JSON of the summary, the table of benchmarks/README.md's block.
    scale_out = blocks["scale_out_distributed_step"]
    assert table_rows(scale_out) == distributed_step_cells(DISTRIBUTED_STEP) == table_rows(blocks["distributed_step"])
    assert table_rows(scale_out)[1:] == [["FSDP2", "174.2", "1.833"], ["ZeRO-3", "200.9", "2.11"]]
    assert "`python benchmarks/distributed_step.py`" in scale_out
    assert "median over 2 alternating launches of 20 steps" in scale_out
    # docs/hybrids.md: every perplexity of the JSON, the command that regenerates it, make bench not rerunning it.
    hybrid = blocks["hybrid_attention_policy"]
    assert table_rows(hybrid) == hybrid_cells(HYBRID)
    assert table_rows(hybrid)[2] == ["state passing", "window", "6.83", "**5.62**", "0.823"]
    assert hybrid.startswith(
        "Regenerated by `python benchmarks/hybrid_attention_policy.py --output_dir outputs/hybrid-x` (`make bench` "
        "does not rerun it), its `outputs/hybrid-x/results.json` copied to "
        "`benchmarks/results/hybrid_attention_policy_cpu.json`"
    )
    assert "torch 2.13.0+cpu, transformers 5.25.0 on 2 CPU cores" in hybrid
    assert hybrid.endswith(
        "Training times: pretraining 247 s; post-training (window / none): state passing 46 / 38 s, TBTT 37 / 74 s; "
        "7.4 minutes of training in all."  # 442.6 s
    )
    missing = make_table.blocks([fake_summary("pinned")], {})["hybrid_attention_policy"]
    assert missing.startswith("Not measured yet: `python benchmarks/hybrid_attention_policy.py`")
    # Without a distributed_step job the block says so, as benchmarks/README.md's does.
    summary = fake_summary("pinned")
    del summary["jobs"]["distributed_step"]
    assert make_table.blocks([summary])["scale_out_distributed_step"] == "Not measured yet: run `make bench`."


def test_published_docs_render_the_committed_json():
    """docs/scale_out.md and docs/hybrids.md rendered from the committed summaries and JSONs show their values."""
    summaries = make_table.load_summaries(make_table.RESULTS)
    standalone = make_table.load_standalone(make_table.RESULTS)
    if not summaries or "hybrid_attention_policy" not in standalone:
        pytest.skip("no committed results")
    rendered = make_table.blocks(summaries, standalone)
    job = next(
        (
            job
            for job in summaries[0]["jobs"].values()
            if job.get("benchmark") == "distributed_step" and job.get("result")
        ),
        None,
    )
    for path in run_all.RENDERED:
        if path.parent.name != "docs":
            continue
        out = make_table.render_text(path.read_text(), rendered)
        body = {m["name"]: m["body"] for m in make_table.MARKER.finditer(out)}
        if "hybrid_attention_policy" in body:
            assert table_rows(body["hybrid_attention_policy"]) == hybrid_cells(standalone["hybrid_attention_policy"])
        if "scale_out_distributed_step" in body and job is not None:
            first = body["scale_out_distributed_step"].split("<details>")[0]  # the first environment's table
            assert table_rows(first) == distributed_step_cells(job["result"])


def test_holds():
    assert make_table.holds(1.0, {"op": ">=", "value": 1.0}) is True
    assert make_table.holds(1.031, {"op": "<=", "value": 1.03}) is False
    assert make_table.holds(None, {"op": "<=", "value": 1.03}) is None
    assert make_table.holds(1.0, None) is None
    with pytest.raises(ValueError, match="unknown target op"):
        make_table.holds(1.0, {"op": ">", "value": 1.0})


def test_gpu_json_becomes_summary_rows(tmp_path):
    step = {"median_step_s": 0.5, "tokens_per_s": 32768.0, "peak_cuda_gib": 10.0}
    gpu = {
        "command": "python benchmarks/gpu_throughput.py",
        "environment": {"python": "3.12", "versions": {"torch": "2.11.0"}, "cuda": "NVIDIA H100"},
        "device": "NVIDIA H100 80GB HBM3",
        "training": {
            "mamba2": {
                "plain_fused": step,
                "plain_fused_again": {**step, "median_step_s": 0.45},
                "hf_longssm_carried": {**step, "median_step_s": 0.5},
                "throughput_ratio": 0.9,
            },
        },
        "evaluation": [{"length": 32768, "tokens_per_s": 1e5, "median_s": 0.33, "peak_cuda_gib": 2.0}],
        "load_average_before": [0.1, 0.1, 0.1],
        "load_average_after": [0.2, 0.1, 0.1],
    }
    path = tmp_path / "gpu_throughput.json"
    path.write_text(run_all.json.dumps(gpu))
    summary = run_all.gpu_summary(path)
    rows = by_name(summary)
    training = rows["mamba2 130m training step, carried state"]
    assert training["device"] == "NVIDIA H100 80GB HBM3" and training["env"] == "gpu"
    assert training["target"] == {"op": ">=", "value": 0.9} and training["holds"] is True
    assert training["medians"] == {"hf_longssm_carried": 0.5, "plain_fused": 0.45}
    assert rows["mamba2 130m position_perplexity L=32768"]["ratio"] is None
    assert "NVIDIA H100 80GB HBM3" in make_table.blocks([summary])["gpu_throughput"]


def test_smoke_runs_are_never_published_and_reruns_show_every_commit(tmp_path):
    smoke = {**fake_summary("pinned"), "mode": "smoke"}
    (tmp_path / "summary_pinned.json").write_text(run_all.json.dumps(smoke))
    assert make_table.load_summaries(tmp_path) == []
    assert [s["mode"] for s in make_table.load_summaries(tmp_path, smoke=True)] == ["smoke"]
    summary = fake_summary("pinned")
    for name, commit, seconds in (("forward_backward", "aaaaaaaaaaaa", 100.0), ("trainer_step", "bbbbbbbbbbbb", 20.5)):
        summary["jobs"][name].update(git={"commit": commit, "dirty": False}, duration_s=seconds)
    summary = run_all.summarize(summary)
    assert summary["commits"] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"] and summary["duration_s"] == 120.5
    assert by_name(summary, "trainer_step")["mamba2 tiny state_init=zero step"]["git_commit"] == "bbbbbbbbbbbb"
    runs = table_cells(make_table.runs_table([summary]), "pinned (full)")
    assert runs["`aaaaaaaaaa`, `bbbbbbbbbb`"][4:] == ["0.50 → 0.90", "2.0 min"]
    # The README's "measured at" line names every commit too, and a modified tree.
    summary["git"]["dirty"] = True
    assert "`aaaaaaaaaa`, `bbbbbbbbbb` (modified) (pinned)" in make_table.blocks([summary])["readme_targets"]


def test_malformed_summaries_and_gpu_jsons_are_refused(tmp_path):
    (tmp_path / "summary_pinned.json").write_text('{"env": "pinned"}')
    with pytest.raises(SystemExit, match="lacks .*not a summary run_all.py wrote"):
        make_table.load_summaries(tmp_path)
    (tmp_path / "summary_pinned.json").write_text("{")
    with pytest.raises(SystemExit, match="is not JSON"):
        make_table.load_summaries(tmp_path)
    cpu_json = tmp_path / "trainer_step_cpu.json"
    cpu_json.write_text('{"command": "python benchmarks/trainer_step.py", "environment": {"cuda": null}}')
    with pytest.raises(SystemExit, match="names no GPU"):
        run_all.gpu_summary(cpu_json)
