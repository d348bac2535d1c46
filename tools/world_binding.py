#!/usr/bin/env python3
"""Can the world's UNet bind attributes to shapes at all, and from which condition?

Trains a fresh UNet of the shapes world's configuration (PyTorch, diffusers' UNet2DConditionModel semantics,
v_prediction at zero terminal SNR, as `dreamllm train --stage I-a` trains it) on the world's latents under one
of several conditions, then draws held-out one- and two-shape scenes and scores them with `dreamllm world score`.
The conditions:
  cell     oracle: 9 tokens, one per cell of the 3x3 grid, each the sum of learned embeddings of its cell and of
           the kind, colour and size of the shape in it (or "empty")
  slot     oracle: one token per shape in the caption's order (its cell, kind, colour and size), padded to 3
  queries  the states of a trained DreamLLM's LLM at its dream queries (the condition DreamLLM gives the UNet),
           through a learned linear projection, as in the recipe's `draw`
  tokens   the same LLM's states at every caption token and the dream queries (how SD conditions on CLIP's text
           states), through the same kind of projection
  encoder  a causal transformer of the world LLM's size (4 layers, width 128, 4 heads) with 8 learned queries after
           the caption, trained from scratch with the UNet under the diffusion loss alone: the DreamLLM condition
           path, learned end to end without the LLM's comprehension training
  llm      the model's own LLaMA (RMSNorm, rotary attention, SwiGLU) with 8 fresh dream queries after the caption,
           trained with the UNet under the diffusion loss alone, from the model's weights (--llm-init committed)
           or from a fresh N(0, 0.02) initialisation (--llm-init fresh), at --llm-lr-scale of the rate
The VAE and the LLM are the model directory's, run by `dreamllm run` (vae_encode, vae_decode, llm).

  /usr/bin/python3 tools/world_binding.py --data DATA --model MODEL --out DIR --cond cell --steps 3000
"""
import argparse
import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures"))
from safetensors_io import save  # noqa: E402

