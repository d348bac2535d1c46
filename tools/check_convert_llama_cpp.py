#!/usr/bin/env python3
"""Round trip of `dreamllm convert` through llama.cpp itself, at Vicuna-7B widths (not a test: it needs the
node-llama-cpp peer that scripts/bench_llm.sh installs, and writes about 4 GB).

  /usr/bin/python3 tools/check_convert_llama_cpp.py [--types f16,q8_0,q4_k_m] [--layers 2] [--keep DIR]

1. bench/llm_peer/make_llama.py writes a random-weight LLaMA at Vicuna-7B widths as a Hugging Face directory and,
   independently, as the GGUF file llama.cpp's converter would write (model.gguf, F16).
2. The directory gets the tiny fixture's tokenizer files (its 428 tokens padded to 32000 by the converter) and is
   converted with `dreamllm convert` to each type.
3. The f16 file's tensors must be byte-identical to model.gguf's (names, shapes, types, q/k permutation, data).
4. llama.cpp (node-llama-cpp, bench/llm_peer/llama_cpp_peer.mjs) loads each converted file and reports the 8 most
   likely tokens after 16 prompt ids and 16 greedy tokens; dreamllm reads the same file (`dreamllm run llm`) and
   the two are printed side by side with the largest probability difference over llama.cpp's top 8.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(HERE, "fixtures"))
import safetensors_io  # noqa: E402
from make_convert_fixtures import read_gguf  # noqa: E402

CLI = os.path.join(ROOT, "build", "bin", "dreamllm")
PEER_DIR = os.path.join(ROOT, "build", "llm_peer")


def tensors_of(path):
    meta, infos, raw, data = read_gguf(path)
    size = {0: 4, 1: 2}
    out = {}
    for name, ne, t, off in infos:
        n = int(np.prod(ne)) * size.get(t, 0)
        out[name] = (ne, t, raw[data + off:data + off + n] if t in size else None)
    return out


def last_logits(model, ids, tmp):
    safetensors_io.save(os.path.join(tmp, "in.safetensors"), {"input_ids": torch.tensor([ids], dtype=torch.int64)})
    subprocess.run([CLI, "run", "llm", "--model", model, "--in", os.path.join(tmp, "in.safetensors"), "--out",
                    os.path.join(tmp, "out.safetensors")], check=True)
    b = open(os.path.join(tmp, "out.safetensors"), "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    v = json.loads(b[8:8 + n])["logits"]
    a, e = v["data_offsets"]
    return np.frombuffer(b[8 + n + a:8 + n + e], np.float32).reshape(v["shape"])[0, -1].astype(np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="f16,q8_0,q4_k_m")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--keep", help="work in this directory and keep it")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="dl_convert_check_")
    os.makedirs(work, exist_ok=True)
    try:
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "llm_peer", "make_llama.py"), work, "--layers",
                        str(args.layers)], check=True)
        hf = os.path.join(work, "hf")
        for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
            shutil.copy(os.path.join(ROOT, "tests", "fixtures", "tiny_full", f), hf)
        prompt = json.load(open(os.path.join(work, "prompt.json")))
        for t in args.types.split(","):
            out = os.path.join(work, f"c-{t}.gguf")
            subprocess.run([CLI, "convert", "-m", hf, "-o", out, "--type", t], check=True, stdout=subprocess.DEVNULL)
            if t == "f16":
                mine, theirs = tensors_of(out), tensors_of(os.path.join(work, "model.gguf"))
                same = mine.keys() == theirs.keys() and all(mine[k] == theirs[k] for k in mine)
                print(f"f16 tensors byte-identical to make_llama.py's llama.cpp file: {same}")
            peer = subprocess.run(["node", os.path.join(ROOT, "bench", "llm_peer", "llama_cpp_peer.mjs"), out,
                                   os.path.join(work, "prompt.json"), "--threads", "2", "--prefill", "64", "--decode",
                                   "4", "--reps", "1"], check=True, capture_output=True, text=True,
                                  env=dict(os.environ, NODE_LLAMA_CPP_DIR=PEER_DIR))
            check = json.loads(peer.stdout)["check"]
            logits = last_logits(out, prompt[:16], work)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            ids, greedy = list(prompt[:16]), []
            for _ in range(8):
                greedy.append(int(np.argmax(last_logits(out, ids, work))))
                ids.append(greedy[-1])
            diff = max(abs(float(p[i]) - q) for i, q in check["top"])
            same_top = [int(i) for i in np.argsort(-p)[:8]] == [i for i, _ in check["top"]]
            print(f"{t}: llama.cpp loads it; top-8 order equal: {same_top}; largest probability difference over "
                  f"llama.cpp's top 8: {diff:.4f}; greedy tokens equal: {sum(a == b for a, b in zip(greedy, check['greedy']))}/8 "
                  f"(dreamllm {greedy}, llama.cpp {check['greedy'][:8]})")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
