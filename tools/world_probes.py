#!/usr/bin/python3
"""Linear probes of a shapes-world model, the measurements behind docs/shapes_world.md.

  world_probes.py vision MODEL DATA      what the CLIP features of one patch say: the feature of the patch under a
                                         shape's centre -> its kind and colour (one ridge probe shared by all
                                         patches: position-invariant), trained on DATA/train, read on DATA/test
  world_probes.py condition MODEL DATA   what the creation condition carries and whether the UNet uses it:
                                         dream-query conditions of 1-shape captions -> colour, kind, cell, size
                                         (ridge probe), then the UNet's noise-prediction error on held-out pictures
                                         with their own, shuffled and empty conditions, by timestep range

Runs `dreamllm run` (build/bin/dreamllm, or $DREAMLLM) on tensor files; needs numpy, PIL and sentencepiece
(Debian's python3-numpy, python3-pil, python3-sentencepiece).
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DREAMLLM = os.environ.get("DREAMLLM", os.path.join(ROOT, "build", "bin", "dreamllm"))
KINDS = ["circle", "square", "triangle", "diamond", "cross"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])
NP = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + s:8 + n + e], dtype=NP[v["dtype"]]).reshape(v["shape"])
    return out


def save(path, tensors):
    header, blobs, off = {}, [], 0
    names = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}
    for k, a in tensors.items():
        a = np.ascontiguousarray(a)
        b = a.tobytes()
        header[k] = {"dtype": names[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def run(component, model, tensors, tmp):
    src, dst = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
    save(src, tensors)
    subprocess.run([DREAMLLM, "run", component, "--model", model, "--in", src, "--out", dst], check=True,
                   capture_output=True)
    return load(dst)


def scenes(data, split, n, one_shape=False):
    out = []
    for line in open(os.path.join(data, split, "scenes.jsonl")):
        s = json.loads(line)
        if s["step"] != s["steps"] or (one_shape and len(s["shapes"]) != 1):
            continue
        out.append(s)
        if len(out) >= n:
            break
    return out


def picture(data, split, s):
    return np.asarray(Image.open(os.path.join(data, split, s["image"])).convert("RGB"), dtype=np.float64) / 255.0


def ridge(train_x, train_y, test_x, classes, lam=10.0):
    """One-vs-rest ridge regression on standardised features; returns the argmax predictions on test_x."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a = np.c_[(train_x - mu) / sd, np.ones(len(train_x))]
    b = np.c_[(test_x - mu) / sd, np.ones(len(test_x))]
    y = -np.ones((len(train_y), classes))
    y[np.arange(len(train_y)), train_y] = 1
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y)
    return (b @ w).argmax(1)


