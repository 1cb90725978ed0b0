"""The burst benchmark's merge profile: where the Wiener merge's time goes, measured, not quoted."""
import pytest

from app.bench.burst import MERGE_PARTS, merge_profile
from tests.burst_data import photo


def test_merge_profile_splits_every_millisecond_of_the_merge_into_its_parts():
    prof = merge_profile([("astronaut", photo())], frames=4, seed=0, runs=1)
    parts = prof["parts_ms"]
    assert list(parts)[: len(MERGE_PARTS)] == [label for label, _ in MERGE_PARTS] and prof["merges"] == 1
    assert sum(parts.values()) == pytest.approx(prof["merge_ms"])
    assert all(ms >= 0 for ms in parts.values())
    # the FFTs, the warps and the numba kernels were all found under their names (none fell into "other")
    for label, _ in MERGE_PARTS:
        assert parts[label] > 0, label
