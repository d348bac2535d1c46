#!/usr/bin/python3
"""The creation benchmark's table from scripts/bench_sd.sh's raw files (RUNS directory).

Usage: report.py RUNS_DIR
Each case keeps its best round (on a shared machine the slower rounds measure the neighbours). Ratios are the
peer's time over dreamllm's, so above 1 means dreamllm is faster. Rows:
  unet step: one guided denoising step (the UNet on both branches, batch 2). dreamllm: `bench unet --cfg`, the
             fastest timed repetition; stable-diffusion.cpp: the fastest step of its run (its progress line's s/it);
             PyTorch: the fastest timed forward.
  vae decode: one latent to pixels. dreamllm: `bench vae`; the peer: its log's decode_first_stage time (its only
             decode, so no warm-up run); PyTorch: the fastest timed decode.
  create:    a whole picture (prompt conditions, N euler steps, decode) without loading. dreamllm: `bench create`;
             the peer: its log's generate_image time.
RSS is each process's peak: dreamllm's per part (the bench process loads the whole diffusion head), the peer's for
its whole run (text encoder, UNet and VAE), PyTorch's per part (its weights widened to F32).
"""
import glob
import json
import os
import re
import sys


def best(table, key, value):
    if value is not None and (key not in table or value < table[key]):
        table[key] = value


def biggest(table, key, value):
    if value is not None and (key not in table or value > table[key]):
        table[key] = value


def parse_name(path):
    """ours.unet.256.t2.r1.json -> ('ours', 'unet', 256, 2, 1); peer.256.t2.r1.log -> ('peer', None, 256, 2, 1)."""
    parts = os.path.basename(path).split(".")
    if parts[0] == "peer":
        return "peer", None, int(parts[1]), int(parts[2][1:]), int(parts[3][1:])
    return parts[0], parts[1], int(parts[2]), int(parts[3][1:]), int(parts[4][1:])


def peer_log(path):
    text = open(path, errors="replace").read().replace("\r", "\n")
    steps = []
    for m in re.finditer(r"\|[=> ]*\|\s*(\d+)/(\d+) - ([\d.]+)(s/it|it/s)", text):
        v = float(m.group(3))
        steps.append(v if m.group(4) == "s/it" else 1.0 / v)

    def seconds(pattern):
        m = re.search(pattern, text)
        return float(m.group(1)) if m else None

    return {"step": min(steps) if steps else None,
            "vae": seconds(r"decode_first_stage completed, taking ([\d.]+)s"),
            "create": seconds(r"generate_image completed in ([\d.]+)s"),
            "steps": len(steps)}


def peer_rss(path):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(path).read()) if os.path.exists(path) else None
    return int(m.group(1)) * 1024 if m else None


def rss_file(path):
    try:
        return int(open(path).read().split()[-1]) * 1024
    except (OSError, ValueError, IndexError):
        return None


def fmt_s(v):
    return f"{v:.2f} s" if v is not None else "-"


def fmt_gib(v):
    return f"{v / 2**30:.2f}" if v is not None else "-"


