#!/usr/bin/python3
"""The LLM benchmark's table: dl_bench_llm's JSON output beside llama_cpp_peer.mjs's, and whether they agree.

Usage: report.py --ours OURS_JSON... --peer PEER_JSON... --ours-check CHECK_JSON
Each case keeps its best round (on a shared machine the slower rounds measure the neighbours). Prefill is reported
in tokens per second over the whole prompt, decode in milliseconds per generated token; ratios are llama.cpp's
time over ours, so above 1 means dreamllm is faster.
"""
import argparse
import json


def best(results, key, ms):
    if key not in results or ms < results[key]:
        results[key] = ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", nargs="+", required=True)
    ap.add_argument("--peer", nargs="+", required=True)
    ap.add_argument("--ours-check", required=True)
    a = ap.parse_args()

    ours, order = {}, []
    for path in a.ours:
        for b in json.load(open(path)).get("benchmarks", []):
            if b.get("run_type", "iteration") != "iteration":
                continue
            parts = b["name"].split("/")
            case = "/".join(parts[1:3])
            threads = next(int(p[2:]) for p in parts if p.startswith("t:"))
            ms = b["real_time"] * {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
            if case.startswith("llm_decode/N"):
                ms /= int(case.split("N")[1])  # per token, as the peer reports it
            best(ours, (case, threads), ms)
            if (case, threads) not in order:
                order.append((case, threads))

    peer, peer_info, peer_check = {}, None, None
    for path in a.peer:
        data = json.load(open(path))
        peer_info = f"node-llama-cpp {data['version']}"
        peer_check = data.get("check") or peer_check
        for c in data["cases"]:
            best(peer, (c["name"], c["threads"]), c["ms"])

    print("| case | threads | dreamllm | llama.cpp | llama.cpp time / dreamllm time |")
    print("|---|---:|---:|---:|---:|")
    for case, threads in order:
        o, p = ours[(case, threads)], peer.get((case, threads))
        if case.startswith("llm_prefill/P"):
            n = int(case.split("P")[1])
            fmt = lambda ms: f"{ms:.0f} ms ({n / ms * 1e3:.1f} tokens/s)"
        else:
            fmt = lambda ms: f"{ms:.1f} ms/token"
        print(f"| `{case}` | {threads} | {fmt(o)} | {fmt(p) if p else '-'} | {p / o:.2f} |" if p else
              f"| `{case}` | {threads} | {fmt(o)} | - | - |")

    mine = json.load(open(a.ours_check))
    print()
    print(f"Peer: {peer_info}, CPU backend, weights mmapped.")
    if peer_check:
        top_o = [t for t, _ in mine["top"]]
        top_p = [t for t, _ in peer_check["top"]]
        dp = max(abs(po - pp) for (_, po), (_, pp) in zip(mine["top"], peer_check["top"]))
        same = next((i for i, (x, y) in enumerate(zip(mine["greedy"], peer_check["greedy"])) if x != y),
                    len(mine["greedy"]))
        print(f"Same model? The 8 most likely next tokens after 16 prompt ids: "
              f"{'the same, in the same order' if top_o == top_p else f'ours {top_o}, llama.cpp {top_p}'}; "
              f"largest probability difference {dp:.4f}. Greedy continuations agree for {same} of "
              f"{len(mine['greedy'])} tokens.")


if __name__ == "__main__":
    main()
