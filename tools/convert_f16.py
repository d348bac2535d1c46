#!/usr/bin/python3
"""Copies a model directory with every F32 tensor of its .safetensors files stored as IEEE half (F16), halving the
size of a checkpoint that is committed (models/shapes-world). The engine widens F16 weights on the fly, so the
copy runs as the original does, up to F16 rounding of the weights. Only numpy is needed.

  /usr/bin/python3 tools/convert_f16.py IN_DIR OUT_DIR

Optimizer state and checkpoints are left out; configs, tokenizer and the other files are copied as they are.
"""
import json
import os
import shutil
import struct
import sys

import numpy as np

SKIP = {"optimizer.safetensors", "trainer_state.json", "metrics.jsonl", "recipe.log"}


def convert(src, dst):
    with open(src, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    body = blob[8 + n :]
    out_header, parts, offset = {}, [], 0
    for name, info in header.items():
        if name == "__metadata__":
            out_header[name] = info
            continue
        begin, end = info["data_offsets"]
        raw = body[begin:end]
        dtype = info["dtype"]
        if dtype == "F32":
            raw = np.frombuffer(raw, dtype="<f4").astype("<f2").tobytes()
            dtype = "F16"
        out_header[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + len(raw)]}
        parts.append(raw)
        offset += len(raw)
    text = json.dumps(out_header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(parts))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    for root, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if not d.startswith("checkpoint-")]
        rel = os.path.relpath(root, src)
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for name in files:
            if name in SKIP:
                continue
            a, b = os.path.join(root, name), os.path.join(dst, rel, name)
            if name.endswith(".safetensors"):
                convert(a, b)
            else:
                shutil.copyfile(a, b)


if __name__ == "__main__":
    main()
