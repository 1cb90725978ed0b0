"""The `eyefuse` command line. Each subcommand lives in its own module with `add_parser` and `run`."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so every `finally` and `with` unwinds: a
    half-written temporary file is removed, a recording finalised, as on SIGINT."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # only the main thread may set handlers; a host program's own handler is kept
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    from engine.process import configure_process

    configure_process()
    try:
        return int(args.run(args) or 0)
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
