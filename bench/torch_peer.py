#!/usr/bin/python3
"""PyTorch CPU peer for bench/bench_core.cpp: the same GEMM, attention and conv2d cases at 1 and 2 threads.

Run with /usr/bin/python3 (Debian's python3-torch). Prints one JSON object per line:
{"name": <case, as in dl_bench without the impl prefix>, "threads": n, "ms": median, "gflops": ..., "impl": ...}
FLOP counts match dl_bench (causal attention counts half the scores) so GFLOP/s ratios are time ratios.
"""
import argparse
import ctypes
import json
import math
import os
import re
import statistics
import sys
import time

# torch's OpenMP workers otherwise spin after each parallel region and starve the OpenBLAS threads that its
# matmuls run on (2-thread unfused attention measured ~1.7x slower that way). Must be set before libgomp loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# Debian's torch reaches OpenBLAS through the generic libblas.so.3 and never tells it the thread count, so
# without this a "1-thread" torch GEMM would still run on every core.
try:
    _openblas = ctypes.CDLL("libopenblas.so.0")
except OSError:
    _openblas = None


def set_threads(n):
    torch.set_num_threads(n)
    if _openblas is not None:
        _openblas.openblas_set_num_threads(n)


def time_call(fn, min_time, min_reps=3, max_reps=200):
    """Median wall time in ms of fn() after a warm-up call, over at least min_reps calls and min_time seconds."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def attention_math(q, k, v, causal):
    # torch < 2.0 has no scaled_dot_product_attention; this is the unfused equivalent (materialises T x T scores).
    s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        t = s.shape[-1]
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return torch.matmul(s.softmax(-1), v)


def cases(rand):
    """Yields (name, flops, min_time, impl, make) where make() builds the inputs and returns the timed call."""
    for m, k, n in ((1, 4096, 4096), (1, 4096, 11008), (512, 4096, 4096), (512, 4096, 11008), (4096, 320, 320),
                    (1024, 640, 640), (256, 1280, 5120)):
        flops = 2.0 * m * n * k
        shape = f"M{m}_K{k}_N{n}"

        def make_f32(m=m, k=k, n=n):
            x, w = rand(m, k), rand(n, k)
            return lambda: F.linear(x, w)

        yield f"gemm_f32/{shape}", flops, 0.5, "F.linear", make_f32
        if m == 1:
            # Activations are bf16 here too (torch has no mixed F32 x BF16 linear); ours keeps them F32.
            def make_bf16(m=m, k=k, n=n):
                x, w = rand(m, k).bfloat16(), rand(n, k).bfloat16()
                return lambda: F.linear(x, w)

            yield f"gemm_bf16w/{shape}", flops, 0.5, "F.linear bf16", make_bf16

    sdpa = getattr(F, "scaled_dot_product_attention", None)
    impl = "sdpa" if sdpa else f"unfused math (torch {torch.__version__} has no sdpa)"
    for b, h, t, d, causal, min_time in ((1, 32, 512, 128, True, 0.5), (1, 32, 2048, 128, True, 1.0),
                                          (1, 5, 4096, 64, False, 1.0)):
        def make_attn(b=b, h=h, t=t, d=d, causal=causal):
            q, k, v = rand(b, h, t, d), rand(b, h, t, d), rand(b, h, t, d)
            if sdpa:
                return lambda: sdpa(q, k, v, is_causal=causal)
            return lambda: attention_math(q, k, v, causal)

        yield (f"attn_{'causal' if causal else 'full'}/B{b}_H{h}_T{t}_D{d}",
               4.0 * b * h * t * t * d * (0.5 if causal else 1.0), min_time, impl, make_attn)

    for c, o, hw, ks in ((320, 320, 64, 3), (640, 640, 32, 3), (640, 320, 64, 1)):
        def make_conv(c=c, o=o, hw=hw, ks=ks):
            x, w = rand(1, c, hw, hw), rand(o, c, ks, ks)
            return lambda: F.conv2d(x, w, padding=ks // 2)

        yield f"conv{ks}x{ks}/N1_C{c}_O{o}_{hw}x{hw}", 2.0 * o * hw * hw * c * ks * ks, 0.5, "F.conv2d", make_conv


def run(threads_list, scale, pattern):
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=gen) * 2 - 1

    with torch.inference_mode():
        for name, flops, min_time, impl, make in cases(rand):
            if not re.search(pattern, name):
                continue
            fn = make()
            try:
                fn()
            except RuntimeError as e:  # e.g. an op without a CPU kernel for the dtype in this torch build
                print(f"skipping {name}: {e}", file=sys.stderr)
                continue
            for n in threads_list:
                set_threads(n)
                ms = time_call(fn, min_time * scale, min_reps=2 if min_time >= 1.0 else 3)
                print(json.dumps({"name": name, "threads": n, "ms": round(ms, 4),
                                  "gflops": round(flops / ms / 1e6, 3), "impl": impl}), flush=True)
            del fn
    set_threads(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the minimum time per case")
    ap.add_argument("--filter", default="", help="regular expression; only cases whose name matches run")
    args = ap.parse_args()
    run(args.threads, args.scale, args.filter)


if __name__ == "__main__":
    main()
