"""The tables of benchmarks/README.md, rendered from the measurements in ``benchmarks/measured/``.

The benchmark scripts write JSON to ``benchmarks/results/`` (ignored by git). The files
``benchmarks/README.md`` quotes are copied to ``benchmarks/measured/`` and committed
(``pipeline_time_<n>.json``, one per fresh-clone run shown, each a row); this script renders them as
Markdown. ``python benchmarks/summarise.py`` prints the tables; ``--update-readme`` rewrites the block
between ``benchmarks/README.md``'s ``<!-- benchmarks:begin -->`` and ``<!-- benchmarks:end -->``
markers, and a test checks that the block is what this script renders, so no number there is typed
by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "benchmarks" / "measured"
README = ROOT / "benchmarks" / "README.md"
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1f}%"


def _ci(row: dict[str, Any], key: str) -> str:
    lo, hi = row[f"{key}_ci95"]
    return f"{_pct(row[key])} ({lo:+.1f} to {hi:+.1f})"


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _mmss(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s"


def pipeline_section(runs: list[dict[str, Any]]) -> list[str]:
    """One row per fresh-clone run, oldest first."""
    same = {True: "yes", False: "no", None: "not compared"}
    out = [
        "**The default pipeline from a fresh clone** (`python benchmarks/pipeline_time.py`; the "
        "matmul is one thread's GFLOP/s before and after the run, the machine's speed of the moment; "
        "*identical*: the tables and metrics are byte-identical to the working tree's, which holds only "
        "on the CPU type that made them):",
        "",
        _row(
            "date", "commit", "cores", "setup (`make setup`)", "pipeline (`make run`)", "both",
            "jobs", "job-seconds", "where they go", "matmul", "identical", "CPU",
        ),
        "|---|---|--:|--:|--:|--:|--:|--:|---|--:|---|---|",
    ]  # fmt: skip
    for d in runs:
        rules = sorted(d["rules"].items(), key=lambda kv: -kv[1]["job_s"])  # JSON keys come sorted by name
        top = ", ".join(f"`{r}` {100 * v['share']:.0f}%" for r, v in rules[:3])
        out.append(
            _row(
                d["date"],
                f"`{d['commit'][:7]}`",
                d["cores"],
                _mmss(d["setup_s"]),
                f"**{_mmss(d['run_s'])}**",
                _mmss(d["total_s"]),
                d["jobs"],
                f"{d['job_seconds']:,.0f}",
                top,
                f"{d['matmul_gflops_before']:.0f} / {d['matmul_gflops_after']:.0f}",
                same[d["outputs_identical_to_working_tree"]],
                d.get("cpu", "not recorded"),
            )
        )
    return out


def steps_section(d: dict[str, Any]) -> list[str]:
    out = [
        f"**One fine-tuning step with the shared gradient against a plain step** "
        f"(`python benchmarks/bench_grouping.py`, {d['date']}; LeNet, 5-way; the overhead is the median "
        "over rounds of the ratio of blocks run side by side, with its 95% interval; *noise* is a "
        "plain-vs-plain control measured the same way; *averaged* is the path taken with weight "
        "decay, every layer's gradient averaged after `backward()`):",
        "",
        _row(
            "groups",
            "k",
            "threads",
            "plain step",
            "grouped: overhead",
            "noise",
            "PyTorch ops instead of the C kernel (removed since)",
            "averaged",
            "GFLOP/s (of the matmul's at those threads)",
        ),
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    rows = [(row, s["threads"], s["matmul"]["gflops"]) for s in d["settings"] for row in s["step_time"]]
    rows.sort(key=lambda r: (r[0]["group_fraction"] != 0.25, r[0]["group_fraction"], r[0]["k"], r[1]))
    for row, threads, matmul in rows:
        out.append(
            f"| {row['group_fraction']:g} | {row['k']} | {threads} | {row['plain_step_ms']:.2f} ms | "
            f"{_ci(row, 'overhead_pct')} | {_ci(row, 'control_pct')} | "
            f"{_pct(row.get('pytorch_overhead_pct'))} | {_pct(row['averaged_overhead_pct'])} | "
            f"{row['finetune_gflops']:.1f} ({100 * row['finetune_gflops'] / matmul:.0f}% of {matmul:.0f}) |"
        )
    return out


def search_section(d: dict[str, Any]) -> list[str]:
    # the faster of the full-fidelity loops one after another, whichever the thread count: with 2
    # threads the loop can be slower than with 1 (tiny ops), which would flatter a ratio against it
    best_loop: dict[tuple[int, int], float] = {}
    for s in d["settings"]:
        for r in s["search_throughput"]:
            key = (r["k"], r["members"])
            best_loop[key] = max(best_loop.get(key, 0.0), r["sequential_evals_per_min"])
    out = [
        "**Search evaluations per minute**, as a ratio to the same evaluations at full fidelity (100 "
        "steps) one after another in one process with the same threads; *low fidelity* is the "
        "pipeline's 50-step reward, *side by side* the search's members (its episodes) in threads "
        "of one torch thread each (measured before `search.workers`, which ran them so, was removed), "
        "*population* one `vmap` batch. The last column compares the fastest variant with the faster "
        "of the 1- and 2-thread loops:",
        "",
        _row(
            "k",
            "members",
            "threads",
            "low fidelity, one after another",
            "side by side (full fidelity)",
            "low fidelity, side by side",
            "population (full fidelity)",
            "fastest vs the faster loop",
        ),
        "|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in d["settings"]:
        for r in s["search_throughput"]:
            side = "workers" in r
            fastest = max(
                r["low_fidelity_sequential_evals_per_min"],
                r["low_fidelity_side_by_side_evals_per_min"] if side else 0.0,
            )
            out.append(
                _row(
                    r["k"],
                    r["members"],
                    s["threads"],
                    f"x{r['low_fidelity_sequential_speedup']:.2f}",
                    f"x{r['side_by_side_speedup']:.2f}" if side else "(one thread)",
                    f"x{r['low_fidelity_side_by_side_speedup']:.2f}" if side else "(one thread)",
                    f"x{r['speedup']:.2f}",
                    f"x{fastest / best_loop[(r['k'], r['members'])]:.2f}",
                )
            )
    searches = [
        f"{f['wall_s']:.1f} s at k = {f['k']} with {s['threads']} thread{'s' if s['threads'] > 1 else ''}"
        for s in d["settings"]
        for f in s["full_search"]
    ]
    if searches:
        out += ["", f"One whole search with `params.yaml`'s settings: {'; '.join(searches)}."]
    return out


def memory_section(malloc: dict[str, Any] | None, peak: dict[str, Any] | None) -> list[str]:
    out = []
    if malloc:
        base, ours = malloc["glibc_default"], malloc["kshot"]
        out.append(
            f"**Freed memory kept in the process** (`python benchmarks/bench_malloc.py`, "
            f"{malloc.get('date', 'undated')}, the k = 10 RL search of `fashion`): "
            f"{base['wall_s']:.1f} s wall ({base['sys_s']:.1f} s system) with glibc's defaults, "
            f"{ours['wall_s']:.1f} s ({ours['sys_s']:.1f} s) with kshot's setting, "
            f"x{malloc['wall_ratio']:.2f}; outputs identical: "
            f"{'yes' if malloc['identical_outputs'] else 'no'}."
        )
    if peak:
        jobs = sorted(peak["jobs"].items(), key=lambda kv: (kv[0] != "import_only", kv[0]))
        listed = ", ".join(f"`{name}` {j['peak_rss_mib']:.0f} MiB" for name, j in jobs)
        out += [
            "",
            f"**Peak resident memory** (`python benchmarks/peak_memory.py`, {peak.get('date', 'undated')}; "
            f"`import_only` is importing kshot and torch alone; the other jobs measured): {listed}.",
        ]
    return out


def render(folder: Path = MEASURED) -> str:
    """The Markdown of every measurement present in ``folder``."""
    parts = []
    # one row per fresh-clone run, in the files' order (pipeline_time_1.json, _2, ...); a file
    # written with --log (a log read, no run) has no setup or commit to show
    files = sorted(folder.glob("pipeline_time*.json"), key=lambda f: (len(f.name), f.name))
    runs = [d for d in (json.loads(f.read_text()) for f in files) if "run_s" in d]
    if runs:
        parts.append(pipeline_section(runs))
    if bench := _load(folder, "bench_grouping.json"):
        if any(s["step_time"] for s in bench["settings"]):
            parts.append(steps_section(bench))
        if any(s["search_throughput"] or s["full_search"] for s in bench["settings"]):
            parts.append(search_section(bench))
    mem = memory_section(_load(folder, "bench_malloc.json"), _load(folder, "peak_memory.json"))
    if mem:
        parts.append(mem)
    return "\n\n".join("\n".join(p) for p in parts) + "\n"


def readme_block(text: str) -> str:
    """What lies between the markers of ``text`` (benchmarks/README.md)."""
    # once each, in order: prose that quotes a marker would otherwise move the block into itself
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{README}: expected the markers {BEGIN} and then {END}, once each")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured", default=str(MEASURED))
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    md = render(Path(args.measured))
    if not args.update_readme:
        print(md, end="")
        return
    text = README.read_text()
    old = readme_block(text)
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(f"{head}{BEGIN}\n{md}{END}{tail}")
    print(f"{README}: benchmark block {'unchanged' if old == md else 'updated'}")


if __name__ == "__main__":
    main()
