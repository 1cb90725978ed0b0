"""The burst kernels' threads: numba's OpenMP layer where it loads, its workers waiting passively,
and the environment's choice kept when it makes one. Each case runs in a fresh interpreter, as the
layer is chosen once per process, at the first parallel kernel."""
import json
import os
import subprocess
import sys

_PROBE = """
import json, os
import numba, numpy as np
from numba import njit, prange
import engine.burst.align_kernels
import engine.burst.merge_kernels
if CONFIGURE:
    from engine.process import configure_process
    configure_process(keep_freed=False)

@njit(parallel=True)
def double(a):
    for i in prange(a.size):
        a[i] *= 2.0

a = np.ones(1000)
double(a)
try:
    from numba.np.ufunc import omppool  # noqa: F401
    omp_loads = True
except ImportError:
    omp_loads = False
print(json.dumps({"layer": numba.threading_layer(), "policy": os.environ.get("OMP_WAIT_POLICY"),
                  "priority": list(numba.config.THREADING_LAYER_PRIORITY),
                  "omp_loads": omp_loads, "sum": float(a.sum())}))
"""


def _probe(configure: bool = True, **env_overrides: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY", "OMP_WAIT_POLICY")}
    env.update(env_overrides)
    out = subprocess.run([sys.executable, "-c", f"CONFIGURE = {configure}\n" + _PROBE], capture_output=True, text=True, check=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kernels_run_on_openmp_threads_that_wait_passively():
    got = _probe()
    assert got["sum"] == 2000.0
    assert got["policy"] == "passive"
    # OpenMP where numba's OpenMP pool loads (it needs libgomp); otherwise a layer that works
    assert got["layer"] == ("omp" if got["omp_loads"] else got["layer"])
    assert got["layer"] in ("omp", "tbb", "workqueue")


def test_importing_the_kernels_changes_no_process_setting():
    got = _probe(configure=False)
    assert got["sum"] == 2000.0
    assert got["policy"] is None
    assert got["priority"] == ["tbb", "omp", "workqueue"]  # numba's own default, untouched


def test_the_environment_chooses_the_layer_and_the_wait_policy_when_it_names_them():
    got = _probe(NUMBA_THREADING_LAYER="workqueue", OMP_WAIT_POLICY="active")
    assert got == {"layer": "workqueue", "policy": "active", "omp_loads": got["omp_loads"], "sum": 2000.0,
                   "priority": got["priority"]}


_CONCURRENT = """
import threading
import numpy as np
from engine.burst.align import align
from engine.burst.merge import MergeConfig, merge
from engine.burst.raw import NoiseModel, grey

rng = np.random.default_rng(0)
planes = rng.random((4, 4, 64, 96), dtype=np.float32) * 0.5
noise = NoiseModel((1e-3,) * 4, (1e-5,) * 4)
alignment = align(grey(planes), 0, noise)
errors = []

def run(cfg):
    try:
        for _ in range(20):
            merge(planes, alignment, noise, cfg)
    except Exception as e:  # noqa: BLE001
        errors.append(e)

threads = [threading.Thread(target=run, args=(cfg,)) for cfg in (MergeConfig(), MergeConfig(method="robust"))]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("ok" if not errors else errors)
"""


def test_concurrent_merges_are_safe_on_the_workqueue_fallback():
    # workqueue aborts the whole process when two threads launch parallel kernels at once: every
    # parallel kernel, the warps' included, must run under the kernels' lock
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    env["NUMBA_THREADING_LAYER"] = "workqueue"
    out = subprocess.run([sys.executable, "-c", _CONCURRENT], capture_output=True, text=True, env=env, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout[-2000:] + out.stderr[-2000:]
