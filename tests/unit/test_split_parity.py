"""split_rows draws its split with NumPy: the very assignment scikit-learn's train_test_split makes
(so split.csv, and every output after it, are what they were when scikit-learn drew it)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from imgclust.core.protocols import split_rows


def _items(counts: list[int]) -> list[tuple[str, str]]:
    # classes interleaved, as a listing of several folders is not
    return [(f"c{c}/{i}.png", f"c{c}") for i in range(max(counts)) for c, n in enumerate(counts) if i < n]


@pytest.mark.parametrize("stratify", [True, False])
def test_split_rows_matches_scikit_learn(stratify):
    rng = np.random.default_rng(0)
    cases = 0
    while cases < 60:
        counts = rng.integers(2, 40, size=rng.integers(1, 6)).tolist()
        test_size = float(rng.choice([0.05, 0.1, 0.2, 0.25, 1 / 3, 0.5]))
        seed = int(rng.integers(0, 1000))
        items = _items(counts)
        labels = [c for _, c in items]
        n_test = int(np.ceil(test_size * len(items)))
        if stratify and (n_test < len(counts) or len(items) - n_test < len(counts)):
            continue
        train, _ = train_test_split(
            range(len(items)), test_size=test_size, random_state=seed, stratify=labels if stratify else None
        )
        expected = ["train" if i in set(train) else "test" for i in range(len(items))]
        assert [r["split"] for r in split_rows(items, test_size, seed, stratify=stratify)] == expected
        cases += 1
