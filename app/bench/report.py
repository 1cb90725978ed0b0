"""Writing benchmark results: a Markdown table for people, a JSON twin for tools, and the machine."""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


# The vector extensions that decide a CPU's speed here (and ONNX Runtime's int8 arithmetic: with VNNI
# its u8 x s8 products do not saturate as they do on AVX2), so results from different machines are
# not compared as if they were one.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    flags: list[str] = []
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((ln for ln in lines if ln.startswith("model name")), None)
        cpu = model.split(":", 1)[1].strip() if model else cpu
        have = set(next((ln for ln in lines if ln.startswith("flags")), ":").split(":", 1)[1].split())
        flags = [f for f in SIMD_FLAGS if f in have]
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "simd": " ".join(flags) or "unknown",
        "logical_cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        # Other work on a 2-core machine moves every timing: say how busy it was when results were written.
        "load_avg_1min_at_write": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    for mod in ("numpy", "cv2", "onnxruntime"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                            cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_during(fn, *args, interval_s: float = 0.005, **kw) -> tuple[Any, float]:
    """(fn(*args, **kw), the highest resident memory in MiB seen while it ran): sampled by a thread
    every `interval_s`, so the process's earlier peaks (making the input, say) do not count."""
    import threading

    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval_s):
            peak[0] = max(peak[0], proc.memory_info().rss)

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    try:
        out = fn(*args, **kw)
    finally:
        done.set()
        sampler.join(10.0)
    peak[0] = max(peak[0], proc.memory_info().rss)
    return out, peak[0] / 2**20


class BenchProgress:
    """A long benchmark's overall progress and what it has measured so far.

    `done(label)` after each of `total` parts prints "[k/N] label: elapsed, about T left" (the
    estimate: the mean time of a part so far); `keep(key, value)` records a measurement. If the run
    is interrupted (Ctrl-C, SIGTERM, an error), `guard()` writes what was kept to NAME.partial.md and
    .json, marked partial, beside the results (never over the committed NAME.md), and re-raises.
    """

    def __init__(self, name: str, title: str, total: int, out_dir: str | Path | None = None,
                 clock=None, printer=print):
        import time

        self.name, self.title, self.total, self.out_dir = name, title, max(1, total), out_dir
        self.clock = clock or time.monotonic
        self.printer = printer
        self.t0 = self.clock()
        self.count = 0
        self.kept: dict[str, Any] = {}

    def done(self, label: str, n: int = 1) -> None:
        self.count += n
        elapsed = self.clock() - self.t0
        left = elapsed / self.count * max(0, self.total - self.count)
        self.printer(f"[{self.count}/{self.total}] {label}: {_mmss(elapsed)} so far, about {_mmss(left)} left",
                     flush=True)

    def keep(self, key: str, value: Any) -> None:
        self.kept[key] = value

    @contextlib.contextmanager
    def guard(self):
        try:
            yield self
        except BaseException as exc:
            path = self.write_partial(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            self.printer(f"interrupted: what was measured is in {path} (marked partial)", flush=True)
            raise

    def write_partial(self, why: str) -> Path:
        note = (f"**PARTIAL**: this run stopped after {self.count} of {self.total} parts ({why}); the figures "
                f"below are what it had measured. The committed {self.name}.md is untouched.")
        body = "```json\n" + json.dumps(self.kept, indent=1, default=str) + "\n```"
        return write_results(f"{self.name}.partial", f"{self.title} (partial)", [("Partial run", note),
                                                                                 ("Measured so far", body)],
                             {"partial": True, "parts_done": self.count, "parts_total": self.total, "why": why,
                              **self.kept}, out_dir=self.out_dir)


def _mmss(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, title: str, sections: list[tuple[str, str]], data: dict[str, Any],
                  out_dir: str | Path | None = None, command: str = "") -> Path:
    """Write `name`.md (title, how it was run, the machine, then each (heading, markdown) section)
    and `name`.json (data + machine). Returns the Markdown path."""
    out = Path(out_dir) if out_dir else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    md = [f"# {title}", "", f"Measured by `{command or 'eyefuse bench ' + name}` on {machine['date']}.", "",
          "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if k != "date"), ""]
    for heading, body in sections:
        md += [f"## {heading}", "", body, ""]
    (out / f"{name}.md").write_text("\n".join(md))
    (out / f"{name}.json").write_text(json.dumps({"machine": machine, **data}, indent=2, default=str) + "\n")
    return out / f"{name}.md"


def run_child(code: str, out: Path) -> dict:
    """Runs `code` in a fresh Python at the repository root, and returns the JSON it wrote to `out`
    (deleted after reading)."""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
    result = json.loads(out.read_text())
    out.unlink()
    return result
