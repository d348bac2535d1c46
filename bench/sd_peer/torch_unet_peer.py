#!/usr/bin/python3
"""PyTorch CPU peer of the creation benchmark: a guided UNet step (batch 2) and a VAE decode on the same weights.

  /usr/bin/python3 bench/sd_peer/torch_unet_peer.py MODEL_DIR --part unet|vae --size PX --threads N [--reps R]

MODEL_DIR is the DreamLLM directory make_sd_weights.py writes; its stable_diffusion_head.safetensors (F16) is read
and widened to F32, since Debian's torch 1.13 has no fast F16 convolution on the CPU. The forward passes are the
diffusers-semantics references that the parity fixtures are made from (tools/fixtures/make_tiny_unet_vae.py: unfused
attention through bmm, F.conv2d through oneDNN, F.linear through OpenBLAS), at the SD 2.1-base config. The inputs
match `dreamllm bench unet --cfg` / `bench vae`: random latents, timestep 500, 64 context tokens of width 1024.
Prints one JSON line: {"part", "size", "threads", "seconds" (best repetition), "samples", "peak_rss_bytes"}.
"""
import argparse
import ctypes
import json
import os
import resource
import struct
import sys
import time

# As in bench/torch_peer.py: passive OpenMP workers (spinning ones starve OpenBLAS's threads), and OpenBLAS told the
# thread count (Debian's torch reaches it through libblas.so.3 and never sets it). Before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "fixtures"))
import make_tiny_unet_vae as ref  # noqa: E402

try:
    _openblas = ctypes.CDLL("libopenblas.so.0")
except OSError:
    _openblas = None

# SD 2.1-base (shared/docs/dreamllm-architecture.md section 1.6); attention_head_dim is the number of heads.
UNET_CFG = {"block_out_channels": [320, 640, 1280, 1280],
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "cross_attention_dim": 1024,
            "attention_head_dim": [5, 10, 20, 20], "norm_num_groups": 32, "layers_per_block": 2,
            "use_linear_projection": True, "flip_sin_to_cos": True, "freq_shift": 0}
VAE_CFG = {"block_out_channels": [128, 256, 512, 512], "latent_channels": 4, "norm_num_groups": 32,
           "layers_per_block": 2}
VAE_SCALE = 0.18215
CONTEXT_TOKENS = 64


def read_safetensors(path, prefix):
    """The F16 tensors under `prefix` (prefix stripped), widened to F32."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or not name.startswith(prefix):
            continue
        assert info["dtype"] == "F16", (name, info["dtype"])
        a, b = info["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype=np.float16).reshape(info["shape"])
        out[name[len(prefix):]] = torch.from_numpy(arr.astype(np.float32))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--part", choices=["unet", "vae"], required=True)
    ap.add_argument("--size", type=int, required=True, help="image side in pixels (a multiple of 8)")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions after one warm-up")
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    if a.size % 8:
        sys.exit(f"--size {a.size} is not a multiple of 8")
    torch.set_num_threads(a.threads)
    if _openblas is not None:
        _openblas.openblas_set_num_threads(a.threads)
    path = os.path.join(a.model, "stable_diffusion_head.safetensors")
    w = read_safetensors(path, a.part + ".")
    g = torch.Generator().manual_seed(a.seed)
    lat = a.size // 8
    if a.part == "unet":
        sample = torch.randn(2, 4, lat, lat, generator=g)
        context = torch.randn(2, CONTEXT_TOKENS, UNET_CFG["cross_attention_dim"], generator=g)
        t = torch.tensor([500.0])
        run = lambda: ref.unet(w, UNET_CFG, sample, t, context)  # noqa: E731
    else:
        z = torch.randn(1, 4, lat, lat, generator=g)
        run = lambda: ref.vae_decode(w, VAE_CFG, z / VAE_SCALE)  # noqa: E731  (as decode_latents: unscale first)
    samples = []
    with torch.no_grad():
        out = run()  # warm-up: first touch of the weights and oneDNN's kernel selection
        assert torch.isfinite(out).all(), "non-finite output: the random weights are badly scaled"
        for _ in range(a.reps):
            t0 = time.perf_counter()
            run()
            samples.append(time.perf_counter() - t0)
    print(json.dumps({"part": a.part, "size": a.size, "threads": a.threads, "seconds": min(samples),
                      "samples": samples, "torch": torch.__version__,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


if __name__ == "__main__":
    main()
