"""`python -m trainers.prepare_dataset RAW_DIR TEACHER_DIR`: pair, check and split a distillation set.

Pairs every teacher image with the raw frame of the same name (stem), checks both are readable and
that the teacher is `scale` times the raw size, splits the pairs 90/10 with a fixed seed, and moves
the validation pairs to RAW_DIR_VALIDATION and TEACHER_DIR_VALIDATION so no training run ever sees
them. A manifest (dataset.json beside RAW_DIR) records the split; re-running keeps it, and pairs
added since are assigned by a seeded hash of their name, so the earlier split never changes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class DatasetReport:
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    unpaired_raw: list[str] = field(default_factory=list)
    unpaired_teacher: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # stem -> why


def validation_dir(d: Path) -> Path:
    return d.with_name(d.name + "_VALIDATION")


def images_by_stem(*dirs: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
                    found[p.stem] = p
    return found


def check_pair(raw: Path, teacher: Path, scale: int) -> str | None:
    """None when the pair is usable, else why not."""
    a = cv2.imread(str(raw), cv2.IMREAD_UNCHANGED)
    if a is None:
        return f"raw frame {raw.name} is unreadable"
    b = cv2.imread(str(teacher), cv2.IMREAD_UNCHANGED)
    if b is None:
        return f"teacher image {teacher.name} is unreadable"
    want = (a.shape[0] * scale, a.shape[1] * scale)
    if b.shape[:2] != want:
        return f"teacher is {b.shape[1]}x{b.shape[0]}, expected {want[1]}x{want[0]} ({scale}x the raw {a.shape[1]}x{a.shape[0]})"
    return None


def hashed_is_val(stem: str, seed: int, val_fraction: float) -> bool:
    h = hashlib.sha256(f"{seed}:{stem}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < val_fraction


def prepare(raw_dir: Path, teacher_dir: Path, scale: int = 2, val_fraction: float = 0.1, seed: int = 0,
            manifest_path: Path | None = None) -> DatasetReport:
    manifest_path = manifest_path or raw_dir.parent / "dataset.json"
    raw = images_by_stem(raw_dir, validation_dir(raw_dir))
    teacher = images_by_stem(teacher_dir, validation_dir(teacher_dir))
    report = DatasetReport(unpaired_raw=sorted(set(raw) - set(teacher)), unpaired_teacher=sorted(set(teacher) - set(raw)))
    stems = []
    for stem in sorted(set(raw) & set(teacher)):
        why = check_pair(raw[stem], teacher[stem], scale)
        if why:
            report.rejected[stem] = why
        else:
            stems.append(stem)
    previous: dict[str, str] = {}
    if manifest_path.exists():
        doc = json.loads(manifest_path.read_text())
        previous = {s: "train" for s in doc.get("train", [])} | {s: "val" for s in doc.get("val", [])}
        seed, val_fraction = doc.get("seed", seed), doc.get("val_fraction", val_fraction)
    new = [s for s in stems if s not in previous]
    assignment = {s: previous[s] for s in stems if s in previous}
    if not previous:  # first run: an exact 90/10 split by a seeded permutation
        order = np.random.default_rng(seed).permutation(len(new))
        n_val = int(round(len(new) * val_fraction))
        for rank, idx in enumerate(order):
            assignment[new[idx]] = "val" if rank < n_val else "train"
    else:  # later runs: new pairs by a seeded hash, so nothing assigned before moves
        for s in new:
            assignment[s] = "val" if hashed_is_val(s, seed, val_fraction) else "train"
    for stem, split in sorted(assignment.items()):
        for path, base in ((raw[stem], raw_dir), (teacher[stem], teacher_dir)):
            dest_dir = validation_dir(base) if split == "val" else base
            if path.parent != dest_dir:
                dest_dir.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), dest_dir / path.name)
        (report.val if split == "val" else report.train).append(stem)
    doc = {"raw_dir": str(raw_dir), "teacher_dir": str(teacher_dir), "scale": scale, "seed": seed,
           "val_fraction": val_fraction, **asdict(report)}
    tmp = manifest_path.with_name(f".{manifest_path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, manifest_path)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Pair teacher images with raw frames, check them, split 90/10.")
    p.add_argument("raw_dir", type=Path)
    p.add_argument("teacher_dir", type=Path)
    p.add_argument("--scale", type=int, default=2, help="teacher size / raw size (default 2)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--manifest", type=Path, default=None, help="default: RAW_DIR/../dataset.json")
    p.add_argument("--strict", action="store_true", help="fail when any file is unpaired or rejected")
    args = p.parse_args(argv)
    for d in (args.raw_dir, args.teacher_dir):
        if not d.is_dir():
            print(f"error: {d} is not a folder", file=sys.stderr)
            return 2
    r = prepare(args.raw_dir, args.teacher_dir, args.scale, args.val_fraction, args.seed, args.manifest)
    print(f"{len(r.train)} training pairs, {len(r.val)} validation pairs")
    problems = 0
    for what, items in (("raw frames without a teacher image", r.unpaired_raw),
                        ("teacher images without a raw frame", r.unpaired_teacher)):
        if items:
            problems += len(items)
            print(f"{len(items)} {what}: {', '.join(items)}", file=sys.stderr)
    for stem, why in r.rejected.items():
        problems += 1
        print(f"rejected {stem}: {why}", file=sys.stderr)
    if not r.train:
        print("error: no usable training pairs", file=sys.stderr)
        return 2
    return 1 if problems and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
