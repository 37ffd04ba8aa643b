"""`python -m benchmarks.run [--quick] [--json PATH] [--only GROUP ...]`

Measures training and inference images/s of both models, the CNN epoch's compile time, the scan
epoch vs a Python loop of jitted steps, N seeds vmapped vs N sequential runs, and scaling over
devices; writes JSON ({"env", "quick", "rows", "ratios", "skipped"}: every row has a `name` and
a positive `images_per_s`, see benchmarks/cases.py) and a Markdown table of ratios against
baselines measured in the same run. Runs unchanged on CPU, GPU or TPU.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

# On an accelerator the device-scaling workers need memory while this process is alive.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
if __name__ == "__main__":  # before JAX is imported: see fmnist_jax.entry
    from fmnist_jax import entry

    entry.start()


import jax  # noqa: E402

from benchmarks import cases, one_thread, scaling  # noqa: E402
from benchmarks.timing import environment, host_cpu_count  # noqa: E402
from benchmarks.workload import load_workload  # noqa: E402
from fmnist_jax.io import tolerant_output, write_json, write_text  # noqa: E402
from fmnist_jax.placement import backend_problem  # noqa: E402

DEFAULT_JSON = Path(__file__).parent / "out" / "results.json"
GROUPS = {  # run in this order
    "cnn_train": cases.cnn_train,
    "cnn_train_1thread": None,  # a subprocess pinned to one CPU, see one_thread.py
    "scan_vs_loop": cases.scan_vs_loop,
    "seeds": cases.seeds,
    "cnn_infer": cases.cnn_infer,
    "ae_train": cases.ae_train,
    "ae_infer": cases.ae_infer,
    "devices": None,  # subprocesses, see scaling.py
}


def _ratio(row: dict, base: dict) -> float:
    """row / base throughput: the median of per-round ratios where both were timed in the same
    rounds (robust to the machine's drift between rounds), else the ratio of medians."""
    a, b = row["images_per_s_reps"], base["images_per_s_reps"]
    if row.get("rounds") is not None and row.get("rounds") == base.get("rounds"):
        return statistics.median(x / y for x, y in zip(a, b, strict=True))
    return row["images_per_s"] / base["images_per_s"]


def ratios(rows: list[dict]) -> dict[str, float]:
    """Every row against its baseline, plus the named ratios the study asks about."""
    by_name = {r["name"]: r for r in rows}
    out = {}
    for r in rows:
        base = by_name.get(r.get("baseline"))
        if base is None:
            r.pop("baseline", None)  # not measured in this run (--only, --quick)
        else:
            r["ratio"] = _ratio(r, base)
            if base is not r:
                out[f"{r['name']}_over_{base['name']}"] = r["ratio"]
    if {"cnn_train_scan", "cnn_train_loop"} <= by_name.keys():
        out["scan_over_loop"] = _ratio(by_name["cnn_train_scan"], by_name["cnn_train_loop"])
    return out


def bound_fractions(rows: list[dict], peaks: dict) -> None:
    """Each row with `flops_per_image` gets `flop_bound_fraction`: its images/s over what the
    matmul peak at its thread count (`peaks`, GFLOP/s by thread count) would allow."""
    for r in rows:
        peak = peaks.get(str(r.get("threads")))
        if "flops_per_image" in r and peak:
            r["flop_bound_fraction"] = (
                r["images_per_s"] * r["flops_per_image"] / (peak["best"] * 1e9)
            )


def _fmt(x, spec: str) -> str:
    return "" if x is None else format(x, spec)


VERSUS_PYTORCH = ("cnn_train", "cnn_train_1thread", "cnn_infer", "ae_train", "ae_infer")


def _pct(row: dict | None) -> str:
    return _fmt(row and row.get("flop_bound_fraction"), ".1%")


def versus_pytorch(result: dict) -> list[str]:
    """The table of ours against PyTorch (where measured) and both against the FLOP bound."""
    rows = {r["name"]: r for r in result["rows"]}
    names = [name for name in VERSUS_PYTORCH if name in rows]
    if not names:
        return []
    lines = [
        "",
        "| vs PyTorch | threads | fmnist-jax images/s | PyTorch images/s | fmnist-jax / PyTorch "
        "| % of FLOP bound: fmnist-jax | PyTorch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        ours, theirs = rows[name], rows.get(f"pytorch_{name}")
        lines.append(
            f"| {name} | {ours.get('threads', '')} | {ours['images_per_s']:,.0f} | "
            f"{_fmt(theirs and theirs['images_per_s'], ',.0f')} | "
            f"{_fmt(theirs and ours['ratio'], '.2f')} | {_pct(ours)} | {_pct(theirs)} |"
        )
    peaks = result["env"].get("matmul_peak_gflops", {})
    if peaks:
        each = "; ".join(
            f"{k} thread{'s' * (k != '1')}: **{p['best']:.0f}** ("
            + ", ".join(f"{lib} {v:.0f}" for lib, v in p.items() if lib != "best")
            + ")"
            for k, p in sorted(peaks.items())
        )
        lines += [
            "",
            f"FLOP bound = float32 matmul peak (GFLOP/s, the best library) / matmul FLOPs per "
            f"image. Peak: {each}. FLOPs per image: 2 per multiply-add of every convolution and "
            "dense layer, from their shapes (a training step: 3 forward passes less the first "
            "layer's input gradient; see benchmarks/bound.py): "
            + ", ".join(
                f"{name} {rows[name]['flops_per_image'] / 1e6:.2f} M"
                for name in names
                if "flops_per_image" in rows[name]
            )
            + ".",
        ]
    return lines


def markdown(result: dict) -> str:
    """The result as a Markdown table of rows and ratios."""
    env = result["env"]
    load_before = _fmt((env["load_average"] or [None])[0], ".2f")
    lines = [
        f"## fmnist-jax benchmarks ({'quick' if result['quick'] else 'full'} run)",
        "",
        f"Device: **{env['device_kind']} x{env['device_count']}** ({env['backend']} backend, "
        f"{env['cpu_count']} host CPUs, {env['cpu_model']}); jax {env['jax']}, flax "
        f"{env['flax']}; data: {env['data']}; load average before: {load_before}.",
        "images/s is the median over repetitions (all members' images for N members), best the "
        "highest; spread is (max - min) / median; ratio is against the `vs` row of this same run "
        "(rows of a group are timed in interleaved rounds and the ratio is the median of per-round "
        "ratios, since this machine's speed may drift); cpu/wall is the "
        "cores this process kept busy; other = cores other processes kept busy meanwhile; "
        "images/CPU-s = images per CPU-second of this process (what an image costs); compile s "
        "is ~0 where the same program was already compiled earlier in the run.",
    ]
    loaded = [r["name"] for r in result["rows"] if r.get("other_processes_cores", 0) > 0.25]
    if loaded:
        lines.append(
            f"**Warning**: other processes kept more than 0.25 cores busy during "
            f"{', '.join(loaded)}; those rows' absolute numbers (and ratios) are low."
        )
    if env.get("compilation_cache_dir"):
        lines.append(
            f"JAX's persistent compilation cache is on ({env['compilation_cache_dir']}): "
            "compile_s may be a cache load."
        )
    lines += [
        "",
        "| row | device | images/s | best | spread | ratio | vs | compile s | cpu/wall | other "
        "| images/CPU-s |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['name']} | {r['device']} | {r['images_per_s']:,.0f} | "
            f"{r['images_per_s_max']:,.0f} | {r['spread']:.1%} | "
            f"{_fmt(r.get('ratio'), '.2f')} | {r.get('baseline', '')} | "
            f"{_fmt(r.get('compile_s'), '.2f')} | {r['cpu_per_wall']:.2f} | "
            f"{_fmt(r.get('other_processes_cores'), '.2f')} | {r['images_per_cpu_s']:,.0f} |"
        )
    lines += versus_pytorch(result)
    if result["ratios"]:
        lines += ["", "| ratio | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in result["ratios"].items()]
    notes = [f"- **{r['name']}**: {r['note']}" for r in result["rows"] if r.get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    if result.get("skipped"):
        lines += ["", "Skipped:", *(f"- {s['name']}: {s['why']}" for s in result["skipped"])]
    return "\n".join(lines) + "\n"


def check(result: dict) -> None:
    """The JSON's contract: fail loudly rather than write a result others cannot rely on."""
    for r in result["rows"]:
        v = r.get("images_per_s")
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise RuntimeError(f"row {r.get('name')!r} has no positive finite images_per_s: {v!r}")


def main(argv=None) -> dict:
    """`python -m benchmarks.run`: measure, check, write the JSON and the table. -> the result."""
    tolerant_output()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    quick = "tiny epochs, one repetition: a smoke run (< ~60 s on 2 CPU cores)"
    parser.add_argument("--quick", action="store_true", help=quick)
    json_help = f"default {DEFAULT_JSON}; the Markdown table goes beside it (.md)"
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=json_help)
    only = f"measure only these groups: {', '.join(GROUPS)}"
    parser.add_argument("--only", nargs="+", choices=list(GROUPS), metavar="GROUP", help=only)
    args = parser.parse_args(argv)
    if (problem := backend_problem()) is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)
    md_path = args.json.with_suffix(".md")
    try:  # the results must have somewhere to go before minutes of measuring
        for path in (args.json, md_path):
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir() or not os.access(path.parent, os.W_OK):
                raise OSError(f"{path} is a folder or its folder is not writable")
    except OSError as e:
        print(f"error: cannot write the results ({e}); choose another --json PATH", file=sys.stderr)
        sys.exit(2)
    t_start = time.perf_counter()
    plan = cases.Plan.make(args.quick)
    selected = [g for g in GROUPS if not args.only or g in args.only]
    workload = load_workload()
    env = {**environment(), "data": workload.source, "plan": plan.__dict__}
    rows, skipped = [], []
    if set(selected) & set(VERSUS_PYTORCH):
        if (why := cases.pytorch_problem()) is not None:
            skipped.append({"name": "pytorch_* rows", "why": why})
        env["pytorch"] = getattr(cases.pytorch(), "VERSION", None)
        if jax.default_backend() == "cpu":  # the bound is the CPU's
            env["matmul_peak_gflops"] = {str(host_cpu_count()): cases.matmul_peak(plan)}
    for group in selected:
        t0 = time.perf_counter()
        if group == "cnn_train_1thread":
            got, why = one_thread.run_worker(
                plan.quick, workload.source == "random", timeout_s=300 if plan.quick else 1200
            )
            if why is None:
                rows += got["rows"]
                env.setdefault("matmul_peak_gflops", {})["1"] = got["matmul_peak_gflops"]
            else:
                skipped.append({"name": one_thread.NAME, "why": why})
        elif group == "devices":
            got, lost, env["device_workers"] = scaling.run_workers(
                plan, random_data=workload.source == "random", timeout_s=300 if plan.quick else 1200
            )
            rows, skipped = rows + got, skipped + lost
        else:
            rows += GROUPS[group](plan, workload)
        print(
            f"[benchmarks] {group}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True
        )
    bound_fractions(rows, env.get("matmul_peak_gflops", {}))
    result = {"env": env, "quick": plan.quick, "rows": rows, "ratios": ratios(rows)}
    result["skipped"] = skipped
    env["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    env["total_s"] = time.perf_counter() - t_start
    check(result)
    table = markdown(result)
    write_json(args.json, result)
    write_text(md_path, table)
    print(table)
    print(f"wrote {args.json} and {md_path}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
