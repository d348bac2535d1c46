#!/usr/bin/python3
"""One set of random SD 2.1-base UNet + VAE weights in the two forms the creation benchmark's engines read.

  /usr/bin/python3 bench/sd_peer/make_sd_weights.py OUT [--llm-layers N] [--seed S]

OUT/dreamllm/        a DreamLLM model directory in the release layout (bench/make_release_model.py's files and
                     names): stable_diffusion_head.safetensors holds unet.* and vae.* (diffusers names) and the
                     condition projector; the LLM (Vicuna-7B widths, N layers, default 1), CLIP vision tower,
                     dream queries and tokenizer come from make_release_model.py's writers. `dreamllm bench unet|vae|
                     create -m OUT/dreamllm` run on it.
OUT/sd21.safetensors the single-file SD 2.x checkpoint stable-diffusion.cpp loads: the same UNet and VAE numbers
                     under the original LDM names (model.diffusion_model.*, first_stage_model.*; the VAE's attention
                     projections as 1x1 convolutions, as LDM stores them) and a random OpenCLIP ViT-H/14 text
                     encoder (cond_stage_model.model.*, all 24 layers at their real widths: the peer's SD 2.x loader
                     fixes the encoder's shape and refuses a checkpoint with a layer missing, except the last).

Every UNet/VAE tensor is drawn once and written to both files, F16 on both sides. Convolution and linear weights
are N(0, 1/fan_in), so each layer roughly keeps its input's scale and a guided step on random latents stays finite;
biases 0, norm weights 1; embeddings N(0, 0.02). The pictures are noise, which is all a speed comparison needs.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import make_release_model as release  # noqa: E402

TEXT_WIDTH, TEXT_LAYERS, TEXT_FFN, TEXT_VOCAB, TEXT_CONTEXT = 1024, 24, 4096, 49408, 77


# ---------------------------------------------------------------------------------------------- LDM names
def unet_ldm_name(name):
    """A diffusers UNet2DConditionModel tensor name (SD 2.1-base shapes) as the LDM checkpoint spells it."""
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    module, leaf = name.rsplit(".", 1)
    if module in fixed:
        return f"model.diffusion_model.{fixed[module]}.{leaf}"
    parts = name.split(".")
    resnet_inner = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}

    def inner(kind, rest):
        if kind == "resnets":
            return resnet_inner[rest[0]] + "." + ".".join(rest[1:])
        return ".".join(rest)  # the transformer's own names are the same in both

    if parts[0] == "down_blocks":
        i = int(parts[1])
        if parts[2] == "downsamplers":
            return f"model.diffusion_model.input_blocks.{3 * (i + 1)}.0.op.{parts[-1]}"
        j = int(parts[3])
        sub = 0 if parts[2] == "resnets" else 1
        return f"model.diffusion_model.input_blocks.{3 * i + j + 1}.{sub}.{inner(parts[2], parts[4:])}"
    if parts[0] == "up_blocks":
        i = int(parts[1])
        if parts[2] == "upsamplers":  # after the resnet, and after the attention where the block has one
            return f"model.diffusion_model.output_blocks.{3 * i + 2}.{1 if i == 0 else 2}.conv.{parts[-1]}"
        j = int(parts[3])
        sub = 0 if parts[2] == "resnets" else 1
        return f"model.diffusion_model.output_blocks.{3 * i + j}.{sub}.{inner(parts[2], parts[4:])}"
    if parts[0] == "mid_block":
        sub = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[f"{parts[1]}.{parts[2]}"]
        return f"model.diffusion_model.middle_block.{sub}.{inner(parts[1], parts[3:])}"
    raise KeyError(name)


def vae_ldm_name(name):
    """A diffusers AutoencoderKL tensor name (SD shapes: 4 levels) as the LDM checkpoint spells it."""
    resnet_inner = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                    "conv_shortcut": "nin_shortcut"}
    attn_inner = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    parts = name.split(".")
    pre = "first_stage_model."
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return pre + name
    side = parts[0]
    if parts[1] in ("conv_in", "conv_out"):
        return pre + name
    if parts[1] == "conv_norm_out":
        return f"{pre}{side}.norm_out.{parts[2]}"
    if parts[1] == "mid_block":
        if parts[2] == "attentions":
            return f"{pre}{side}.mid.attn_1.{attn_inner[parts[4]]}.{parts[-1]}"
        return f"{pre}{side}.mid.block_{int(parts[3]) + 1}.{resnet_inner[parts[4]]}.{parts[5]}"
    if parts[1] in ("down_blocks", "up_blocks"):
        i = int(parts[2])
        level, group = (i, "down") if side == "encoder" else (3 - i, "up")  # LDM numbers the decoder bottom-up
        if parts[3] in ("downsamplers", "upsamplers"):
            return f"{pre}{side}.{group}.{level}.{'downsample' if group == 'down' else 'upsample'}.conv.{parts[-1]}"
        return f"{pre}{side}.{group}.{level}.block.{parts[4]}.{resnet_inner[parts[5]]}.{parts[6]}"
    raise KeyError(name)


def text_encoder_layout():
    """OpenCLIP ViT-H/14's text tower under SD 2.x's LDM names."""
    p, w = "cond_stage_model.model.", TEXT_WIDTH
    out = [(p + "token_embedding.weight", (TEXT_VOCAB, w)), (p + "positional_embedding", (TEXT_CONTEXT, w))]
    for l in range(TEXT_LAYERS):
        b = f"{p}transformer.resblocks.{l}."
        out += [(b + "ln_1.weight", (w,)), (b + "ln_1.bias", (w,)),
                (b + "attn.in_proj_weight", (3 * w, w)), (b + "attn.in_proj_bias", (3 * w,)),
                (b + "attn.out_proj.weight", (w, w)), (b + "attn.out_proj.bias", (w,)),
                (b + "ln_2.weight", (w,)), (b + "ln_2.bias", (w,)),
                (b + "mlp.c_fc.weight", (TEXT_FFN, w)), (b + "mlp.c_fc.bias", (TEXT_FFN,)),
                (b + "mlp.c_proj.weight", (w, TEXT_FFN)), (b + "mlp.c_proj.bias", (w,))]
    out += [(p + "ln_final.weight", (w,)), (p + "ln_final.bias", (w,)), (p + "text_projection", (w, w))]
    return out


# ---------------------------------------------------------------------------------------------- values
def values(rng, name, shape):
    count = int(np.prod(shape))
    leaf = name.rsplit(".", 1)[-1]
    module = name.rsplit(".", 2)[-2] if "." in name else name
    if "norm" in module or "ln_" in module or module in ("ln_final",):
        return np.full(shape, 1.0 if leaf == "weight" else 0.0, dtype=np.float16)
    if leaf == "bias" or leaf == "in_proj_bias":
        return np.zeros(shape, dtype=np.float16)
    if "embedding" in name:
        std = 0.02
    else:
        fan_in = count // shape[0]
        std = 1.0 / np.sqrt(fan_in)
    return (rng.standard_normal(count, dtype=np.float32) * np.float32(std)).astype(np.float16).reshape(shape)


class SafetensorsWriter:
    """Writes F16 tensors in a fixed, declared order; the header (offsets) is known before any data."""

    def __init__(self, path, layout, generator):
        self.path, self.tmp, self.layout = path, path + ".tmp", layout
        header, offset = {}, 0
        for name, shape in layout:
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        header["__metadata__"] = {"format": "pt", "generator": generator}
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * ((8 - len(h) % 8) % 8)
        self.f = open(self.tmp, "wb")
        self.f.write(struct.pack("<Q", len(h)))
        self.f.write(h)
        self.next = 0

    def write(self, name, array):
        expected, shape = self.layout[self.next]
        assert name == expected and array.size == int(np.prod(shape)), (name, expected, array.shape, shape)
        self.f.write(np.ascontiguousarray(array, dtype=np.float16).tobytes())
        self.next += 1

    def close(self):
        assert self.next == len(self.layout), (self.path, self.next, len(self.layout))
        self.f.close()
        os.replace(self.tmp, self.path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--llm-layers", type=int, default=1,
                    help="LLM decoder layers of the DreamLLM directory (default 1: `create` then costs what the "
                         "diffusion costs plus one layer's conditioning)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.llm_layers < 1:
        sys.exit("--llm-layers must be >= 1")
    ours_dir = os.path.join(a.out, "dreamllm")
    os.makedirs(ours_dir, exist_ok=True)
    rng = np.random.default_rng(a.seed)

    head = release.head_layout()  # unet.*, vae.*, projector.projector.weight
    diffusion = [(n, s) for n, s in head if n.startswith(("unet.", "vae."))]
    peer_layout = []
    for n, s in diffusion:
        if n.startswith("unet."):
            peer_layout.append((unet_ldm_name(n[len("unet."):]), s))
        else:
            ldm = vae_ldm_name(n[len("vae."):])
            is_attn_matrix = ".mid.attn_1." in ldm and ldm.endswith(".weight") and len(s) == 2
            peer_layout.append((ldm, s + (1, 1) if is_attn_matrix else s))
    assert len({n for n, _ in peer_layout}) == len(peer_layout)
    text = text_encoder_layout()
    ours = SafetensorsWriter(os.path.join(ours_dir, "stable_diffusion_head.safetensors"), head,
                             "bench/sd_peer/make_sd_weights.py")
    peer = SafetensorsWriter(os.path.join(a.out, "sd21.safetensors"), peer_layout + text,
                             "bench/sd_peer/make_sd_weights.py")
    for (name, shape), (peer_name, peer_shape) in zip(diffusion, peer_layout):
        v = values(rng, name, shape)
        ours.write(name, v)
        peer.write(peer_name, v.reshape(peer_shape))
    for name, shape in head[len(diffusion):]:
        ours.write(name, values(rng, name, shape))
    for name, shape in text:
        peer.write(name, values(rng, name, shape))
    ours.close()
    peer.close()
    params = sum(int(np.prod(s)) for _, s in diffusion)
    print(f"UNet + VAE: {len(diffusion)} tensors, {params / 1e6:.1f} M parameters, F16, in both files", flush=True)

    # The rest of the release layout, from make_release_model.py's own writers (N(0, 0.02) values).
    ids = release.write_tokenizer(ours_dir)
    with open(os.path.join(ours_dir, "config.json"), "w") as f:
        json.dump(release.config(a.llm_layers, ids), f, indent=1)
    for name, layout in [("dream_embedding.safetensors", [("dream_queries", (1, release.Q, release.D))]),
                         ("clip_vision_embedding.safetensors", release.clip_layout()),
                         ("model.safetensors", release.llm_layout(a.llm_layers))]:
        release.write_safetensors(os.path.join(ours_dir, name), layout, rng)
    print(f"wrote {ours_dir} and {os.path.join(a.out, 'sd21.safetensors')}", flush=True)


if __name__ == "__main__":
    main()