def vision(model, data, tmp):
    cfg = json.load(open(os.path.join(model, "clip_vision", "config.json")))
    patch, size = cfg["patch_size"], cfg["image_size"]
    grid = size // patch

    def rows(split, n):
        ss = scenes(data, split, n)
        px = np.array([((picture(data, split, s) - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1) for s in ss], np.float32)
        feats = run("clip", model, {"pixel_values": px}, tmp)["clip_features"]
        x, kind, colour = [], [], []
        for f, s in zip(feats, ss):
            for sh in s["shapes"]:
                x0, y0, x1, y1 = sh["bbox"]
                r, c = min(int((y0 + y1) / 2 // patch), grid - 1), min(int((x0 + x1) / 2 // patch), grid - 1)
                x.append(f[r * grid + c])
                kind.append(KINDS.index(sh["kind"]))
                colour.append(COLOURS.index(sh["colour"]))
        return np.array(x), np.array(kind), np.array(colour)

    xtr, ktr, ctr = rows("train", 1500)
    xte, kte, cte = rows("test", 200)
    print(f"vision tower: {patch} px patches ({grid} x {grid}), {len(xtr)} training shapes, {len(xte)} held out")
    for name, ytr, yte, k in [("kind", ktr, kte, len(KINDS)), ("colour", ctr, cte, len(COLOURS))]:
        acc = (ridge(xtr, ytr, xte, k) == yte).mean()
        print(f"  {name:7s} from the patch under the shape: {acc:.3f} (majority {np.bincount(yte).max() / len(yte):.3f})")


def condition(model, data, tmp):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(model, "tokenizer.model"))
    cfg = json.load(open(os.path.join(model, "config.json")))
    special = cfg["special_tokens2ids_dict"]["additional_special_tokens"]
    queries = cfg["plugins_init_kwargs"]["dream_embedding"]["num_dream_queries"]
    span = [special["<dream_start>"]] + [special["<im_patch>"]] * queries + [special["<dream_end>"]]

    def conditions(captions):
        ids = [[cfg["bos_token_id"]] + sp.encode(c) + span for c in captions]
        width = max(map(len, ids))
        a = np.zeros((len(ids), width), np.int64)
        m = np.zeros((len(ids), width), np.float32)
        for i, x in enumerate(ids):
            a[i, :len(x)], m[i, :len(x)] = x, 1
        return run("llm", model, {"input_ids": a, "attention_mask": m}, tmp)["dream_conditions"]

    def attributes(s):
        sh = s["shapes"][0]
        return [COLOURS.index(sh["colour"]), KINDS.index(sh["kind"]), sh["row"] * 3 + sh["col"], int(sh["size"] == "large")]

    tr, te = scenes(data, "train", 1200, True), scenes(data, "test", 150, True)
    ctr, cte = conditions([s["caption"] for s in tr]), conditions([s["caption"] for s in te])
    ytr, yte = np.array([attributes(s) for s in tr]), np.array([attributes(s) for s in te])
    print(f"conditions {list(ctr.shape[1:])} of 1-shape captions: {len(tr)} training, {len(te)} held out")
    for j, (name, k) in enumerate([("colour", 6), ("kind", 5), ("cell", 9), ("size", 2)]):
        acc = (ridge(ctr.reshape(len(ctr), -1), ytr[:, j], cte.reshape(len(cte), -1), k) == yte[:, j]).mean()
        print(f"  {name:6s} read back from the condition: {acc:.3f} (chance {1 / k:.3f})")

    x = np.array([picture(data, "test", s).transpose(2, 0, 1) * 2 - 1 for s in te], np.float32)
    vae = json.load(open(os.path.join(model, "vae", "config.json")))
    z = run("vae_encode", model, {"image": x}, tmp)["mean"] * vae["scaling_factor"]
    sch = json.load(open(os.path.join(model, "scheduler", "scheduler_config.json")))
    betas = np.linspace(sch["beta_start"] ** 0.5, sch["beta_end"] ** 0.5, sch["num_train_timesteps"]) ** 2
    alphas = np.cumprod(1 - betas)
    rng = np.random.default_rng(0)
    empty = np.repeat(conditions([""]), len(te), 0)
    print("  UNet noise-prediction MSE with each picture's own / a shuffled / the empty condition:")
    for lo, hi in [(0, 300), (300, 700), (700, 1000)]:
        t = rng.integers(lo, hi, size=len(z))
        eps = rng.standard_normal(z.shape).astype(np.float32)
        a = alphas[t][:, None, None, None]
        xt = (np.sqrt(a) * z + np.sqrt(1 - a) * eps).astype(np.float32)
        errs = []
        for c in [cte, cte[rng.permutation(len(cte))], empty]:
            out = run("unet", model, {"sample": xt, "timestep": t.astype(np.float32),
                                      "encoder_hidden_states": c.astype(np.float32)}, tmp)["eps"]
            errs.append(((out - eps) ** 2).mean())
        print(f"    t in [{lo}, {hi}): own {errs[0]:.4f}  shuffled {errs[1]:.4f}  empty {errs[2]:.4f}")


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("vision", "condition"):
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        (vision if sys.argv[1] == "vision" else condition)(sys.argv[2], sys.argv[3], tmp)


if __name__ == "__main__":
    main()
