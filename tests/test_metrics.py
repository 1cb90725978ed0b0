import numpy as np
import pytest

from engine.metrics import psnr, ssim
from engine.peak import measure_gemm_peak_gmacs


def test_psnr_known_value_and_border():
    ref = np.zeros((10, 10), np.uint8)
    out = ref.copy()
    out[:] = 5
    assert psnr(out, ref) == pytest.approx(10 * np.log10(255**2 / 25))
    out[0, :] = 200  # only the border differs more
    assert psnr(out, ref, border=1) == pytest.approx(10 * np.log10(255**2 / 25))
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(out, ref[:5])


def test_ssim_orders_noise_levels():
    rng = np.random.default_rng(0)
    ref = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    ref = np.repeat(np.repeat(ref[::8, ::8], 8, 0), 8, 1)
    lo = np.clip(ref + rng.normal(0, 5, ref.shape), 0, 255).astype(np.uint8)
    hi = np.clip(ref + rng.normal(0, 25, ref.shape), 0, 255).astype(np.uint8)
    assert ssim(ref, ref) == pytest.approx(1.0)
    assert 1.0 > ssim(lo, ref) > ssim(hi, ref) > 0


def test_gemm_peak_is_measured():
    assert measure_gemm_peak_gmacs(n=256, repeats=3, threads=1) > 0.1
