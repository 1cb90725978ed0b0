"""app/bench/report.BenchProgress: overall progress with an estimate, and a partial results file when
a long benchmark is interrupted, never over the committed one."""
import json

import pytest

from app.bench.report import BenchProgress


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_progress_estimates_what_is_left_from_the_parts_done():
    clock, lines = FakeClock(), []
    p = BenchProgress("engine", "Engine benchmark", 4, clock=clock, printer=lambda s, flush=False: lines.append(s))
    clock.t += 30
    p.done("first")
    clock.t += 30
    p.done("second")
    assert lines == ["[1/4] first: 0:30 so far, about 1:30 left", "[2/4] second: 1:00 so far, about 1:00 left"]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_run_leaves_a_partial_file_and_the_committed_one_alone(tmp_path, stop):
    (tmp_path / "engine.md").write_text("committed figures")
    p = BenchProgress("engine", "Engine benchmark", 3, out_dir=tmp_path, printer=lambda *a, **k: None)
    with pytest.raises(stop):
        with p.guard():
            p.keep("quality", {"student_sr": {"mid": [26.5, 0.8]}})
            p.done("quality")
            raise stop("stopped")
    assert (tmp_path / "engine.md").read_text() == "committed figures"
    md = (tmp_path / "engine.partial.md").read_text()
    assert "PARTIAL" in md and "after 1 of 3 parts" in md and "26.5" in md
    data = json.loads((tmp_path / "engine.partial.json").read_text())
    assert data["partial"] is True and data["quality"] == {"student_sr": {"mid": [26.5, 0.8]}}
