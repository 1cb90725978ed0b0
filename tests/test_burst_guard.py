"""engine/burst/guard.py: the hallucination measure reads what it should, and the guard keeps what the
burst vouches for and removes what it cannot."""
import numpy as np
import pytest

from engine.burst.guard import GUARD_SIGMA, PATCH, guard, hallucination_rate, high_pass
from tests.burst_data import STATIC, burst


def _clean():
    return burst(1, gain=1, size=(256, 192), seed=2).clean[0]


def test_the_merge_scores_zero_against_itself_by_construction():
    b = burst(4, gain=4, size=(256, 192), seed=2)
    assert hallucination_rate(b.noisy[0], b.noisy[0], b.clean[0]) == (0.0, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_texture_injected_into_a_tenth_of_the_patches_reads_ten_percent(seed):
    clean = _clean()
    rng = np.random.default_rng(seed)
    _, h, w = clean.shape
    ny, nx = h // PATCH, w // PATCH
    chosen = rng.choice(ny * nx, size=round(0.1 * ny * nx), replace=False)
    out = clean.copy()
    for k in chosen:
        j, i = divmod(int(k), nx)
        out[:, j * PATCH : (j + 1) * PATCH, i * PATCH : (i + 1) * PATCH] += \
            rng.normal(0, 0.03, (4, PATCH, PATCH)).astype(np.float32)
    rate, smooth = hallucination_rate(out, clean, clean)
    assert abs(rate - 0.10) <= 0.01 and smooth == 0.0


def test_the_guard_stops_a_refinement_from_smoothing_away_detail_the_noise_cannot_explain():
    import cv2

    b = burst(8, gain=1, size=(256, 192), seed=4, motion=STATIC)
    merged = b.noisy.mean(axis=0)
    noise_var = ((b.noise.sigma_shot**2 * b.clean[0] + b.noise.sigma_read**2) / 8).astype(np.float32)
    blurred = np.stack([cv2.GaussianBlur(p, (0, 0), 1.5) for p in merged])  # a denoiser with little noise to remove

    def rmse(x):
        return float(np.sqrt(np.mean((x - b.clean[0]) ** 2)))

    guarded = guard(blurred, merged, noise_var, np.ones((4, 4), np.float32))
    assert rmse(blurred) > 1.5 * rmse(merged), "the case must hurt without the guard"
    assert rmse(guarded) < 0.2 * rmse(blurred) and rmse(guarded) < 2 * rmse(merged)


def test_blurring_counts_as_over_smoothing_not_hallucination():
    import cv2

    clean = _clean()
    blurred = np.stack([cv2.GaussianBlur(p, (0, 0), 2.0) for p in clean])
    rate, smooth = hallucination_rate(blurred, clean, clean)
    # a blur also carries an edge into a flat neighbour (detail that is not there: counted), rarely
    assert smooth > 0.3 and rate < 0.1 * smooth


def test_the_guard_keeps_denoising_and_removes_invented_texture():
    b = burst(8, gain=4, size=(256, 192), seed=4, motion=STATIC)
    merged = b.noisy.mean(axis=0)  # a stand-in merge: the frames are static, so their mean is one
    noise_var = ((b.noise.sigma_shot**2 * b.clean[0] + b.noise.sigma_read**2) / 8).astype(np.float32)  # the mean's
    conf = np.ones((4, 4), np.float32)
    # a refinement that removes the merge's remaining noise: kept (all but a sliver of its gain)
    def rmse(x):
        return float(np.sqrt(np.mean((x - b.clean[0]) ** 2)))

    assert rmse(guard(b.clean[0], merged, noise_var, conf)) < 0.2 * rmse(merged)
    # one that invents strong texture in a corner: pulled back towards the merge there
    rng = np.random.default_rng(0)
    invented = b.clean[0].copy()
    invented[:, :32, :32] += rng.normal(0, 0.2, (4, 32, 32)).astype(np.float32)
    guarded = guard(invented, merged, noise_var, conf)
    hp = high_pass(guarded - merged)[:, :32, :32]
    assert np.sqrt(np.mean(hp**2)) < 0.4 * np.sqrt(np.mean(high_pass(invented - merged)[:, :32, :32] ** 2))
    assert hallucination_rate(guarded, merged, b.clean[0])[0] < 0.5 * hallucination_rate(invented, merged, b.clean[0])[0]
    # where the aligner found no match the merge's detail stands: only the refinement's coarse change is kept
    no_match = guard(invented, merged, noise_var, np.zeros((4, 4), np.float32))
    change = invented - merged
    assert np.allclose(no_match, merged + change - high_pass(change, GUARD_SIGMA), atol=1e-6)