KINDS = ["circle", "square", "triangle", "diamond", "cross"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SIZES = ["small", "large"]


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    types = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64}
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        a, b = h["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype=types[h["dtype"]]).reshape(h["shape"]).copy())
    return out


def run_component(exe, component, model, tensors, work, threads):
    src, dst = os.path.join(work, "in.safetensors"), os.path.join(work, "out.safetensors")
    save(src, tensors)
    subprocess.run([exe, "run", component, "--model", model, "--in", src, "--out", dst, "--threads", str(threads)],
                   check=True, stdout=subprocess.DEVNULL)
    return load_safetensors(dst)


class CaptionIds:
    """Captions as `dreamllm`'s tokenizer encodes them (BOS + SentencePiece pieces) and the added tokens' ids."""

    def __init__(self, model):
        import sentencepiece as spm
        self.sp = spm.SentencePieceProcessor(model_file=os.path.join(model, "tokenizer.model"))
        self.added = json.load(open(os.path.join(model, "added_tokens.json")))

    def __call__(self, caption, suffix=()):
        return [self.sp.bos_id()] + self.sp.encode(caption) + [self.added[t] for t in suffix]


def read_scenes(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- the UNet (diffusers' UNet2DConditionModel, SD 2.x style: linear projections, GEGLU) ----
class Resnet(nn.Module):
    def __init__(self, i, o, temb, groups):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, i, eps=1e-5), nn.Conv2d(i, o, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, o)
        self.norm2, self.conv2 = nn.GroupNorm(groups, o, eps=1e-5), nn.Conv2d(o, o, 3, padding=1)
        self.shortcut = nn.Conv2d(i, o, 1) if i != o else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.shortcut(x) if self.shortcut is not None else x) + h


class Attention(nn.Module):
    def __init__(self, c, ctx, heads):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(c, c, bias=False), nn.Linear(ctx, c, bias=False), \
            nn.Linear(ctx, c, bias=False)
        self.to_out = nn.Linear(c, c)

    def forward(self, x, ctx, mask=None):
        B, N, C = x.shape
        h = self.heads
        q = self.to_q(x).view(B, N, h, C // h).transpose(1, 2)
        k = self.to_k(ctx).view(B, ctx.shape[1], h, C // h).transpose(1, 2)
        v = self.to_v(ctx).view(B, ctx.shape[1], h, C // h).transpose(1, 2)
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(C // h)
        if mask is not None:
            s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
        return self.to_out(torch.matmul(s.softmax(-1), v).transpose(1, 2).reshape(B, N, C))


class Transformer(nn.Module):
    def __init__(self, c, ctx, heads, groups):
        super().__init__()
        self.norm, self.proj_in, self.proj_out = nn.GroupNorm(groups, c, eps=1e-6), nn.Linear(c, c), nn.Linear(c, c)
        self.norm1, self.attn1 = nn.LayerNorm(c), Attention(c, c, heads)
        self.norm2, self.attn2 = nn.LayerNorm(c), Attention(c, ctx, heads)
        self.norm3, self.ff_in, self.ff_out = nn.LayerNorm(c), nn.Linear(c, 8 * c), nn.Linear(4 * c, c)

    def forward(self, x, ctx, mask):
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(B, H * W, C))
        n = self.norm1(h)
        h = h + self.attn1(n, n)
        h = h + self.attn2(self.norm2(h), ctx, mask)
        a, g = self.ff_in(self.norm3(h)).chunk(2, dim=-1)
        h = h + self.ff_out(a * F.gelu(g))
        return x + self.proj_out(h).reshape(B, H, W, C).permute(0, 3, 1, 2)


class UNet(nn.Module):
    """block_out_channels (64, 128), layers_per_block 1, 4 heads, cross-attention at the first level and the
    middle: the world's UNet config (models/shapes-world/unet/config.json)."""

    def __init__(self, ctx=64, ch=(64, 128), heads=4, groups=16):
        super().__init__()
        c0, c1 = ch
        temb = 4 * c0
        self.c0 = c0
        self.time1, self.time2 = nn.Linear(c0, temb), nn.Linear(temb, temb)
        self.conv_in = nn.Conv2d(4, c0, 3, padding=1)
        self.down_res, self.down_attn = Resnet(c0, c0, temb, groups), Transformer(c0, ctx, heads, groups)
        self.downsample = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
        self.down1_res = Resnet(c0, c1, temb, groups)
        self.mid_res1, self.mid_attn, self.mid_res2 = Resnet(c1, c1, temb, groups), \
            Transformer(c1, ctx, heads, groups), Resnet(c1, c1, temb, groups)
        self.up0_res = nn.ModuleList([Resnet(c1 + c1, c1, temb, groups), Resnet(c1 + c0, c1, temb, groups)])
        self.upsample = nn.Conv2d(c1, c1, 3, padding=1)
        self.up1_res = nn.ModuleList([Resnet(c1 + c0, c0, temb, groups), Resnet(c0 + c0, c0, temb, groups)])
        self.up1_attn = nn.ModuleList([Transformer(c0, ctx, heads, groups), Transformer(c0, ctx, heads, groups)])
        self.norm_out, self.conv_out = nn.GroupNorm(groups, c0, eps=1e-5), nn.Conv2d(c0, 4, 3, padding=1)

    def time_embedding(self, t):
        half = self.c0 // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        e = t.float()[:, None] * freqs[None]
        e = torch.cat([torch.cos(e), torch.sin(e)], dim=-1)  # flip_sin_to_cos
        return self.time2(F.silu(self.time1(e)))

    def forward(self, x, t, ctx, mask=None):
        temb = self.time_embedding(t)
        h = self.conv_in(x)
        skips = [h]
        h = self.down_attn(self.down_res(h, temb), ctx, mask)
        skips.append(h)
        h = self.downsample(h)
        skips.append(h)
        h = self.down1_res(h, temb)
        skips.append(h)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, temb), ctx, mask), temb)
        for r in self.up0_res:
            h = r(torch.cat([h, skips.pop()], 1), temb)
        h = self.upsample(F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        for r, a in zip(self.up1_res, self.up1_attn):
            h = a(r(torch.cat([h, skips.pop()], 1), temb), ctx, mask)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---- the noise schedule: SD 2.1's scaled-linear betas rescaled to zero terminal SNR, v_prediction ----
def alphas_cumprod():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    s = torch.cumprod(1 - betas, 0).sqrt()
    s0, sT = s[0].clone(), s[-1].clone()
    s = (s - sT) * s0 / (s0 - sT)
    return (s ** 2).float()


# ---- conditions ----
class OracleCondition(nn.Module):
    def __init__(self, mode, dim=64, slots=3):
        super().__init__()
        self.mode, self.slots = mode, slots
        self.cell, self.kind = nn.Embedding(9, dim), nn.Embedding(len(KINDS) + 1, dim)
        self.colour, self.size = nn.Embedding(len(COLOURS) + 1, dim), nn.Embedding(len(SIZES) + 1, dim)
        for e in [self.cell, self.kind, self.colour, self.size]:
            nn.init.normal_(e.weight, std=0.5)

    def codes(self, scene):
        """[tokens, 4] integer codes (cell, kind, colour, size); index len(...) means empty."""
        shapes = [(3 * s["row"] + s["col"], KINDS.index(s["kind"]), COLOURS.index(s["colour"]), SIZES.index(s["size"]))
                  for s in scene["shapes"]]
        if self.mode == "cell":
            out = [(c, len(KINDS), len(COLOURS), len(SIZES)) for c in range(9)]
            for s in shapes:
                out[s[0]] = s
            return out
        out = list(shapes) + [(0, len(KINDS), len(COLOURS), len(SIZES))] * (self.slots - len(shapes))
        return out

    def forward(self, codes):
        return self.cell(codes[..., 0]) + self.kind(codes[..., 1]) + self.colour(codes[..., 2]) + \
            self.size(codes[..., 3])


def with_queries(rows, embed, dream):
    """Right-padded [B, L, D] inputs: each row's embedded ids followed by the Q queries; with the [B, Q] positions
    of the queries and the [B, L] padding mask (True: padding)."""
    Q, B = dream.shape[0], len(rows)
    L = max(len(r) for r in rows) + Q
    x = torch.zeros(B, L, dream.shape[1])
    pad = torch.ones(B, L, dtype=torch.bool)
    where = torch.zeros(B, Q, dtype=torch.long)
    for b, r in enumerate(rows):
        T = len(r)
        x[b, :T] = embed(torch.tensor(r))
        x[b, T:T + Q] = dream
        pad[b, :T + Q] = False
        where[b] = torch.arange(T, T + Q)
    return x, where, pad


def at_queries(h, where):
    return h.gather(1, where[:, :, None].expand(-1, -1, h.shape[-1]))


class CausalEncoder(nn.Module):
    """[BOS, caption, Q queries] through causal pre-norm transformer layers; the condition is the projected final
    states at the queries, as DreamLLM takes its LLM's states at the dream queries."""

    def __init__(self, vocab, queries, ctx, width=128, layers=4, heads=4, ff=344, max_len=96):
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, width), nn.Embedding(max_len, width)
        self.dream = nn.Parameter(torch.randn(queries, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, ff, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers)
        self.norm, self.proj = nn.LayerNorm(width), nn.Linear(width, ctx, bias=False)

    def forward(self, rows):
        x, where, pad = with_queries(rows, self.embed, self.dream)
        L = x.shape[1]
        x = x + self.pos(torch.arange(L))[None]
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
        return self.proj(at_queries(self.norm(self.layers(x, mask=causal, src_key_padding_mask=pad)), where))


class Llama(nn.Module):
    """HF LlamaModel semantics (RMSNorm, rotate-half rotary embeddings, SwiGLU), input embeddings tied to the
    output rows as the world model's. It reads [BOS, caption, <dream_start>, Q dream queries]; the condition is
    projected from the final-norm states at the queries (equal to `dreamllm run llm` to 2e-6)."""

    def __init__(self, w, cfg, queries, ctx, fresh=False):
        super().__init__()
        self.heads, self.eps, self.theta = cfg["num_attention_heads"], cfg["rms_norm_eps"], cfg.get("rope_theta", 1e4)
        self.layers = cfg["num_hidden_layers"]
        self.w = nn.ParameterDict()
        for k, v in w.items():
            v = v.float()
            if fresh:
                v = torch.ones_like(v) if v.dim() == 1 else torch.randn_like(v) * 0.02
            self.w[k.replace(".", "_")] = nn.Parameter(v)
        width = w["model.embed_tokens.weight"].shape[1]
        self.dream = nn.Parameter(torch.randn(queries, width) * 0.02)
        self.proj = nn.Linear(width, ctx, bias=False)

    def p(self, name):
        return self.w[name.replace(".", "_")]

    def rms(self, x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.p(name)

    def forward(self, rows):
        # Causal attention never reaches the right padding, so the mask is not needed here.
        x, where, _ = with_queries(rows, self.p("model.embed_tokens.weight").__getitem__, self.dream)
        (B, L, D), H = x.shape, self.heads
        hd = D // H
        inv = 1.0 / (self.theta ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.arange(L).float()[:, None] * inv[None]
        cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)

        def rope(t):
            t1, t2 = t[..., :hd // 2], t[..., hd // 2:]
            return t * cos + torch.cat([-t2, t1], -1) * sin

        causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
        for i in range(self.layers):
            pre = f"model.layers.{i}."
            h = self.rms(x, pre + "input_layernorm.weight")
            q = rope((h @ self.p(pre + "self_attn.q_proj.weight").T).view(B, L, H, hd).transpose(1, 2))
            k = rope((h @ self.p(pre + "self_attn.k_proj.weight").T).view(B, L, H, hd).transpose(1, 2))
            v = (h @ self.p(pre + "self_attn.v_proj.weight").T).view(B, L, H, hd).transpose(1, 2)
            s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)
            o = torch.matmul(s.masked_fill(causal, float("-inf")).softmax(-1), v).transpose(1, 2).reshape(B, L, D)
            x = x + o @ self.p(pre + "self_attn.o_proj.weight").T
            h = self.rms(x, pre + "post_attention_layernorm.weight")
            g = F.silu(h @ self.p(pre + "mlp.gate_proj.weight").T) * (h @ self.p(pre + "mlp.up_proj.weight").T)
            x = x + g @ self.p(pre + "mlp.down_proj.weight").T
        return self.proj(at_queries(self.rms(x, "model.norm.weight"), where))


def llm_states(exe, model, captions, queries, work, threads, chunk=500):
    """The LLM's final-norm states for [BOS, caption, <dream_start>, Q x <im_patch>, <dream_end>]: per caption a
    [T + Q, D] tensor (caption tokens then the dream queries), as pipelines::prompt_conditions lays them out."""
    tok = CaptionIds(model)
    added = tok.added
    ids = [tok(c) for c in captions]
    out = []
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        L = max(len(x) for x in part) + queries + 2
        arr = np.zeros((len(part), L), dtype=np.int64)
        keep = np.zeros((len(part), L), dtype=np.float32)
        for i, x in enumerate(part):
            row = x + [added["<dream_start>"]] + [added["<im_patch>"]] * queries + [added["<dream_end>"]]
            arr[i, :len(row)] = row
            keep[i, :len(row)] = 1
        r = run_component(exe, "llm", model, {"input_ids": torch.from_numpy(arr),
                                              "attention_mask": torch.from_numpy(keep)}, work, threads)
        hs = r["hidden_states"]
        for i, x in enumerate(part):
            T = len(x)
            out.append(torch.cat([hs[i, :T], hs[i, T + 1:T + 1 + queries]], 0).clone())
    return out


def pad_states(states, which, queries):
    """[N, S, D] states and a [N, S] keep mask: the dream queries only, or every token and the queries."""
    if which == "queries":
        x = torch.stack([s[-queries:] for s in states])
        return x, torch.ones(x.shape[:2], dtype=torch.bool)
    S = max(s.shape[0] for s in states)
    x = torch.zeros(len(states), S, states[0].shape[1])
    m = torch.zeros(len(states), S, dtype=torch.bool)
    for i, s in enumerate(states):
        x[i, :s.shape[0]] = s
        m[i, :s.shape[0]] = True
    return x, m


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cond", choices=["cell", "slot", "queries", "tokens", "encoder", "llm"], required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("-n", type=int, default=100, help="held-out scenes per shape count")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dreamllm", default="build/bin/dreamllm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llm-init", choices=["committed", "fresh"], default="committed")
    ap.add_argument("--llm-lr-scale", type=float, default=0.3)
    ap.add_argument("--slots", type=int, default=3, help="tokens of the slot oracle (shapes, then padding)")
    ap.add_argument("--save-unet", help="write the trained UNet's state here (torch.save)")
    ap.add_argument("--load-unet", help="start from this UNet state instead of a fresh UNet")
    ap.add_argument("--freeze-unet", action="store_true", help="train only the condition path, as stage I-a/II")
    ap.add_argument("--freeze-llm", action="store_true", help="--cond llm: train only the queries and projection")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    # Latents and LLM states depend on the data and the model: the cache is keyed by both paths.
    key = hashlib.sha1(f"{os.path.abspath(a.data)}\n{os.path.abspath(a.model)}".encode()).hexdigest()[:12]
    cache = os.path.join(a.out, "..", "binding_cache", key)
    os.makedirs(cache, exist_ok=True)
    vae_cfg = json.load(open(os.path.join(a.model, "vae", "config.json")))
    scale = vae_cfg["scaling_factor"]
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    queries = cfg["plugins_init_kwargs"]["dream_embedding"]["num_dream_queries"]

    train = read_scenes(os.path.join(a.data, "train", "scenes.jsonl"))
    # Held out as `world eval-create` draws them: full scenes only (the last step of each), the first n of each count.
    test_all = [s for s in read_scenes(os.path.join(a.data, "test", "scenes.jsonl")) if s["step"] == s["steps"]]
    test = [s for s in test_all if len(s["shapes"]) == 1][:a.n] + [s for s in test_all if len(s["shapes"]) == 2][:a.n]

    lat_path = os.path.join(cache, "latents.safetensors")
    if not os.path.exists(lat_path):
        from PIL import Image
        lats = []
        for start in range(0, len(train), 1000):
            imgs = [np.asarray(Image.open(os.path.join(a.data, "train", s["image"])).convert("RGB"), np.float32)
                    for s in train[start:start + 1000]]
            x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2) / 127.5 - 1
            lats.append(run_component(a.dreamllm, "vae_encode", a.model, {"image": x.contiguous()}, cache,
                                      a.threads)["mean"] * scale)
        save(lat_path, {"latents": torch.cat(lats)})
    latents = load_safetensors(lat_path)["latents"]
    print(f"latents {tuple(latents.shape)} std {latents.std():.3f}", flush=True)

    ctx_dim = 64
    if a.cond in ("cell", "slot"):
        oracle = OracleCondition(a.cond, ctx_dim, a.slots)
        train_codes = torch.tensor([oracle.codes(s) for s in train])
        test_codes = torch.tensor([oracle.codes(s) for s in test])
        params = list(oracle.parameters())

        def condition(idx, drop, split="train"):
            c = oracle((train_codes if split == "train" else test_codes)[idx])
            c = c * (~drop)[:, None, None]
            return c, None
    elif a.cond in ("llm", "encoder"):
        # The LLM reads <dream_start> before its queries, as the C++ pipelines lay them out; the encoder does not.
        tok = CaptionIds(a.model)
        suffix = ("<dream_start>",) if a.cond == "llm" else ()
        ids = {"train": [tok(s["caption"], suffix) for s in train], "test": [tok(s["caption"], suffix) for s in test]}
        empty = tok("", suffix)
        if a.cond == "llm":
            path = Llama(load_safetensors(os.path.join(a.model, "model.safetensors")), cfg, queries, ctx_dim,
                         fresh=a.llm_init == "fresh")
            params = list(path.proj.parameters()) + [path.dream]
            llm_params = [p for n, p in path.named_parameters() if not n.startswith("proj") and n != "dream"]
        else:
            path = CausalEncoder(tok.sp.get_piece_size(), queries, ctx_dim)
            params = list(path.parameters())

        def condition(idx, drop, split="train"):
            return path([empty if d else ids[split][i] for i, d in zip(idx.tolist(), drop.tolist())]), None
    else:
        st_path = os.path.join(cache, "states.pt")
        if not os.path.exists(st_path):
            t0 = time.time()
            states = llm_states(a.dreamllm, a.model, [s["caption"] for s in train] + [s["caption"] for s in test] +
                                [""], queries, cache, a.threads)
            torch.save(states, st_path)
            print(f"LLM states in {time.time() - t0:.0f} s", flush=True)
        states = torch.load(st_path)
        x_all, m_all = pad_states(states, a.cond, queries)
        x_train, m_train = x_all[:len(train)], m_all[:len(train)]
        x_test, m_test = x_all[len(train):-1], m_all[len(train):-1]
        x_null, m_null = x_all[-1:], m_all[-1:]
        proj = nn.Linear(x_all.shape[-1], ctx_dim, bias=False)
        params = list(proj.parameters())

        def condition(idx, drop, split="train"):
            x, m = (x_train, m_train) if split == "train" else (x_test, m_test)
            x, m = x[idx].clone(), m[idx].clone()
            x[drop], m[drop] = x_null[0], m_null[0]
            return proj(x), m

    unet = UNet(ctx_dim)
    if a.load_unet:
        unet.load_state_dict(torch.load(a.load_unet))
    if a.freeze_unet:
        unet.requires_grad_(False)
    else:
        params += list(unet.parameters())
    groups = [{"params": params}]
    if a.cond == "llm" and a.freeze_llm:
        for p_ in llm_params:
            p_.requires_grad_(False)
    elif a.cond == "llm":
        groups.append({"params": llm_params, "lr": a.lr * a.llm_lr_scale})
        params = params + llm_params
    opt = torch.optim.AdamW(groups, lr=a.lr, weight_decay=0.0)
    warm = max(1, int(0.02 * a.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / (a.steps - warm))))))
    ab = alphas_cumprod()
    g = torch.Generator().manual_seed(a.seed)
    t0, run = time.time(), 0.0
    for step in range(a.steps):
        idx = torch.randint(len(train), (a.batch,), generator=g)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(1000, (a.batch,), generator=g)
        s = ab[t].sqrt()[:, None, None, None]
        r = (1 - ab[t]).sqrt()[:, None, None, None]
        drop = torch.rand(a.batch, generator=g) < 0.1
        ctx, mask = condition(idx, drop)
        v = unet(s * x0 + r * noise, t, ctx, mask)
        loss = F.mse_loss(v, s * noise - r * x0)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        run = loss.item() if step == 0 else 0.99 * run + 0.01 * loss.item()
        if (step + 1) % 250 == 0:
            print(f"step {step + 1} loss {run:.4f} ({(time.time() - t0) / (step + 1):.3f} s/step)", flush=True)

    if a.save_unet:
        torch.save(unet.state_dict(), a.save_unet)
    # DDIM, "trailing" spacing, classifier-free guidance against the dropped condition.
    unet.eval()
    pictures = []
    with torch.no_grad():
        ts = [int(round(1000 - i * 1000 / a.sample_steps)) - 1 for i in range(a.sample_steps)]
        for start in range(0, len(test), 50):
            idx = torch.arange(start, min(start + 50, len(test)))
            B = len(idx)
            c, m = condition(idx, torch.zeros(B, dtype=torch.bool), "test")
            u, um = condition(idx, torch.ones(B, dtype=torch.bool), "test")
            x = torch.randn((B,) + tuple(latents.shape[1:]), generator=torch.Generator().manual_seed(1000 + start))
            for i, t in enumerate(ts):
                tt = torch.full((B,), t)
                vc = unet(x, tt, c, m)
                vu = unet(x, tt, u, um)
                v = vu + a.cfg * (vc - vu)
                s, r = ab[t].sqrt(), (1 - ab[t]).sqrt()
                x0, eps = s * x - r * v, s * v + r * x
                prev = ts[i + 1] if i + 1 < len(ts) else -1
                ap_ = ab[prev] if prev >= 0 else torch.tensor(1.0)
                x = ap_.sqrt() * x0 + (1 - ap_).sqrt() * eps
            pictures.append(x)
    # vae_decode takes the latents as the sampler leaves them and divides by the scaling factor itself.
    img = run_component(a.dreamllm, "vae_decode", a.model, {"latents": torch.cat(pictures)}, cache, a.threads)["image"]
    from PIL import Image
    labels = {1: "one-shape", 2: "two-shape"}
    files = {n: open(os.path.join(a.out, f"{label}.jsonl"), "w") for n, label in labels.items()}
    for i, s in enumerate(test):
        rgb = ((img[i].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1) * 255
        path = os.path.join(a.out, f"{i}.png")
        Image.fromarray(np.rint(rgb).astype(np.uint8)).save(path)
        files[len(s["shapes"])].write(json.dumps({"image": os.path.abspath(path), "caption": s["caption"]}) + "\n")
    for f in files.values():
        f.close()
    print(f"trained {a.steps} steps in {time.time() - t0:.0f} s, final loss {run:.4f}", flush=True)
    for n, label in labels.items():
        print(f"== {label}", flush=True)
        subprocess.run([a.dreamllm, "world", "score", "--pairs", files[n].name], check=False)


if __name__ == "__main__":
    main()
