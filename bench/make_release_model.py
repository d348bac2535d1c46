#!/usr/bin/env python3
"""A random-weight model directory in the official DreamLLM-7B release layout, for whole-system benchmarks.

Usage: /usr/bin/python3 bench/make_release_model.py OUT [--layers N] [--seed S]

Writes OUT/ with the release's file set (shared/docs/dreamllm-architecture.md section 5, shared/docs/design.md
section 2), as safetensors instead of the release's pickles (the loader takes either):
  config.json                          Vicuna-7B LLaMA fields, vocab 32008, special_tokens2ids_dict,
                                       plugins_init_kwargs (64 dream queries, select_layer -2)
  model.safetensors                    F16 LLM: hidden 4096, 32 layers (--layers N), 32 heads, FFN 11008,
                                       untied lm_head
  clip_vision_embedding.safetensors    F16 CLIP ViT-L/14-224 vision tower + projector [4096, 1024] + bias
  dream_embedding.safetensors          F16 dream_queries [1, 64, 4096]
  stable_diffusion_head.safetensors    F16 unet.* + vae.* (diffusers names, SD 2.1-base shapes) +
                                       projector.projector.weight [1024, 4096]
  tokenizer.model, added_tokens.json, special_tokens_map.json, tokenizer_config.json
No clip_vision/, unet/, vae/ or scheduler/ configs: the built-in CLIP ViT-L/14 and SD 2.1-base defaults apply.

The tensor names and shapes follow src/io/checkpoint_layout.cpp (the loader's layout check). Matrices, convolutions,
embeddings and non-norm biases are N(0, 0.02), norm weights 1 and norm biases 0, drawn from one seeded numpy
generator in file order. Each file is written tensor by tensor in chunks, so memory stays near one chunk even for the
13.5 GB LLM.

Tokenizer: no 32000-piece Vicuna tokenizer.model is available offline, so the 420-piece SentencePiece model of
tests/fixtures/tokenizer is extended with 31580 never-matching filler pieces (NORMAL pieces with a very low score)
to the release's 32000 pieces; DreamLLM's 8 added tokens then take the release's ids 32000..32007. Ids 0..419 and
the encoding of ordinary text are those of the fixture tokenizer.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER_DIR = os.path.normpath(os.path.join(HERE, "..", "tests", "fixtures", "tokenizer"))

SP_PIECES = 32000
ADDED = ["[PAD]", "<im_start>", "<dream_end>", "<dream_start>", "<im_patch>", "<im_end>", "<image>", "<dream>"]
VOCAB = SP_PIECES + len(ADDED)
D, FFN, HEADS, LAYERS = 4096, 11008, 32, 32
Q = 64
CHUNK = 1 << 24  # elements drawn at once


# ---------------------------------------------------------------------------------------------- layouts
# Python twins of src/io/checkpoint_layout.cpp's builders, with the defaults of src/io/config.h.
class Layout:
    def __init__(self, prefix=""):
        self.prefix, self.items = prefix, []

    def add(self, name, shape):
        self.items.append((self.prefix + name, tuple(shape)))

    def linear(self, p, out_f, in_f, bias=True):
        self.add(p + ".weight", (out_f, in_f))
        if bias:
            self.add(p + ".bias", (out_f,))

    def conv(self, p, out_c, in_c, k):
        self.add(p + ".weight", (out_c, in_c, k, k))
        self.add(p + ".bias", (out_c,))

    def norm(self, p, c):
        self.add(p + ".weight", (c,))
        self.add(p + ".bias", (c,))

    def resnet(self, p, in_c, out_c, temb):
        self.norm(p + ".norm1", in_c)
        self.conv(p + ".conv1", out_c, in_c, 3)
        if temb > 0:
            self.linear(p + ".time_emb_proj", out_c, temb)
        self.norm(p + ".norm2", out_c)
        self.conv(p + ".conv2", out_c, out_c, 3)
        if in_c != out_c:
            self.conv(p + ".conv_shortcut", out_c, in_c, 1)

    def transformer(self, p, c, cross):  # one BasicTransformerBlock, linear proj_in/proj_out (SD 2.x)
        self.norm(p + ".norm", c)
        self.linear(p + ".proj_in", c, c)
        b = p + ".transformer_blocks.0"
        self.norm(b + ".norm1", c)
        for m in (".attn1.to_q", ".attn1.to_k", ".attn1.to_v"):
            self.linear(b + m, c, c, False)
        self.linear(b + ".attn1.to_out.0", c, c)
        self.norm(b + ".norm2", c)
        self.linear(b + ".attn2.to_q", c, c, False)
        self.linear(b + ".attn2.to_k", c, cross, False)
        self.linear(b + ".attn2.to_v", c, cross, False)
        self.linear(b + ".attn2.to_out.0", c, c)
        self.norm(b + ".norm3", c)
        self.linear(b + ".ff.net.0.proj", c * 8, c)
        self.linear(b + ".ff.net.2", c, c * 4)
        self.linear(p + ".proj_out", c, c)

    def vae_attention(self, p, c):
        self.norm(p + ".group_norm", c)
        for m in (".to_q", ".to_k", ".to_v", ".to_out.0"):
            self.linear(p + m, c, c)


def llm_layout(layers):
    b = Layout()
    b.add("model.embed_tokens.weight", (VOCAB, D))
    for l in range(layers):
        p = f"model.layers.{l}"
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            b.linear(f"{p}.self_attn.{m}", D, D, False)
        b.linear(p + ".mlp.gate_proj", FFN, D, False)
        b.linear(p + ".mlp.up_proj", FFN, D, False)
        b.linear(p + ".mlp.down_proj", D, FFN, False)
        b.add(p + ".input_layernorm.weight", (D,))
        b.add(p + ".post_attention_layernorm.weight", (D,))
    b.add("model.norm.weight", (D,))
    b.add("lm_head.weight", (VOCAB, D))
    return b.items


def clip_layout():  # CLIP ViT-L/14 at 224 px
    cd, ci, cl, patch, image = 1024, 4096, 24, 14, 224
    b = Layout("clip_vision_model.")
    e = "vision_model.embeddings"
    b.add(e + ".class_embedding", (cd,))
    b.add(e + ".patch_embedding.weight", (cd, 3, patch, patch))
    b.add(e + ".position_embedding.weight", ((image // patch) ** 2 + 1, cd))
    b.norm("vision_model.pre_layrnorm", cd)
    for l in range(cl):
        p = f"vision_model.encoder.layers.{l}"
        for m in (".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj", ".self_attn.out_proj"):
            b.linear(p + m, cd, cd)
        b.norm(p + ".layer_norm1", cd)
        b.linear(p + ".mlp.fc1", ci, cd)
        b.linear(p + ".mlp.fc2", cd, ci)
        b.norm(p + ".layer_norm2", cd)
    b.norm("vision_model.post_layernorm", cd)
    b.prefix = ""
    b.linear("projector.projector", D, cd)
    return b.items


def unet_layout(b):  # SD 2.1-base UNet2DConditionModel
    ch, cross, temb = [320, 640, 1280, 1280], 1024, 1280
    down_attn, up_attn = [True, True, True, False], [False, True, True, True]
    b.conv("conv_in", ch[0], 4, 3)
    b.linear("time_embedding.linear_1", temb, ch[0])
    b.linear("time_embedding.linear_2", temb, temb)
    out_c = ch[0]
    for i in range(4):
        in_c, out_c = out_c, ch[i]
        p = f"down_blocks.{i}"
        for j in range(2):
            b.resnet(f"{p}.resnets.{j}", in_c if j == 0 else out_c, out_c, temb)
            if down_attn[i]:
                b.transformer(f"{p}.attentions.{j}", out_c, cross)
        if i < 3:
            b.conv(p + ".downsamplers.0.conv", out_c, out_c, 3)
    b.resnet("mid_block.resnets.0", ch[3], ch[3], temb)
    b.transformer("mid_block.attentions.0", ch[3], cross)
    b.resnet("mid_block.resnets.1", ch[3], ch[3], temb)
    rev = ch[::-1]
    prev = rev[0]
    for i in range(4):
        o, skip_in = rev[i], rev[min(i + 1, 3)]
        p = f"up_blocks.{i}"
        for j in range(3):
            res_skip = skip_in if j == 2 else o
            res_in = prev if j == 0 else o
            b.resnet(f"{p}.resnets.{j}", res_in + res_skip, o, temb)
            if up_attn[i]:
                b.transformer(f"{p}.attentions.{j}", o, cross)
        if i < 3:
            b.conv(p + ".upsamplers.0.conv", o, o, 3)
        prev = o
    b.norm("conv_norm_out", ch[0])
    b.conv("conv_out", 4, ch[0], 3)


def vae_layout(b):  # SD 2.1 AutoencoderKL
    ch = [128, 256, 512, 512]
    top = ch[-1]

    def mid(p):
        b.resnet(p + ".resnets.0", top, top, 0)
        b.vae_attention(p + ".attentions.0", top)
        b.resnet(p + ".resnets.1", top, top, 0)

    b.conv("encoder.conv_in", ch[0], 3, 3)
    out_c = ch[0]
    for i in range(4):
        in_c, out_c = out_c, ch[i]
        p = f"encoder.down_blocks.{i}"
        for j in range(2):
            b.resnet(f"{p}.resnets.{j}", in_c if j == 0 else out_c, out_c, 0)
        if i < 3:
            b.conv(p + ".downsamplers.0.conv", out_c, out_c, 3)
    mid("encoder.mid_block")
    b.norm("encoder.conv_norm_out", top)
    b.conv("encoder.conv_out", 8, top, 3)
    b.conv("quant_conv", 8, 8, 1)
    b.conv("post_quant_conv", 4, 4, 1)
    b.conv("decoder.conv_in", top, 4, 3)
    mid("decoder.mid_block")
    rev = ch[::-1]
    prev = rev[0]
    for i in range(4):
        o = rev[i]
        p = f"decoder.up_blocks.{i}"
        for j in range(3):
            b.resnet(f"{p}.resnets.{j}", prev if j == 0 else o, o, 0)
        if i < 3:
            b.conv(p + ".upsamplers.0.conv", o, o, 3)
        prev = o
    b.norm("decoder.conv_norm_out", ch[0])
    b.conv("decoder.conv_out", 3, ch[0], 3)


def head_layout():
    b = Layout("unet.")
    unet_layout(b)
    b.prefix = "vae."
    vae_layout(b)
    b.prefix = ""
    b.add("projector.projector.weight", (1024, D))
    return b.items


# ---------------------------------------------------------------------------------------------- writing
def is_norm(name):
    last = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
    return "norm" in last or "layrnorm" in last


def write_safetensors(path, layout, rng):
    """Streams N(0, 0.02) F16 tensors (norms 1 / 0) to a safetensors file without holding a whole tensor."""
    header, offset = {}, 0
    for name, shape in layout:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt", "generator": "bench/make_release_model.py"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, shape in layout:
            count = int(np.prod(shape))
            if is_norm(name):
                value = 1.0 if name.endswith(".weight") else 0.0
                f.write(np.full(count, value, dtype=np.float16).tobytes())
                continue
            done = 0
            while done < count:
                k = min(CHUNK, count - done)
                x = rng.standard_normal(k, dtype=np.float32)
                x *= 0.02
                f.write(x.astype(np.float16).tobytes())
                done += k
    os.replace(tmp, path)
    return offset + 8 + len(h)


# ---------------------------------------------------------------------------------------------- tokenizer
def _varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def extend_sentencepiece(model, total):
    """Appends NORMAL filler pieces to a SentencePiece ModelProto (field 1 = repeated SentencePiece{1 piece,
    2 score, 3 type}) until it holds `total` pieces; the new pieces go right after the last existing one."""
    i, last_piece_end, pieces = 0, None, 0
    while i < len(model):
        key, j = _read_varint(model, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, j = _read_varint(model, j)
        elif wire == 1:
            j += 8
        elif wire == 2:
            n, j = _read_varint(model, j)
            j += n
        elif wire == 5:
            j += 4
        else:
            raise ValueError(f"tokenizer.model: unexpected wire type {wire}")
        if field == 1:
            pieces += 1
            last_piece_end = j
        i = j
    assert last_piece_end is not None and pieces <= total, pieces
    extra = bytearray()
    for n in range(total - pieces):
        text = f"\u2581filler{n:05d}".encode()
        body = b"\x0a" + _varint(len(text)) + text + b"\x15" + struct.pack("<f", -1e6 - n) + b"\x18\x01"
        extra += b"\x0a" + _varint(len(body)) + body
    return model[:last_piece_end] + bytes(extra) + model[last_piece_end:], pieces


def write_tokenizer(out):
    with open(os.path.join(TOKENIZER_DIR, "tokenizer.model"), "rb") as f:
        model, base = extend_sentencepiece(f.read(), SP_PIECES)
    with open(os.path.join(out, "tokenizer.model"), "wb") as f:
        f.write(model)
    ids = {tok: SP_PIECES + k for k, tok in enumerate(ADDED)}
    with open(os.path.join(TOKENIZER_DIR, "added_tokens.json")) as f:
        fixture = json.load(f)
    assert sorted(fixture, key=fixture.get) == ADDED and fixture["[PAD]"] == base, (fixture, base)
    with open(os.path.join(out, "added_tokens.json"), "w") as f:
        json.dump(ids, f, indent=2)
    with open(os.path.join(TOKENIZER_DIR, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    cfg["added_tokens_decoder"] = {str(int(k) + SP_PIECES - base if int(k) >= base else int(k)): v
                                   for k, v in cfg["added_tokens_decoder"].items()}
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(TOKENIZER_DIR, "special_tokens_map.json")) as f:
        special_map = f.read()
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        f.write(special_map)
    return ids


def config(layers, ids):
    return {
        "architectures": ["DreamLLMForCausalMLM"], "model_type": "dreamllm", "vocab_size": VOCAB,
        "hidden_size": D, "intermediate_size": FFN, "num_hidden_layers": layers, "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048,
        "hidden_act": "silu", "initializer_range": 0.02, "tie_word_embeddings": False, "torch_dtype": "float16",
        # The release's stale LLaMA-1 values; the real ids are in special_tokens2ids_dict.
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": -1,
        "loss_weight_lm": 1.0, "loss_weight_vm": 10.0, "loss_scale_schedule": "none",
        "special_tokens2ids_dict": {"<s>": 1, "</s>": 2, "<unk>": 0, "[PAD]": ids["[PAD]"],
                                    "additional_special_tokens": {k: v for k, v in ids.items() if k != "[PAD]"}},
        "plugins_init_kwargs": {
            "clip_vision_embedding": {"_target_": "omni.models.dreamllm.modeling_plugins.CLIPVisionEmbedding",
                                      "pretrained_model_name_or_path": "none", "select_layer": -2,
                                      "embed_hidden_size": D},
            "dream_embedding": {"_target_": "omni.models.dreamllm.modeling_plugins.DreamEmbedding",
                                "pretrained_model_name_or_path": "none", "num_dream_queries": Q,
                                "embed_hidden_size": D},
            "stable_diffusion_head": {"_target_": "omni.models.dreamllm.modeling_plugins.StableDiffusionHead",
                                      "pretrained_model_name_or_path": "none"},
        },
        "plugins_type": {"clip_vision_embedding": "embedding", "dream_embedding": "embedding",
                         "stable_diffusion_head": "head"},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=LAYERS, help="LLM decoder layers (default 32, the 7B)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.layers < 1:
        sys.exit("--layers must be >= 1")
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    ids = write_tokenizer(args.out)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config(args.layers, ids), f, indent=1)
    for name, layout in [("dream_embedding.safetensors", [("dream_queries", (1, Q, D))]),
                         ("clip_vision_embedding.safetensors", clip_layout()),
                         ("stable_diffusion_head.safetensors", head_layout()),
                         ("model.safetensors", llm_layout(args.layers))]:
        size = write_safetensors(os.path.join(args.out, name), layout, rng)
        params = sum(int(np.prod(s)) for _, s in layout)
        print(f"{name}: {len(layout)} tensors, {params / 1e6:.1f} M parameters, {size / 1e9:.2f} GB", flush=True)


if __name__ == "__main__":
    main()
