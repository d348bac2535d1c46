#!/usr/bin/python3
"""The README's picture of a written document: a `dreamllm write` Markdown file (doc.md with its doc_N.png) laid out
as one PNG, the instruction on top, then each paragraph with the picture that follows it, pictures enlarged without
smoothing (they are 36 px). Needs PIL and the DejaVu fonts (Debian: python3-pil, fonts-dejavu-core).

    /usr/bin/python3 tools/readme_figure.py DOC.md OUT.png [--command "dreamllm write ..."]
"""
import argparse
import os
import re
import textwrap

from PIL import Image, ImageDraw, ImageFont

FONTS = "/usr/share/fonts/truetype/dejavu/"


def blocks(md_path):
    """The instruction and the blocks ('text', str) / ('image', path) of a write Markdown file."""
    base = os.path.dirname(md_path)
    instruction, out = "", []
    for para in open(md_path, encoding="utf-8").read().split("\n\n"):
        para = para.strip()
        if not para:
            continue
        if para.startswith("> "):
            instruction = para[2:]
            continue
        m = re.fullmatch(r"!\[[^\]]*\]\(([^)]+)\)", para)
        out.append(("image", os.path.join(base, m.group(1))) if m else ("text", para))
    return instruction, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("doc")
    ap.add_argument("out")
    ap.add_argument("--command", default="")
    ap.add_argument("--scale", type=int, default=4)
    a = ap.parse_args()
    instruction, items = blocks(a.doc)
    serif = ImageFont.truetype(FONTS + "DejaVuSerif.ttf", 17)
    italic = ImageFont.truetype(FONTS + "DejaVuSerif-Italic.ttf", 16)
    mono = ImageFont.truetype(FONTS + "DejaVuSansMono.ttf", 13)
    width, margin, wrap = 720, 24, 70

    rows = []  # (kind, payload, height)
    if a.command:
        for line in textwrap.wrap(a.command, 84):
            rows.append(("mono", line, 18))
        rows.append(("gap", None, 10))
    for line in textwrap.wrap(instruction, wrap):
        rows.append(("italic", line, 24))
    rows.append(("gap", None, 12))
    for kind, value in items:
        if kind == "text":
            for line in textwrap.wrap(value, wrap):
                rows.append(("serif", line, 26))
        else:
            img = Image.open(value).convert("RGB")
            img = img.resize((img.width * a.scale, img.height * a.scale), Image.NEAREST)
            rows.append(("image", img, img.height + 16))
    height = margin * 2 + sum(h for _, _, h in rows)
    page = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    y = margin
    for kind, value, h in rows:
        if kind == "mono":
            draw.text((margin, y), value, font=mono, fill=(90, 90, 90))
        elif kind == "italic":
            draw.line([(margin, y), (margin, y + h)], fill=(200, 200, 200), width=3)
            draw.text((margin + 12, y + 2), value, font=italic, fill=(100, 100, 100))
        elif kind == "serif":
            draw.text((margin, y + 2), value, font=serif, fill=(34, 34, 34))
        elif kind == "image":
            page.paste(value, ((width - value.width) // 2, y + 8))
            draw.rectangle([((width - value.width) // 2 - 1, y + 7),
                            ((width + value.width) // 2, y + 8 + value.height)], outline=(220, 220, 220))
        y += h
    page.save(a.out, optimize=True)


if __name__ == "__main__":
    main()
