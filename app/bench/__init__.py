"""`eyefuse bench WHAT`: benchmarks that measure on this machine and write benchmarks/results/WHAT.{md,json}."""
from __future__ import annotations

import importlib

BENCHES = {
    "capture": "app.bench.capture",
    "engine": "app.bench.engine",
    "burst": "app.bench.burst",
    "live": "app.bench.live",
    "teacher": "app.bench.teacher",
}


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark and write its results file")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    for name, module in BENCHES.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        bp = bsub.add_parser(name, help=mod.__doc__.strip().splitlines()[0] if mod.__doc__ else name)
        bp.add_argument("--out-dir", default=None, help="where to write WHAT.md and WHAT.json "
                        "(default: benchmarks/results in the repository)")
        mod.add_arguments(bp)
        bp.set_defaults(run=mod.run)
