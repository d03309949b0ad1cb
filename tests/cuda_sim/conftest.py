"""tests/cuda_sim runs the CUDA kernels in Numba's simulator, in a process of its own:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/cuda_sim

On a machine with a GPU the same tests run on the device (the launch sizes are then the real ones, so
more of each kernel runs in one block; the simulator-only tests skip):

    GRAPHC_CUDA_TESTS=device python -m pytest -q tests/cuda_sim

Numba reads the setting once, at import, and ``numba.cuda.compile_ptx`` (the PTX tests of the main
suite) is unavailable under it, so the two cannot share a process. Without it these tests would try to
run on a GPU (or fail for lack of one): stop loudly instead.
"""
from __future__ import annotations

import os

import pytest

ON_DEVICE = os.environ.get("GRAPHC_CUDA_TESTS") == "device" and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1"
if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and not ON_DEVICE:
    pytest.exit("tests/cuda_sim needs Numba's CUDA simulator: run it as "
                "NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/cuda_sim", returncode=4)

import numba  # noqa: E402  (after the check: numba reads NUMBA_ENABLE_CUDASIM when imported)

if not numba.config.ENABLE_CUDASIM and not ON_DEVICE:  # numba was imported before the variable was set
    pytest.exit("NUMBA_ENABLE_CUDASIM=1 is set but Numba was imported without it", returncode=4)
