#!/usr/bin/env python3
"""Draws docs/layers.svg: the server's layers (crates/herald/src), each with its modules, and the
one direction imports may take. Run it after adding or moving a module; tests/layers.rs fails while
a module of the tree is missing from the picture.

    python3 scripts/draw-layers.py
"""
import html
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SRC = os.path.join(ROOT, "crates", "herald", "src")
OUT = os.path.join(ROOT, "docs", "layers.svg")

# Top first, as the picture reads; folders on one row are one layer and do not import each other.
LAYERS = [
    ("app", ["app"], "the process: start and stop, demo, simulator"),
    ("edges", ["edges"], "what talks to the outside world"),
    ("node", ["node"], "what one node shares between its edges"),
    ("links", ["brokers", "hooks"], "the node's outbound links"),
    ("core", ["core"], "publications inside one node"),
    ("settings", ["config"], "the configuration"),
]

WIDTH = 1100
LABEL_W = 150
BOX_H = 26
GAP = 8
PAD = 12


def children(folder):
    """The modules directly inside a layer folder: files (not mod.rs) and sub-folders."""
    path = os.path.join(SRC, folder)
    names = []
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if os.path.isdir(full):
            names.append(entry + "/")
        elif entry.endswith(".rs") and entry != "mod.rs":
            names.append(entry[:-3])
    # A layer that is one module (node/mod.rs) shows as that module.
    return names or [folder + "/"]


def text_width(text):
    return 7.4 * len(text) + 16


def layout_row(groups, x0, width):
    """Places module boxes left to right, wrapping; returns boxes and the row's height."""
    boxes = []
    x, y = x0, 0
    for folder, names in groups:
        for i, name in enumerate(names):
            w = text_width(name if len(groups) == 1 else f"{folder}/{name}")
            if x + w > x0 + width:
                x, y = x0, y + BOX_H + GAP
            boxes.append((x, y, w, name, folder, i == 0 and len(groups) > 1))
            x += w + GAP
        x += 3 * GAP
    return boxes, y + BOX_H


def main():
    parts = []
    y = 20
    band_tops = []
    for name, folders, job in LAYERS:
        groups = [(f, children(f)) for f in folders]
        boxes, height = layout_row(groups, LABEL_W + PAD, WIDTH - LABEL_W - 2 * PAD - 60)
        band_h = height + 2 * PAD + 18
        band_tops.append((y, band_h))
        parts.append(
            f'<rect x="10" y="{y}" width="{WIDTH - 80}" height="{band_h}" rx="8" '
            f'fill="#f4f6fa" stroke="#9aa5b8"/>'
        )
        parts.append(
            f'<text x="22" y="{y + 24}" font-weight="bold" font-size="15">{html.escape(name)}</text>'
        )
        folders_text = ", ".join(f + "/" for f in folders)
        parts.append(
            f'<text x="22" y="{y + 42}" font-size="11" fill="#445">{html.escape(folders_text)}</text>'
        )
        parts.append(
            f'<text x="{LABEL_W + PAD}" y="{y + 15}" font-size="11" fill="#445" '
            f'font-style="italic">{html.escape(job)}</text>'
        )
        colours = {folders[0]: "#dce8fb"}
        if len(folders) > 1:
            colours[folders[1]] = "#fbe9d6"
        for bx, by, bw, label, folder, _ in boxes:
            top = y + PAD + 10 + by
            parts.append(
                f'<rect x="{bx}" y="{top}" width="{bw}" height="{BOX_H}" rx="4" '
                f'fill="{colours[folder]}" stroke="#6b7a90"/>'
            )
            shown = label if len(folders) == 1 or label.startswith(folder + "/") else f"{folder}/{label}"
            parts.append(
                f'<text x="{bx + 8}" y="{top + 17}" font-size="12" '
                f'font-family="monospace">{html.escape(shown)}</text>'
            )
        y += band_h + 22
    # The one allowed direction, down the right-hand side, and between bands.
    for (top, h), (next_top, _) in zip(band_tops, band_tops[1:]):
        x = WIDTH - 45
        parts.append(
            f'<line x1="{x}" y1="{top + h / 2}" x2="{x}" y2="{next_top + 10}" '
            f'stroke="#2a5db0" stroke-width="2.5" marker-end="url(#arrow)"/>'
        )
    height = y
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#2a5db0"/></marker></defs>',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        *parts,
        f'<text x="{WIDTH - 30}" y="{height / 2}" font-size="12" fill="#2a5db0" '
        f'transform="rotate(90 {WIDTH - 30} {height / 2})" text-anchor="middle">'
        "imports go down only; no module imports another around a circle</text>",
        "</svg>",
    ]
    with open(OUT, "w") as f:
        f.write("\n".join(svg) + "\n")
    print(f"wrote {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
