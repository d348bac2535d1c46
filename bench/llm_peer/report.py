#!/usr/bin/python3
"""The LLM benchmark's table: dl_bench_llm's JSON output beside llama_cpp_peer.mjs's, and whether they agree.

Usage: report.py --ours OURS_JSON... --peer PEER_JSON... --ours-check CHECK_JSON
Each case keeps its best round (on a shared machine the slower rounds measure the neighbours). Prefill is reported
in tokens per second over the whole prompt, decode in milliseconds per generated token; ratios are llama.cpp's
time over ours, so above 1 means dreamllm is faster.
"""
import argparse
import json
import struct

# Bytes per block and elements per block of the ggml types a converted file holds.
GGML_BLOCKS = {0: (4, 1), 1: (2, 1), 2: (18, 32), 8: (34, 32), 12: (144, 256), 14: (210, 256), 30: (2, 1)}


def streamed_bytes(path):
    """Bytes of a GGUF file's tensors that a decoding step reads: all but token_embd (one row per token)."""
    with open(path, "rb") as f:
        def read(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))

        def string():
            (n,) = read("Q")
            return f.read(n).decode("utf-8", "replace")

        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

        def skip_value(t):
            if t == 8:
                string()
            elif t == 9:
                (et, n) = read("IQ")
                for _ in range(n):
                    skip_value(et)
            else:
                f.seek(sizes[t], 1)

        magic, _version, n_tensors, n_kv = read("4sIQQ")
        assert magic == b"GGUF", path
        for _ in range(n_kv):
            string()
            (t,) = read("I")
            skip_value(t)
        total = 0
        for _ in range(n_tensors):
            name = string()
            (nd,) = read("I")
            ne = read("Q" * nd)
            (t, _off) = read("IQ")
            count = 1
            for d in ne:
                count *= d
            block_bytes, block_elems = GGML_BLOCKS[t]
            if name != "token_embd.weight":
                total += count // block_elems * block_bytes
        return total


def best(results, key, ms):
    if key not in results or ms < results[key]:
        results[key] = ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", nargs="+", required=True)
    ap.add_argument("--peer", nargs="+", required=True)
    ap.add_argument("--ours-check", required=True)
    ap.add_argument("--gguf", help="the model file both engines ran: decode rows then say which share of the "
                                    "measured memory bandwidth each engine reaches, counting the bytes of every "
                                    "tensor but token_embd as read once per token")
    a = ap.parse_args()
    a.weights_bytes = streamed_bytes(a.gguf) if a.gguf else 0

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
            if case.startswith("memory_read"):
                continue
            if (case, threads) not in order:
                order.append((case, threads))

    peer, peer_info, peer_check = {}, None, None
    for path in a.peer:
        data = json.load(open(path))
        peer_info = f"node-llama-cpp {data['version']}"
        peer_check = data.get("check") or peer_check
        for c in data["cases"]:
            best(peer, (c["name"], c["threads"]), c["ms"])

    # Memory read bandwidth per thread count: 1 GiB summed (dl_bench_llm's memory_read case).
    bandwidth = {t: 2**30 / (ms * 1e-3) for (c, t), ms in ours.items() if c.startswith("memory_read")}
    print("| case | threads | dreamllm | llama.cpp | llama.cpp time / dreamllm time |")
    print("|---|---:|---:|---:|---:|")
    for case, threads in order:
        o, p = ours[(case, threads)], peer.get((case, threads))
        if case.startswith("llm_prefill/P"):
            n = int(case.split("P")[1])
            fmt = lambda ms: f"{ms:.0f} ms ({n / ms * 1e3:.1f} tokens/s)"
        elif a.weights_bytes and threads in bandwidth:
            bw = bandwidth[threads]
            fmt = lambda ms: (f"{ms:.1f} ms/token ({a.weights_bytes / (ms * 1e-3) / 1e9:.1f} GB/s, "
                              f"{a.weights_bytes / (ms * 1e-3) / bw:.0%} of {bw / 1e9:.1f})")
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
