#!/usr/bin/env python3
"""One random-weight LLaMA in the two forms the LLM benchmark's engines read, written from the same numbers.

  /usr/bin/python3 bench/llm_peer/make_llama.py OUT_DIR [--layers N] [--shape vicuna-7b|tinyllama-1.1b]

OUT_DIR/hf/       config.json + model.safetensors in the Hugging Face layout (what dreamllm reads), matrices F16,
                  norms F32
OUT_DIR/model.gguf the same weights for llama.cpp: GGUF v3, llama.cpp's tensor names, q/k rows permuted as
                  llama.cpp's converter does (its rotary embedding pairs neighbouring dimensions where HF's pairs
                  the two halves), and a LLaMA-style vocabulary (<unk>, <s>, </s>, the 256 byte pieces, then
                  made-up words) so that llama.cpp accepts the file; the benchmark feeds token ids, never text
OUT_DIR/prompt.json 512 token ids both engines evaluate

The default shape is Vicuna-7B's widths (DreamLLM's LLM) with 8 of its 32 layers: every matrix has the shape it has
in the real model, so per-layer speed is the real model's, in a 3.6 GB file. --layers 32 writes the whole 7B shape.
Weights are N(0, 0.02) as LLaMA initialises them, except lm_head, whose larger spread makes the next-token
distribution peaked, so the two engines' top tokens can be compared (a flat distribution would tie everywhere).
"""
import argparse
import json
import os
import struct

import numpy as np

SHAPES = {
    "vicuna-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32),
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4),
}
VOCAB = 32000
CONTEXT = 2048
EPS = 1e-6


def tensors(cfg):
    """(HF name, GGUF name, HF shape, kind) in file order; kind picks the initialisation and the stored type."""
    h, f, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", "token_embd.weight", (VOCAB, h), "matrix")]
    for i in range(L):
        p, g = f"model.layers.{i}.", f"blk.{i}."
        out += [
            (p + "input_layernorm.weight", g + "attn_norm.weight", (h,), "norm"),
            (p + "self_attn.q_proj.weight", g + "attn_q.weight", (h, h), "q"),
            (p + "self_attn.k_proj.weight", g + "attn_k.weight", (kv, h), "k"),
            (p + "self_attn.v_proj.weight", g + "attn_v.weight", (kv, h), "matrix"),
            (p + "self_attn.o_proj.weight", g + "attn_output.weight", (h, h), "matrix"),
            (p + "post_attention_layernorm.weight", g + "ffn_norm.weight", (h,), "norm"),
            (p + "mlp.gate_proj.weight", g + "ffn_gate.weight", (f, h), "matrix"),
            (p + "mlp.up_proj.weight", g + "ffn_up.weight", (f, h), "matrix"),
            (p + "mlp.down_proj.weight", g + "ffn_down.weight", (h, f), "matrix"),
        ]
    out += [("model.norm.weight", "output_norm.weight", (h,), "norm"),
            ("lm_head.weight", "output.weight", (VOCAB, h), "head")]
    return out


def values(index, shape, kind, hidden):
    rng = np.random.default_rng(1000 + index)
    if kind == "norm":
        return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    std = 4.0 / np.sqrt(hidden) if kind == "head" else 0.02
    return (std * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)


