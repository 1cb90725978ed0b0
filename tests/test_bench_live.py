"""The live benchmark's steady-state figures, computed from a window's stats timeline."""
import numpy as np
import pytest

from app.bench.live import steady_state
from app.live_figures import TIMELINE_COLUMNS


def stats_with(rows, columns=TIMELINE_COLUMNS):
    return {"timeline_columns": list(columns), "timeline": [list(r) for r in rows]}


def test_warmup_is_left_out_and_the_rate_and_latency_come_from_what_remains():
    # 10 s at 30 fps; the first 2 s are slow (model load), the rest 20 ms with every 50th frame at 80.
    rows = []
    for i in range(300):
        t = i / 30
        lat = 200.0 if t < 2 else (80.0 if i % 50 == 0 else 20.0)
        rows.append((t, lat, 1.0, lat - 6.0, 5.0))
    s = steady_state(stats_with(rows), warmup_s=2.0)
    assert s["frames"] == 240 and s["display_fps"] == pytest.approx(30.0)
    assert s["latency_ms_median"] == 20.0 and s["latency_ms_max"] == 80.0
    assert s["latency_over_target_percent"] == pytest.approx(100 * 4 / 240)  # frames 100, 150, 200, 250
    parts = s["latency_parts_ms"]
    assert set(parts) == {"wait_ms", "engine_ms", "to_screen_ms"}
    assert parts["engine_ms"]["median"] == 14.0 and parts["engine_ms"]["mean_in_slowest_1pc"] == 74.0
    assert parts["to_screen_ms"]["p99"] == 5.0


def test_a_timeline_from_before_the_parts_were_recorded_still_reads():
    rows = [(i / 30, 25.0 + (i % 3)) for i in range(90)]
    s = steady_state({"timeline": [list(r) for r in rows]}, warmup_s=0.0)
    assert s["frames"] == 90 and s["latency_parts_ms"] == {}
    assert np.isclose(s["latency_ms_median"], 26.0)


def test_too_short_a_run_gives_no_figures_rather_than_an_error():
    s = steady_state(stats_with([(0.1, 30.0, 1.0, 20.0, 9.0)]), warmup_s=0.0)
    assert s["frames"] == 1 and np.isnan(s["latency_ms_p99"])
