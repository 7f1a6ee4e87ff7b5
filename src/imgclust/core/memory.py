"""Large arrays in memory whose pages the kernel maps in at allocation.

Filling a newly allocated matrix costs a page fault per page the first time it is touched. For the
2.6 GB float32 matrix of PCA's fit (18,000 images of 190 x 190 pixels), on the 2-core virtual
machines this project is measured on: ``np.empty`` (which asks for huge pages itself at this size)
took 0.6-6.5 s to allocate and fill, a map asking for transparent huge pages (MADV_HUGEPAGE)
0.6-5.4 s (the kernel compacts memory to find them, and a pipeline leaves it full of page cache),
pages mapped in at once (MAP_POPULATE) 1.1 s every time. The train stage took 17.8-18.2 s with the
latter against 20.1-23.2 s with huge pages (four runs each, alternating), though products over 4 KiB
pages were 7 % slower.
"""

from __future__ import annotations

import mmap

import numpy as np

# below this an ordinary allocation is as fast; above it the request pays
POPULATE_MIN_BYTES = 64 << 20


def large_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """``np.empty(shape, dtype)``, its pages mapped in at once when it is large (and the platform
    can). The array owns its memory: it is freed with the array."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < POPULATE_MIN_BYTES or not hasattr(mmap, "MAP_POPULATE"):
        return np.empty(shape, dtype)
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    return np.frombuffer(memory, dtype=dtype).reshape(shape)
