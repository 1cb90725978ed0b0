"""The `eyefuse` command line. Each subcommand lives in its own module with `add_parser` and `run`."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module implementing `add_parser(subparsers)` and `run(args) -> int`
SUBCOMMANDS = {
    "sources": "app.sources_cmd",
    "capture": "app.capture_cmd",
    "enhance": "app.enhance_cmd",
    "enhance-burst": "app.enhance_burst_cmd",
    "live": "app.live_cmd",
    "models": "app.models_cmd",
    "bench": "app.bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eyefuse", description="Real-time camera enhancement on the CPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        try:
            importlib.import_module(module).add_parser(sub)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real missing dependency inside the module: say so
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engine.process import configure_process

    configure_process()
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
