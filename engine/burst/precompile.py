"""`python -m engine.burst.precompile`: compile the burst kernels into numba's on-disk cache now, so
the first `eyefuse enhance-burst` or burst view does not stop for it (the set-up commands run it)."""
from __future__ import annotations

import sys

from engine.burst.fusion import BurstConfig, prepare_for_bursts


def main() -> int:
    prepare_for_bursts(BurstConfig(), announce=lambda msg: print(msg, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
