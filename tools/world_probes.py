#!/usr/bin/python3
"""Linear probes of a shapes-world model, the measurements behind docs/shapes_world.md.

  world_probes.py vision MODEL DATA      what the CLIP features of one patch say: the feature of the patch under a
                                         shape's centre -> its kind and colour (one ridge probe shared by all
                                         patches: position-invariant), trained on DATA/train, read on DATA/test
  world_probes.py condition MODEL DATA   what the creation condition carries and whether the UNet uses it:
                                         dream-query conditions of 1-shape captions -> colour, kind, cell, size
                                         (ridge probe), then the UNet's error on held-out pictures with their own,
                                         shuffled and empty conditions, by timestep range
  world_probes.py kind MODEL DATA [PNG]  where the kind of a drawn shape is decided: held-out one-shape pictures
                                         noised to t and denoised from there (DDIM, 10 steps, CFG 3) with their own
                                         caption and with the kind word changed, scored with `world score`; then the
                                         UNet's picture estimate from pure noise (t = 999) for five kinds at three
                                         cells, written to PNG if given
  world_probes.py binding MODEL DATA     whether the condition of a two-shape caption says which shape has which
                                         attribute: dream-query conditions of 3000 training two-shape captions ->
                                         the colour, kind and size at each occupied cell (ridge probe), read on up
                                         to 300 held-out ones (149 in the recipe's split), against the same probe on a bag of the caption's attributes,
                                         which knows every attribute but not which shape has it

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


def scenes(data, split, n, shapes=None):
    out = []
    for line in open(os.path.join(data, split, "scenes.jsonl")):
        s = json.loads(line)
        if s["step"] != s["steps"] or (shapes is not None and len(s["shapes"]) != shapes):
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


def dream_conditions(model, captions, tmp):
    """The creation conditions [N, Q, C] of captions as the pairs read them: BOS, caption, the dream-query span."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(model, "tokenizer.model"))
    cfg = json.load(open(os.path.join(model, "config.json")))
    special = cfg["special_tokens2ids_dict"]["additional_special_tokens"]
    queries = cfg["plugins_init_kwargs"]["dream_embedding"]["num_dream_queries"]
    span = [special["<dream_start>"]] + [special["<im_patch>"]] * queries + [special["<dream_end>"]]
    ids = [[cfg["bos_token_id"]] + sp.encode(c) + span for c in captions]
    width = max(map(len, ids))
    a = np.zeros((len(ids), width), np.int64)
    m = np.zeros((len(ids), width), np.float32)
    for i, x in enumerate(ids):
        a[i, :len(x)], m[i, :len(x)] = x, 1
    return run("llm", model, {"input_ids": a, "attention_mask": m}, tmp)["dream_conditions"]


def schedule(model):
    """alphas_cumprod of the model's scheduler (scaled_linear betas, rescaled to zero terminal SNR when configured,
    as diffusers' rescale_zero_terminal_snr) and its prediction type."""
    sch = json.load(open(os.path.join(model, "scheduler", "scheduler_config.json")))
    betas = np.linspace(sch["beta_start"] ** 0.5, sch["beta_end"] ** 0.5, sch["num_train_timesteps"]) ** 2
    alphas = np.cumprod(1 - betas)
    if sch.get("rescale_betas_zero_snr", False):
        r = np.sqrt(alphas)
        r = (r - r[-1]) * r[0] / (r[0] - r[-1])
        alphas = r ** 2
    return alphas, sch.get("prediction_type", "epsilon")


def latents_of(model, data, split, ss, tmp):
    x = np.array([picture(data, split, s).transpose(2, 0, 1) * 2 - 1 for s in ss], np.float32)
    vae = json.load(open(os.path.join(model, "vae", "config.json")))
    return run("vae_encode", model, {"image": x}, tmp)["mean"] * vae["scaling_factor"]


def unet(model, xt, t, cond, tmp):
    """The UNet's output for latents xt at timestep t (one for all, or one per latent)."""
    timesteps = np.broadcast_to(np.asarray(t, np.float32), (len(xt),)).copy()
    return run("unet", model, {"sample": xt.astype(np.float32), "timestep": timesteps,
                               "encoder_hidden_states": cond.astype(np.float32)}, tmp)["eps"]


def decoded(model, z, tmp):
    """Pictures [N, H, W, 3] in [0, 1] from scaled latents."""
    image = run("vae_decode", model, {"latents": z.astype(np.float32)}, tmp)["image"]
    return np.clip((image.transpose(0, 2, 3, 1) + 1) / 2, 0, 1)