def ratio(p, o):
    return f"{p / o:.2f}" if p is not None and o else "-"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: report.py RUNS_DIR")
    runs = sys.argv[1]
    time, rss = {}, {}  # (engine, case, size, threads) -> best seconds / peak bytes
    for path in glob.glob(os.path.join(runs, "ours.*.json")):
        _, part, size, threads, _ = parse_name(path)
        recs = json.load(open(path))
        for rec in recs:
            per = [ns / 1e9 / rec.get("images", 1) if part == "create" else ns / 1e9 for ns in rec["samples_ns"]]
            best(time, ("ours", part, size, threads), min(per))
        biggest(rss, ("ours", part, size, threads), rss_file(path[:-5] + ".rss"))
    peer_steps = set()
    for path in glob.glob(os.path.join(runs, "peer.*.log")):
        _, _, size, threads, _ = parse_name(path)
        p = peer_log(path)
        peer_steps.add(p["steps"])
        peak = peer_rss(path[:-4] + ".time")
        for part in ("unet", "vae", "create"):
            best(time, ("peer", part, size, threads), p["step" if part == "unet" else part])
            biggest(rss, ("peer", part, size, threads), peak)
    for path in glob.glob(os.path.join(runs, "torch.*.json")):
        _, part, size, threads, _ = parse_name(path)
        line = open(path).read().strip().splitlines()
        if not line:
            continue
        d = json.loads(line[-1])
        best(time, ("torch", part, size, threads), d["seconds"])
        biggest(rss, ("torch", part, size, threads), d["peak_rss_bytes"])

    # One block of lines per run of bench_sd.sh (APPEND=1 adds blocks), each starting with its cpu= line.
    blocks = []
    if os.path.exists(os.path.join(runs, "machine.txt")):
        for line in open(os.path.join(runs, "machine.txt")):
            k, _, v = line.strip().partition("=")
            if k == "cpu" or not blocks:
                blocks.append({})
            blocks[-1][k] = v
    rounds = {parse_name(k)[4] for k in glob.glob(os.path.join(runs, "*.json")) + glob.glob(os.path.join(runs, "*.log"))}
    have_torch = any(k[0] == "torch" for k in time)
    print(f"CPU: {blocks[0].get('cpu', '?') if blocks else '?'}; stable-diffusion.cpp "
          f"{blocks[0].get('peer_commit', '?') if blocks else '?'}; best of {len(rounds)} round(s) per case; the same "
          f"random SD 2.1-base weights, F16, on every side. Runs:")
    for b in blocks:
        print(f"- {b.get('date', '?')}: {b.get('piece', '?')}, dreamllm {b.get('ours_commit', '?')}, load average at "
              f"the start {b.get('load_at_start', '?')}")
    print()
    head = "| case | threads | dreamllm | stable-diffusion.cpp | sd.cpp time / dreamllm time |"
    sep = "|---|---:|---:|---:|---:|"
    if have_torch:
        head += " PyTorch | PyTorch time / dreamllm time |"
        sep += "---:|---:|"
    head += " peak RSS GiB: dreamllm / sd.cpp" + (" / PyTorch |" if have_torch else " |")
    sep += "---:|"
    print(head)
    print(sep)
    cases = sorted({(k[1], k[2], k[3]) for k in time}, key=lambda c: (["unet", "vae", "create"].index(c[0]), c[1], c[2]))
    steps = "/".join(sorted({b.get("peer_steps", "?") for b in blocks})) or "?"
    names = {"unet": "unet step {s}x{s} (cfg, batch 2)", "vae": "vae decode {s}x{s}",
             "create": "create {s}x{s} (euler, " + steps + " steps, cfg)"}
    for part, size, threads in cases:
        o, p, t = (time.get((e, part, size, threads)) for e in ("ours", "peer", "torch"))
        if part == "create" and o is None:  # CREATE=0: the peer's whole-picture time alone compares with nothing
            continue
        row = f"| {names[part].format(s=size)} | {threads} | {fmt_s(o)} | {fmt_s(p)} | {ratio(p, o)} |"
        if have_torch:
            row += f" {fmt_s(t)} | {ratio(t, o)} |" if part != "create" else " - | - |"
        rs = [fmt_gib(rss.get((e, part, size, threads))) for e in ("ours", "peer")]
        if have_torch:
            rs.append(fmt_gib(rss.get(("torch", part, size, threads))) if part != "create" else "-")
        row += " " + " / ".join(rs) + " |"
        print(row)
    if len(peer_steps) > 1 or (peer_steps and min(peer_steps) == 0):
        print()
        print(f"Warning: the peer's logs held {sorted(peer_steps)} sampling progress lines; check its runs.")


if __name__ == "__main__":
    main()
