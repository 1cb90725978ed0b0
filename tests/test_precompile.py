"""The burst kernels' compile is announced when numba has no cache for them, and silent after."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# dis + robust: a configuration that warms no kernel, so the probe itself compiles nothing
_PROBE = """
from engine.burst.sampling_kernels import uncached
from engine.burst.align import AlignConfig
from engine.burst.fusion import BurstConfig, prepare_for_bursts
from engine.burst.merge import MergeConfig
said = []
prepare_for_bursts(BurstConfig(align=AlignConfig(method="dis"), merge=MergeConfig(method="robust")), said.append)
print(len(uncached()), said)
"""


def _probe(cache_dir: Path) -> str:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.strip()


def test_an_empty_cache_is_announced_and_a_filled_one_is_not(tmp_path):
    cold = _probe(tmp_path)
    count, said = cold.split(" ", 1)
    assert int(count) >= 10 and "compiling" in said and f"{count} burst kernels" in said
    # a cache index for every kernel (what a compile leaves) silences it
    for p in _index_paths(tmp_path):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    assert _probe(tmp_path) == "0 []"


def _index_paths(cache_dir: Path) -> list[Path]:
    code = ("from engine.burst.sampling_kernels import cached_kernels\n"
            "for k in cached_kernels():\n"
            "    print(k._cache._cache_file._index_path)\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return [Path(line) for line in out.stdout.split()]