def condition(model, data, tmp):
    def attributes(s):
        sh = s["shapes"][0]
        return [COLOURS.index(sh["colour"]), KINDS.index(sh["kind"]), sh["row"] * 3 + sh["col"], int(sh["size"] == "large")]

    tr, te = scenes(data, "train", 1200, shapes=1), scenes(data, "test", 150, shapes=1)
    ctr = dream_conditions(model, [s["caption"] for s in tr], tmp)
    cte = dream_conditions(model, [s["caption"] for s in te], tmp)
    ytr, yte = np.array([attributes(s) for s in tr]), np.array([attributes(s) for s in te])
    print(f"conditions {list(ctr.shape[1:])} of 1-shape captions: {len(tr)} training, {len(te)} held out")
    flat, flat_te = ctr.reshape(len(ctr), -1), cte.reshape(len(cte), -1)
    for j, (name, k) in enumerate([("colour", 6), ("kind", 5), ("cell", 9), ("size", 2)]):
        acc = (ridge(flat, ytr[:, j], flat_te, k) == yte[:, j]).mean()
        # How strongly the condition separates the attribute's classes: the distance of each class's mean
        # condition from the overall mean (over all its values), root-mean-squared over the classes.
        means = np.array([flat[ytr[:, j] == c].mean(0) for c in range(k) if (ytr[:, j] == c).any()])
        rms = np.sqrt(((means - flat.mean(0)) ** 2).sum(1).mean())
        print(f"  {name:6s} read back from the condition: {acc:.3f} (chance {1 / k:.3f}), between-class rms {rms:.2f}")

    z = latents_of(model, data, "test", te, tmp)
    alphas, prediction = schedule(model)
    rng = np.random.default_rng(0)
    empty = np.repeat(dream_conditions(model, [""], tmp), len(te), 0)
    print(f"  UNet {prediction} MSE with each picture's own / a shuffled / the empty condition:")
    for lo, hi in [(0, 300), (300, 700), (700, 1000)]:
        t = rng.integers(lo, hi, size=len(z))
        eps = rng.standard_normal(z.shape).astype(np.float32)
        a = alphas[t][:, None, None, None]
        xt = (np.sqrt(a) * z + np.sqrt(1 - a) * eps).astype(np.float32)
        target = eps if prediction == "epsilon" else np.sqrt(a) * eps - np.sqrt(1 - a) * z
        errs = []
        for c in [cte, cte[rng.permutation(len(cte))], empty]:
            errs.append(((unet(model, xt, t, c, tmp) - target) ** 2).mean())
        print(f"    t in [{lo}, {hi}): own {errs[0]:.4f}  shuffled {errs[1]:.4f}  empty {errs[2]:.4f}")


def kinds_found(pictures, captions, tmp):
    """The kind `world score` finds for the one shape of each picture ('-' when it finds none)."""
    found = []
    for i, (p, c) in enumerate(zip(pictures, captions)):
        path = os.path.join(tmp, f"kind_{i}.png")
        Image.fromarray((p * 255 + 0.5).astype(np.uint8)).save(path)
        report = subprocess.run([DREAMLLM, "world", "score", "-i", path, "-p", c], capture_output=True,
                                text=True).stdout
        # "kind  object 1  pass|FAIL expected K, found K'"; no kind line when no shape was found.
        found.append(next((line.split("found ")[-1] for line in report.splitlines() if line.startswith("kind")), "-"))
    return found


