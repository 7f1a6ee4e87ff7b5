"""PCA's fit runs at a fixed number of BLAS threads, never the machine's core count, so the model is
the same bits on a 1-core machine and on a larger one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from imgclust.core import clustering

FIT = r"""
import hashlib, os, sys
os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(",")})  # before numpy: OpenBLAS reads it
import numpy as np
from imgclust.core.clustering import fit_model
rng = np.random.default_rng(0)
features = rng.integers(0, 256, (600, 48 * 48), dtype=np.uint8)  # large enough for threaded products
is_train = np.arange(600) % 10 != 0
model = fit_model(features, is_train, method="pixels", pca={"n_components": 20}, kmeans={"n_clusters": 3,
    "random_state": 0, "n_init": 2}, scalable={"threshold": 0, "batch_size": 256}, pca_on_all=False)
pca = model.named_steps["pca"]
print(hashlib.sha256(pca.components_.tobytes() + pca.mean_.tobytes()).hexdigest())
"""


def _fit_on(cpus: list[int]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", FIT, ",".join(map(str, cpus))], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_pca_fit_is_the_same_on_one_core_and_two():
    cpus = sorted(os.sched_getaffinity(0))[:2]
    assert _fit_on(cpus[:1]) == _fit_on(cpus)


def test_pca_fit_uses_the_fixed_blas_thread_count():
    from threadpoolctl import threadpool_info

    with clustering.one_thread(), clustering.pca_fit_threads():
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        openmp = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "openmp"]
    assert blas and set(blas) == {clustering.PCA_FIT_BLAS_THREADS}
    assert set(openmp) <= {1}
