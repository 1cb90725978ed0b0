"""The single-frame trainers' data: what train_student (and train_teacher) train and validate on.

Clean targets: photos (../shared/data/BSDS500 train+test by default), cropped at random and degraded
on the fly by the webcam protocol of DESIGN.md (capture/degradations.py); the clean crop is the
target. Teacher targets: (raw, teacher) pairs made by `python -m trainers.prepare_dataset`, the
teacher's image `scale` x the raw one. Batches are (B, 3, H, W) float tensors in [0, 1].
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from capture.degradations import (WebcamDegradation, degrade_webcam,
                                   random_crop, sample_webcam_params)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class TrainingDataError(Exception):
    """The training or validation data is missing or unusable; the message says which and why."""


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS) if Path(folder).is_dir() else []


def load_images(paths: list[Path], what: str) -> list[np.ndarray]:
    """BGR uint8 images; unreadable files are reported and skipped, none at all is an error."""
    images = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            print(f"warning: skipping unreadable {what} image {p}", file=sys.stderr)
            continue
        images.append(img)
    if not images:
        raise TrainingDataError(f"no readable {what} images among {len(paths)} files")
    return images


def clean_training_images(data: Path) -> list[np.ndarray]:
    paths = list_images(data / "BSDS500" / "train") + list_images(data / "BSDS500" / "test")
    if not paths:
        raise TrainingDataError(f"no images under {data}/BSDS500/train or /test; pass --data with the shared "
                                f"data folder, or use --targets teacher with a prepared dataset")
    return load_images(paths, "training")


class CleanBatches:
    """Random crops of clean photos, degraded on the fly: (lr (B, 3, p, p), hr (B, 3, sp, sp)) in [0, 1]."""

    def __init__(self, images: list[np.ndarray], patch: int, scale: int, rng: np.random.Generator):
        self.images, self.patch, self.scale, self.rng = images, patch, scale, rng
        self.protocol = WebcamDegradation(scale=scale)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        hp = self.patch * self.scale
        lrs, hrs = [], []
        for _ in range(n):
            img = self.images[int(self.rng.integers(len(self.images)))]
            hr = random_crop(img, hp, hp, self.rng)
            if self.rng.random() < 0.5:
                hr = hr[:, ::-1]
            if self.rng.random() < 0.5:
                hr = hr.transpose(1, 0, 2)
            hr = np.ascontiguousarray(hr)
            lrs.append(degrade_webcam(hr, sample_webcam_params(self.rng, self.protocol), self.rng))
            hrs.append(hr)
        return to_tensor(np.stack(lrs)), to_tensor(np.stack(hrs))


class PairBatches:
    """Random aligned crops of (raw, teacher) pairs: the teacher image is `scale` x the raw one."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], patch: int, scale: int, rng: np.random.Generator):
        self.pairs, self.patch, self.scale, self.rng = pairs, patch, scale, rng

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, s = self.patch, self.scale
        lrs, hrs = [], []
        for _ in range(n):
            lr, hr = self.pairs[int(self.rng.integers(len(self.pairs)))]
            y = int(self.rng.integers(0, lr.shape[0] - p + 1))
            x = int(self.rng.integers(0, lr.shape[1] - p + 1))
            lrs.append(lr[y:y + p, x:x + p])
            hrs.append(hr[y * s:(y + p) * s, x * s:(x + p) * s])
        return to_tensor(np.stack(lrs)), to_tensor(np.stack(hrs))


def load_pairs(raw_dir: Path, teacher_dir: Path, scale: int, min_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(raw, teacher) images paired by file stem; sizes checked (teacher = scale x raw)."""
    raws = {p.stem: p for p in list_images(raw_dir)}
    teachers = {p.stem: p for p in list_images(teacher_dir)}
    common = sorted(set(raws) & set(teachers))
    if not common:
        raise TrainingDataError(f"no (raw, teacher) pairs with matching names in {raw_dir} and {teacher_dir}; "
                                f"run `python -m trainers.prepare_dataset {raw_dir} {teacher_dir}` first")
    pairs = []
    for stem in common:
        lr, hr = cv2.imread(str(raws[stem])), cv2.imread(str(teachers[stem]))
        if lr is None or hr is None:
            print(f"warning: skipping unreadable pair {stem}", file=sys.stderr)
            continue
        if hr.shape[:2] != (lr.shape[0] * scale, lr.shape[1] * scale) or min(lr.shape[:2]) < min_size:
            print(f"warning: skipping pair {stem}: raw {lr.shape[:2]}, teacher {hr.shape[:2]} "
                  f"(need teacher = {scale}x raw and raw >= {min_size} px)", file=sys.stderr)
            continue
        pairs.append((lr, hr))
    if not pairs:
        raise TrainingDataError(f"none of the {len(common)} pairs in {raw_dir} / {teacher_dir} is usable")
    return pairs


def validation_crops(data: Path, n: int, crop: int) -> list[np.ndarray]:
    """Centre crops (side a multiple of 8, at most crop) of the first n BSDS500/val images, uint8 (H, W, 3).
    Validation degrades crop i with np.random.default_rng(10_000 + i), the same draw every epoch and run."""
    paths = list_images(Path(data) / "BSDS500" / "val")[:n]
    if not paths:
        raise TrainingDataError(f"no validation images under {data}/BSDS500/val; pass --data with the shared data folder")
    crops = []
    for img in load_images(paths, "validation"):
        h, w = img.shape[:2]
        c = min(crop, h, w) // 8 * 8
        crops.append(np.ascontiguousarray(img[(h - c) // 2:(h - c) // 2 + c, (w - c) // 2:(w - c) // 2 + c]))
    return crops


def clean_validation_set(data: Path, n: int, crop: int, scale: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """BSDS500/val centre crops, each degraded by a fixed draw of the protocol (the same every epoch)."""
    out = []
    for i, hr in enumerate(validation_crops(data, n, crop)):
        rng = np.random.default_rng(10_000 + i)
        out.append((degrade_webcam(hr, sample_webcam_params(rng, WebcamDegradation(scale=scale)), rng), hr))
    return out


def teacher_validation_set(raw_dir: Path, teacher_dir: Path, scale: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from trainers.prepare_dataset import validation_dir

    return load_pairs(validation_dir(raw_dir), validation_dir(teacher_dir), scale, min_size=8)


def to_tensor(batch_u8: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 BGR -> (B, 3, H, W) float [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(batch_u8)).permute(0, 3, 1, 2).float().div_(255.0)
