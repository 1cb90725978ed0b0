"""The burst benchmark's merge profile: where the Wiener merge's time goes, measured, not quoted."""
import pytest

from app.bench.burst import MERGE_PARTS, merge_profile
from tests.burst_data import photo

pytestmark = pytest.mark.bench  # a whole profiled merge: `make test-all`


def test_merge_profile_splits_every_millisecond_of_the_merge_into_its_parts():
    prof = merge_profile([("astronaut", photo())], frames=4, seed=0, runs=1)
    parts = prof["parts_ms"]
    assert list(parts)[: len(MERGE_PARTS)] == [label for label, _ in MERGE_PARTS] and prof["merges"] == 1
    assert all(ms >= 0 for ms in parts.values())
    # the named parts account for most of the merge: what no part claims stays a minority
    other = next(ms for label, ms in parts.items() if label.startswith("other"))
    assert other < 0.5 * prof["merge_ms"], parts
    # the FFTs, the warps and the numba kernels were all found under their names (none fell into "other")
    for label, _ in MERGE_PARTS:
        assert parts[label] > 0, label
