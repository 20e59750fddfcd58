"""Runs inside the aarch64 python under qemu-user (no tvmptq, no torch: only tvm and numpy).

    python _guest_run.py model.so inputs.npz outputs.npz BATCH CALLS

inputs.npz holds in0, in1, ... with a multiple of BATCH samples; every chunk of BATCH is run once
(CALLS=-1) and the outputs are written as out0, out1, ... . CALLS >= 0: only the first chunk, run
CALLS times, nothing written (the instruction-count difference method: runs with CALLS=k and
CALLS=0 differ by exactly k program calls).
"""
import sys

import numpy as np
import tvm
from tvm import relax


def main(lib_path, inputs_path, outputs_path, batch, calls):
    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(lib_path), dev)
    data = np.load(inputs_path)
    arrays = [data[f"in{i}"] for i in range(len(data.files))]
    n = len(arrays[0])
    if calls >= 0:
        args = [tvm.runtime.tensor(np.ascontiguousarray(a[:batch]), dev) for a in arrays]
        for _ in range(calls):
            vm["main"](*args)
        return
    outs = []
    for i in range(0, n, batch):
        res = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a[i:i + batch]), dev) for a in arrays])
        res = [res] if hasattr(res, "numpy") else list(res)
        outs.append([r.numpy() for r in res])
    np.savez(outputs_path, **{f"out{j}": np.concatenate(parts) for j, parts in enumerate(zip(*outs))})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
