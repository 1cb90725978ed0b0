"""The three teacher tasks: what each network learns, from which degradation, and how it is scored.

Pure numpy/OpenCV functions (arrays in, arrays out, no torch), shared by the teacher trainer
(trainers/train_teacher.py) and the teacher benchmark (app/bench/teacher.py), so training, the
manifest's quality figures and the benchmark all see the same degradations:

    sr       clean (4h, 4w) -> (h, w) by antialiased bicubic or area downscaling; NAFSSR 4x undoes it
    deblur   clean -> straight motion blur in linear light (+ faint read noise); NAFNet undoes it
    denoise  clean -> Poisson-Gaussian noise in linear light at a random level, either per pixel or
             drawn at half resolution and upscaled 2x (the grain a noisy frame has after the teacher's
             upscaling); NAFNet removes it

Evaluation sets are deterministic (seeded per image): Kodak24 for every task and the real CC15
pairs (Nam et al.) for denoising.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from capture.degradations import (WEBCAM_NOISE_LEVELS, NoiseLevel, add_poisson_gaussian_noise, apply_motion_blur,
                                   linear_to_u8, u8_to_linear)

TASK_NAMES = ("sr", "deblur", "denoise")


@dataclass(frozen=True)
class TaskSpec:
    """One teacher: its network class, checkpoint file (under weights/teachers), manifest kind, scale."""

    name: str
    network: str  # "NAFSSR" or "NAFNet"
    checkpoint: str  # file name teacher.py expects
    kind: str
    scale: int
    description: str

    @property
    def model_name(self) -> str:
        """The manifest entry's name: the checkpoint's stem."""
        return Path(self.checkpoint).stem


TASKS: dict[str, TaskSpec] = {
    "sr": TaskSpec("sr", "NAFSSR", "nafssr_sr4.pth", "teacher_sr", 4,
                   "NAFSSR 4x super-resolution teacher (single view fed to both stereo branches), trained on "
                   "bicubic/area-downscaled BSDS500"),
    "deblur": TaskSpec("deblur", "NAFNet", "nafnet_deblur.pth", "teacher_deblur", 1,
                       "NAFNet motion-deblur teacher, trained on synthetic linear-light motion blur of BSDS500"),
    "denoise": TaskSpec("denoise", "NAFNet", "nafnet_denoise.pth", "teacher_denoise", 1,
                        "NAFNet denoise teacher, trained on Poisson-Gaussian noise in linear light over a range "
                        "of levels on BSDS500"),
}


@dataclass(frozen=True)
class DeblurRange:
    """Motion blur the deblur teacher is trained on (lengths in the image's own pixels). In the teacher
    chain it runs at 2x the camera's resolution, where the webcam protocol's blur is up to 8 px."""

    min_px: float = 1.0
    max_px: float = 12.0
    log10_sigma_read: tuple[float, float] = (-3.5, -2.5)  # faint, so it does not learn to sharpen noise


@dataclass(frozen=True)
class DenoiseRange:
    """Noise the denoise teacher is trained on: the webcam protocol's range, a bit wider at the top."""

    log10_sigma_read: tuple[float, float] = (-2.6, -1.3)
    log10_sigma_shot: tuple[float, float] = (-3.0, -1.6)
    upscaled_grain_probability: float = 0.5  # noise drawn at half resolution and upscaled 2x


def check_task(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ValueError(f"unknown teacher task {task!r}; choose one of {', '.join(TASK_NAMES)}")
    return TASKS[task]


# -- degradations (uint8 BGR in, uint8 BGR out) ---------------------------------------------------

def downscale_bicubic(img: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (H // factor, W // factor, 3) uint8 by antialiased bicubic (PIL, as
    MATLAB's imresize: the kernel is widened by the factor, unlike OpenCV's INTER_CUBIC)."""
    h, w = img.shape[0] // factor, img.shape[1] // factor
    src = np.ascontiguousarray(img[: h * factor, : w * factor])
    return np.array(Image.fromarray(src).resize((w, h), Image.Resampling.BICUBIC))  # a writable copy


def downscale_area(img: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (H // factor, W // factor, 3) uint8 by area averaging."""
    h, w = img.shape[0] // factor, img.shape[1] // factor
    return cv2.resize(img[: h * factor, : w * factor], (w, h), interpolation=cv2.INTER_AREA)


def degrade_sr(hr: np.ndarray, rng: np.random.Generator, scale: int = 4) -> np.ndarray:
    """(sH, sW, 3) uint8 clean -> (H, W, 3) uint8, bicubic or area downscaled (one chosen at random)."""
    return downscale_bicubic(hr, scale) if rng.random() < 0.5 else downscale_area(hr, scale)


def sample_blur(rng: np.random.Generator, r: DeblurRange = DeblurRange()) -> tuple[float, float]:
    """A straight motion (dx, dy) in pixels: uniform length in [min_px, max_px], uniform direction."""
    length = rng.uniform(r.min_px, r.max_px)
    angle = rng.uniform(0, np.pi)
    return float(length * np.cos(angle)), float(length * np.sin(angle))


def degrade_blur(clean: np.ndarray, blur: tuple[float, float], rng: np.random.Generator,
                 sigma_read: float = 0.0) -> np.ndarray:
    """(H, W, 3) uint8 -> the same blurred along `blur` (dx, dy) in linear light, plus Gaussian read
    noise of std sigma_read (linear), back to 8-bit sRGB."""
    linear = apply_motion_blur(u8_to_linear(clean), *blur)
    if sigma_read > 0:
        linear = linear + np.float32(sigma_read) * rng.standard_normal(linear.shape, dtype=np.float32)
    return linear_to_u8(linear)


def degrade_deblur(clean: np.ndarray, rng: np.random.Generator, r: DeblurRange = DeblurRange()) -> np.ndarray:
    """(H, W, 3) uint8 -> a random draw of the deblur teacher's training blur."""
    return degrade_blur(clean, sample_blur(rng, r), rng, 10 ** rng.uniform(*r.log10_sigma_read))


def add_noise(clean: np.ndarray, noise: NoiseLevel, rng: np.random.Generator, grain: int = 1) -> np.ndarray:
    """(H, W, 3) uint8 -> the same with Poisson-Gaussian noise in linear light, 8-bit sRGB.

    grain 1: independent per pixel. grain 2: drawn for the 2x-area-downscaled image and upscaled
    back bicubically (H and W even), the spatially correlated noise of an upscaled noisy frame."""
    linear = u8_to_linear(clean)
    if grain == 1:
        return linear_to_u8(add_poisson_gaussian_noise(linear, noise, rng))
    h, w = linear.shape[0] // grain, linear.shape[1] // grain
    small = cv2.resize(linear, (w, h), interpolation=cv2.INTER_AREA)
    field = add_poisson_gaussian_noise(small, noise, rng) - small
    field = cv2.resize(field, (linear.shape[1], linear.shape[0]), interpolation=cv2.INTER_CUBIC)
    return linear_to_u8(linear + field)


def sample_noise(rng: np.random.Generator, r: DenoiseRange = DenoiseRange()) -> NoiseLevel:
    return NoiseLevel(10 ** rng.uniform(*r.log10_sigma_read), 10 ** rng.uniform(*r.log10_sigma_shot))


def degrade_denoise(clean: np.ndarray, rng: np.random.Generator, r: DenoiseRange = DenoiseRange()) -> np.ndarray:
    """(H, W, 3) uint8 -> a random draw of the denoise teacher's training noise."""
    even = clean.shape[0] % 2 == 0 and clean.shape[1] % 2 == 0
    grain = 2 if even and rng.random() < r.upscaled_grain_probability else 1
    return add_noise(clean, sample_noise(rng, r), rng, grain)


def degrade(task: str, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One training draw: (H, W, 3) uint8 clean -> the task's input ((H/4, W/4, 3) for sr)."""
    check_task(task)
    if task == "sr":
        return degrade_sr(clean, rng)
    if task == "deblur":
        return degrade_deblur(clean, rng)
    return degrade_denoise(clean, rng)


# -- evaluation sets --------------------------------------------------------------------------------

def read_folder(folder: Path, pattern: str = "*.png") -> list[tuple[str, np.ndarray]]:
    """(stem, BGR uint8) for the readable images of a folder, sorted by name; unreadable ones are
    reported on stderr and skipped."""
    import sys

    out = []
    for p in sorted(Path(folder).glob(pattern)):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            print(f"warning: skipping unreadable image {p}", file=sys.stderr)
            continue
        out.append((p.stem, img))
    return out


def kodak_images(data: Path) -> list[tuple[str, np.ndarray]]:
    """Kodak24 (stem, clean BGR) cropped to multiples of 16; raises FileNotFoundError when absent."""
    images = read_folder(Path(data) / "Kodak24")
    if not images:
        raise FileNotFoundError(f"no Kodak24 images under {Path(data) / 'Kodak24'}; pass the shared data folder")
    return [(n, img[: img.shape[0] // 16 * 16, : img.shape[1] // 16 * 16]) for n, img in images]


def kodak_task_set(data: Path, task: str, level: str = "mid") -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, degraded input, clean target)] on Kodak24 for `task`, the same on every call:
    sr: bicubic 4x downscale; deblur: blur 4..12 px in a seeded direction (+ read noise 10**-3);
    denoise: per-pixel Poisson-Gaussian noise at the webcam protocol's `level`."""
    check_task(task)
    out = []
    for i, (name, clean) in enumerate(kodak_images(data)):
        rng = np.random.default_rng(7000 + i)
        if task == "sr":
            inp = downscale_bicubic(clean, 4)
        elif task == "deblur":
            inp = degrade_blur(clean, sample_blur(rng, DeblurRange(4.0, 12.0)), rng, 1e-3)
        else:
            inp = add_noise(clean, WEBCAM_NOISE_LEVELS[level], rng)
        out.append((name, inp, clean))
    return out


def cc15_pairs(data: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, real noisy, clean mean)] of CC15_Nam; pairs with a missing or unreadable half are
    reported and skipped; raises FileNotFoundError when there is none."""
    import sys

    folder = Path(data) / "CC15_Nam"
    out = []
    for p in sorted(folder.glob("*_real.png")):
        name = p.name[: -len("_real.png")]
        mean = folder / f"{name}_mean.png"
        noisy, clean = cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.imread(str(mean), cv2.IMREAD_COLOR)
        if noisy is None or clean is None or noisy.shape != clean.shape:
            print(f"warning: skipping CC15 pair {name}: the noisy or the clean image is missing, unreadable "
                  f"or of another size", file=sys.stderr)
            continue
        out.append((name, noisy, clean))
    if not out:
        raise FileNotFoundError(f"no readable *_real.png / *_mean.png pairs under {folder}")
    return out


# -- the classical baselines the teachers are measured against --------------------------------------

def bicubic_up(img: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (factor*H, factor*W, 3) by OpenCV bicubic."""
    return cv2.resize(img, (img.shape[1] * factor, img.shape[0] * factor), interpolation=cv2.INTER_CUBIC)


def unsharp_mask(img: np.ndarray, amount: float = 1.0, sigma: float = 1.5) -> np.ndarray:
    """(H, W, 3) uint8 -> img + amount * (img - gaussian(img, sigma)), saturated."""
    blur = cv2.GaussianBlur(img, (0, 0), sigma)
    return cv2.addWeighted(img, 1 + amount, blur, -amount, 0)


def nlm(img: np.ndarray, h: float) -> np.ndarray:
    """(H, W, 3) uint8 -> OpenCV fastNlMeansDenoisingColored with strength h (7x7 patches, 21x21 search)."""
    return cv2.fastNlMeansDenoisingColored(img, None, h, h, 7, 21)


def estimate_noise_sigma(img: np.ndarray) -> float:
    """Noise std (8-bit units) of a (H, W, 3) uint8 image, by the MAD of a grey Laplacian (Immerkaer)."""
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    lap = cv2.filter2D(grey, -1, np.float32([[1, -2, 1], [-2, 4, -2], [1, -2, 1]]))
    return float(np.sqrt(np.pi / 2) * np.mean(np.abs(lap[1:-1, 1:-1])) / 6.0)
