#!/usr/bin/python3
"""Joins dl_bench's JSON output and torch_peer.py's JSON lines into one Markdown table.

Usage: report.py DL_BENCH_JSON... [--torch TORCH_JSONL]...
dl_bench names are "<impl>/<case>/t:<threads>[/...]"; torch_peer.py prints the bare <case> and threads.
When a case was run more than once (several rounds, or --benchmark_repetitions), its best run counts: on a
shared machine the slower runs measure the neighbours, not the kernel.
"""
import argparse
import json


def load_dl_bench(paths):
    results = {}  # (impl, case, threads) -> (gflops, ms)
    order, contexts = [], []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        contexts.append(data.get("context", {}))
        add_dl_bench(data, results, order)
    return results, list(dict.fromkeys(order)), contexts


def add_dl_bench(data, results, order):
    for b in data.get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration" or "GFLOP/s" not in b:
            continue
        parts = b["run_name"].split("/") if "run_name" in b else b["name"].split("/")
        impl, case = parts[0], "/".join(parts[1:3])
        threads = next(int(p[2:]) for p in parts if p.startswith("t:"))
        gflops = b["GFLOP/s"] / 1e9
        ms = b["real_time"] * {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
        key = (impl, case, threads)
        if key not in results:
            order.append((case, threads))
            results[key] = (gflops, ms)
        elif gflops > results[key][0]:
            results[key] = (gflops, ms)


def load_torch(paths):
    results, notes = {}, {}
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                r = json.loads(line)
                key = (r["name"], r["threads"])
                results[key] = max(results.get(key, 0.0), r["gflops"])
                notes[r["name"]] = r.get("impl", "")
    return results, notes


def fmt(x, digits=1):
    return "—" if x is None else f"{x:.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dl_bench", nargs="+", help="dl_bench --benchmark_out JSON files")
    ap.add_argument("--torch", action="append", default=[], help="torch_peer.py output (JSON lines)")
    args = ap.parse_intermixed_args()
    ours_all, order, contexts = load_dl_bench(args.dl_bench)
    torch_res, torch_notes = load_torch(args.torch)

    print("| case | threads | ours ms | ours GFLOP/s | OpenBLAS GFLOP/s | PyTorch GFLOP/s | ours/OpenBLAS | ours/PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for case, threads in order:
        ours = ours_all.get(("ours", case, threads))
        if ours is None:
            continue
        blas = ours_all.get(("openblas", case, threads))
        blas_g = blas[0] if blas else None
        torch_g = torch_res.get((case, threads))
        print(f"| `{case}` | {threads} | {fmt(ours[1], 2)} | {fmt(ours[0])} | {fmt(blas_g)} | {fmt(torch_g)} | "
              f"{fmt(ratio(ours[0], blas_g), 2)} | {fmt(ratio(ours[0], torch_g), 2)} |")

    used = sorted({n for n in torch_notes.values() if n})
    if used:
        print()
        print("PyTorch implementations used: " + "; ".join(
            f"{n} ({', '.join(sorted({c.split('/')[0] for c, m in torch_notes.items() if m == n}))})" for n in used)
            + ".")
    loads = [", ".join(f"{x:.2f}" for x in c["load_avg"]) for c in contexts if "load_avg" in c]
    if loads:
        print(f"Best of {len(contexts)} round(s); load average (1, 5, 15 min) when dl_bench started: "
              + "; ".join(loads) + ".")


if __name__ == "__main__":
    main()
