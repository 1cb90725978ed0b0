"""`eyefuse models`: the processors `eyefuse live --model` and `eyefuse enhance --model` accept, and
the other models in the weights folder, with their kind, scale, size and compute."""
from __future__ import annotations

import argparse

# what the built-in processors are, for the listing
BUILTIN_NOTES = {
    "bicubic": "built-in: bicubic 2x upscaling (the baseline every model must beat)",
    "passthrough": "built-in: the input unchanged",
    "burst_fusion": "built-in: RAW burst align + merge of the newest N frames (BAYER16 sources: simulated:bayer, "
                    "DNG folders, ps3eye raw)",
}
FRAME = 640 * 480


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the processors and models, with their kind, scale, size and compute")
    p.add_argument("--weights-dir", default=None, help="weights folder (default: the repository's weights/)")
    p.set_defaults(run=run)


def model_rows(weights_dir=None) -> list[tuple[str, str, str, str, str, str]]:
    """(name, kind, scale, size, GMAC per 640x480 input, description) for the built-ins and every
    manifest model whose file is present."""
    from engine.manifest import WEIGHTS_DIR
    from engine.registry import BUILTIN
    from engine.runtime import available_models

    rows = [(name, "built-in", "1" if name == "passthrough" else "2", "-", "-", BUILTIN_NOTES.get(name, ""))
            for name in BUILTIN]
    for e in available_models(weights_dir=weights_dir if weights_dir is not None else WEIGHTS_DIR):
        gmac = f"{e.macs_per_input_pixel * FRAME / 1e9:.2f}" if e.macs_per_input_pixel else "-"
        rows.append((e.name, e.kind, str(e.scale), f"{e.bytes / 1e3:.0f} kB", gmac, e.description))
    return rows


def run(args: argparse.Namespace) -> int:
    rows = model_rows(args.weights_dir)
    head = ("name", "kind", "scale", "size", "GMAC/frame", "description")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    print("\nlive and enhance take the built-ins and the 'sr' models; 'burst_refine' models serve "
          "enhance-burst --refine.")
    return 0
