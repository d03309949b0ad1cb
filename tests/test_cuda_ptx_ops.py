"""Every op graph of tests/test_numba_cpu.py compiled offline for a real GPU (sm_90 PTX, no GPU needed).

Numba's CUDA simulator runs kernels as Python, so it accepts code a GPU compiler refuses: on the first
real GPU, random_shift2d's offsets came out of ``math.floor`` as floats (CUDA's floor returns a float;
the cpu's an int) and could not index an array, which the simulator never noticed. Type inference and
NVVM on every kernel of every op graph catch that class of error here, in the main suite.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("NUMBA_ENABLE_CUDASIM=1: compile_ptx is unavailable in Numba's CUDA simulator",
                allow_module_level=True)
pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install 'numba-cuda[cu13]')")

sys.path.insert(0, str(Path(__file__).parent))
from test_numba_cpu import GRAPHS  # noqa: E402

from graphc.backends import lower_for  # noqa: E402
from graphc.backends.numba_cuda import compile_ptx, module_of  # noqa: E402

CASES = [(name, "float32", "im2col") for name in GRAPHS] + [("conv", "float64", "direct")]


@pytest.mark.parametrize("name,dtype,conv", CASES, ids=["-".join(c) for c in CASES])
def test_every_kernel_of_the_op_graph_compiles_for_a_gpu(name, dtype, conv):
    outputs, inputs = GRAPHS[name](dtype)[:2]
    program = lower_for(outputs, inputs=inputs, backend="cuda", conv=conv)
    ptx = compile_ptx(program, cc=(9, 0))
    generated = re.findall(r"^def (k\w+)\(", module_of(program)[1], re.M)  # found independently, in the source
    assert generated and set(generated) <= set(ptx)
    assert all(".entry" in text and ".target sm_90" in text for text in ptx.values())