def permute_rows(w, heads):
    """llama.cpp's converter: rows of each head reordered from (half, pair) to (pair, half)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_string(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


U32, I32, F32, STRING, ARRAY = 4, 5, 6, 8, 9


def kv(key, type_id, payload):
    return gguf_string(key) + struct.pack("<I", type_id) + payload


def vocabulary():
    tokens, types = ["<unk>", "<s>", "</s>"], [2, 3, 3]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    while len(tokens) < VOCAB:
        tokens.append(f"\u2581w{len(tokens)}")
        types.append(1)
    scores = [0.0] * 259 + [-float(i) for i in range(VOCAB - 259)]
    return tokens, scores, types


def write(out_dir, cfg):
    h = cfg["hidden_size"]
    items = tensors(cfg)
    align = 32

    # Headers first (both formats put every offset before the data), then the data of each tensor once.
    st_header, st_offset = {}, 0
    infos, g_offset = [], 0
    for hf_name, gg_name, shape, kind in items:
        stored = np.float32 if kind == "norm" else np.float16
        nbytes = int(np.prod(shape)) * np.dtype(stored).itemsize
        st_header[hf_name] = {"dtype": "F32" if stored == np.float32 else "F16", "shape": list(shape),
                              "data_offsets": [st_offset, st_offset + nbytes]}
        st_offset += nbytes
        ggml_type = 0 if stored == np.float32 else 1
        dims = list(reversed(shape))  # ggml: innermost first
        infos.append(gguf_string(gg_name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
                     + struct.pack("<I", ggml_type) + struct.pack("<Q", g_offset))
        g_offset += nbytes + (-nbytes) % align

    tokens, scores, types = vocabulary()
    hd = h // cfg["num_attention_heads"]
    meta = [
        kv("general.architecture", STRING, gguf_string("llama")),
        kv("general.name", STRING, gguf_string("dreamllm-bench-random-llama")),
        kv("general.file_type", U32, struct.pack("<I", 1)),  # mostly F16
        kv("general.alignment", U32, struct.pack("<I", align)),
        kv("llama.context_length", U32, struct.pack("<I", CONTEXT)),
        kv("llama.embedding_length", U32, struct.pack("<I", h)),
        kv("llama.block_count", U32, struct.pack("<I", cfg["num_hidden_layers"])),
        kv("llama.feed_forward_length", U32, struct.pack("<I", cfg["intermediate_size"])),
        kv("llama.rope.dimension_count", U32, struct.pack("<I", hd)),
        kv("llama.rope.freq_base", F32, struct.pack("<f", 10000.0)),
        kv("llama.attention.head_count", U32, struct.pack("<I", cfg["num_attention_heads"])),
        kv("llama.attention.head_count_kv", U32, struct.pack("<I", cfg["num_key_value_heads"])),
        kv("llama.attention.layer_norm_rms_epsilon", F32, struct.pack("<f", EPS)),
        kv("tokenizer.ggml.model", STRING, gguf_string("llama")),
        kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, VOCAB) + b"".join(map(gguf_string, tokens))),
        kv("tokenizer.ggml.scores", ARRAY, struct.pack("<IQ", F32, VOCAB) + struct.pack(f"<{VOCAB}f", *scores)),
        kv("tokenizer.ggml.token_type", ARRAY, struct.pack("<IQ", I32, VOCAB) + struct.pack(f"<{VOCAB}i", *types)),
        kv("tokenizer.ggml.bos_token_id", U32, struct.pack("<I", 1)),
        kv("tokenizer.ggml.eos_token_id", U32, struct.pack("<I", 2)),
        kv("tokenizer.ggml.unknown_token_id", U32, struct.pack("<I", 0)),
    ]
    g_head = b"GGUF" + struct.pack("<I", 3) + struct.pack("<QQ", len(infos), len(meta)) + b"".join(meta) + \
        b"".join(infos)
    g_head += b"\0" * ((-len(g_head)) % align)
    st_json = json.dumps(st_header, separators=(",", ":")).encode()
    st_json += b" " * ((-len(st_json)) % 8)

    os.makedirs(os.path.join(out_dir, "hf"), exist_ok=True)
    config = dict(cfg, architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=VOCAB,
                  max_position_embeddings=CONTEXT, rms_norm_eps=EPS, rope_theta=10000.0, hidden_act="silu",
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, torch_dtype="float16")
    with open(os.path.join(out_dir, "hf", "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "hf", "model.safetensors"), "wb") as st, \
            open(os.path.join(out_dir, "model.gguf"), "wb") as gg:
        st.write(struct.pack("<Q", len(st_json)) + st_json)
        gg.write(g_head)
        for index, (hf_name, gg_name, shape, kind) in enumerate(items):
            w = values(index, shape, kind, h)
            st.write(w.tobytes())
            if kind == "q":
                w = permute_rows(w, cfg["num_attention_heads"])
            elif kind == "k":
                w = permute_rows(w, cfg["num_key_value_heads"])
            b = w.tobytes()
            gg.write(b + b"\0" * ((-len(b)) % align))

    rng = np.random.default_rng(7)
    prompt = [1] + rng.integers(259, VOCAB, size=511).tolist()
    with open(os.path.join(out_dir, "prompt.json"), "w") as f:
        json.dump(prompt, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="vicuna-7b")
    ap.add_argument("--layers", type=int, default=8, help="decoder layers (default 8; 0: the shape's own)")
    a = ap.parse_args()
    cfg = dict(SHAPES[a.shape])
    if a.layers:
        cfg["num_hidden_layers"] = a.layers
    write(a.out_dir, cfg)
    print(f"wrote {a.out_dir}: {a.shape} widths, {cfg['num_hidden_layers']} layers")


if __name__ == "__main__":
    main()