def kind(model, data, tmp, png=None, n=48, cfg_scale=3.0, steps=10):
    alphas, prediction = schedule(model)
    assert prediction == "v_prediction", "the kind probe samples v_prediction models (the world's default)"
    te = scenes(data, "test", n, shapes=1)
    truth = [s["shapes"][0]["kind"] for s in te]
    other = [KINDS[(KINDS.index(k) + 1) % len(KINDS)] for k in truth]
    own = [s["caption"] for s in te]
    changed = [c.replace(a, b) for c, a, b in zip(own, truth, other)]
    c_own, c_changed = dream_conditions(model, own, tmp), dream_conditions(model, changed, tmp)
    empty = np.repeat(dream_conditions(model, [""], tmp), len(te), 0)
    z = latents_of(model, data, "test", te, tmp)
    noise = np.random.default_rng(0).standard_normal(z.shape).astype(np.float32)

    def sample_from(t0, cond):  # DDIM (eta 0) on the v_prediction model from timestep t0 to 0, with CFG
        ts = np.round(np.linspace(t0, 0, steps + 1)).astype(int)
        x = np.sqrt(alphas[t0]) * z + np.sqrt(1 - alphas[t0]) * noise
        for i in range(steps):
            a = alphas[ts[i]]
            u = unet(model, x, ts[i], empty, tmp)
            v = u + cfg_scale * (unet(model, x, ts[i], cond, tmp) - u)
            x0, eps = np.sqrt(a) * x - np.sqrt(1 - a) * v, np.sqrt(a) * v + np.sqrt(1 - a) * x
            a_next = alphas[ts[i + 1]] if i + 1 < steps else 1.0
            x = np.sqrt(a_next) * x0 + np.sqrt(1 - a_next) * eps
        return decoded(model, x, tmp)

    print(f"{len(te)} held-out one-shape pictures noised to t and denoised (DDIM {steps} steps, CFG {cfg_scale:g}):")
    for t0 in [10, 100, 200, 300, 400, 700, 999]:
        kept = np.mean([a == b for a, b in zip(kinds_found(sample_from(t0, c_own), own, tmp), truth)])
        moved = np.mean([a == b for a, b in zip(kinds_found(sample_from(t0, c_changed), changed, tmp), other)])
        print(f"  from t = {t0:3d}: own caption keeps the kind {kept:.2f}; kind word changed: the new kind {moved:.2f}")

    captions = [f"a large red {k} at the {c}" for c in ["top left", "center", "bottom right"] for k in KINDS]
    cond = dream_conditions(model, captions, tmp)
    side = json.load(open(os.path.join(model, "unet", "config.json")))["sample_size"]
    x = np.repeat(np.random.default_rng(1).standard_normal((1, z.shape[1], side, side)).astype(np.float32),
                  len(captions), 0)
    estimate = decoded(model, -unet(model, x, len(alphas) - 1, cond, tmp), tmp)  # x0 = -v at zero SNR
    found = kinds_found(estimate, captions, tmp)
    print("picture estimates from pure noise, 'a large red KIND at CELL': kinds found " +
          ", ".join(f"{k}->{f}" for k, f in zip([c.split()[3] for c in captions], found)))
    if png:
        tile = 64
        sheet = Image.new("RGB", (len(captions) * (tile + 2), tile), (128, 128, 128))
        for i, p in enumerate(estimate):
            sheet.paste(Image.fromarray((p * 255 + 0.5).astype(np.uint8)).resize((tile, tile), Image.NEAREST),
                        (i * (tile + 2), 0))
        sheet.save(png)


def binding(model, data, tmp):
    def conditions(ss):
        chunks = [dream_conditions(model, [s["caption"] for s in ss[i:i + 500]], tmp) for i in range(0, len(ss), 500)]
        return np.concatenate(chunks).reshape(len(ss), -1)

    def at_cells(ss, attribute, values):  # [N, 9]: 0 for an empty cell, 1 + the value's index otherwise
        y = np.zeros((len(ss), 9), int)
        for i, s in enumerate(ss):
            for sh in s["shapes"]:
                y[i, sh["row"] * 3 + sh["col"]] = 1 + values.index(sh[attribute])
        return y

    def bag(ss):  # counts of each colour, kind and size, and the occupied cells: no attribute tied to a shape
        nc, nk = len(COLOURS), len(KINDS)
        x = np.zeros((len(ss), nc + nk + 2 + 9))
        for i, s in enumerate(ss):
            for sh in s["shapes"]:
                x[i, COLOURS.index(sh["colour"])] += 1
                x[i, nc + KINDS.index(sh["kind"])] += 1
                x[i, nc + nk + int(sh["size"] == "large")] += 1
                x[i, nc + nk + 2 + sh["row"] * 3 + sh["col"]] = 1
        return x

    tr, te = scenes(data, "train", 3000, shapes=2), scenes(data, "test", 300, shapes=2)
    features = {"condition": (conditions(tr), conditions(te)), "bag of attributes": (bag(tr), bag(te))}
    print(f"two-shape captions: {len(tr)} training, {len(te)} held out; accuracy at the occupied cells")
    for attribute, values in [("colour", COLOURS), ("kind", KINDS), ("size", ["small", "large"])]:
        ytr, yte = at_cells(tr, attribute, values), at_cells(te, attribute, values)
        for name, (xtr, xte) in features.items():
            right = total = 0
            for cell in range(9):
                occupied = yte[:, cell] > 0
                if occupied.any():
                    guess = ridge(xtr, ytr[:, cell], xte, len(values) + 1)
                    right += (guess == yte[:, cell])[occupied].sum()
                    total += occupied.sum()
            print(f"  {attribute:6s} from the {name:17s}: {right / total:.3f}")


def main():
    probes = {"vision": vision, "condition": condition, "kind": kind, "binding": binding}
    if len(sys.argv) not in (4, 5) or sys.argv[1] not in probes or (len(sys.argv) == 5 and sys.argv[1] != "kind"):
        sys.exit(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        probes[sys.argv[1]](sys.argv[2], sys.argv[3], tmp, *sys.argv[4:])


if __name__ == "__main__":
    main()
