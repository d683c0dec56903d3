"""Each row's k largest values in two passes (``train/topk.py``), against ``torch.topk`` and a plain sort."""

import numpy as np
import pytest
import torch

from clipsae.train.topk import topk_columns, topk_sorted

SHAPES = pytest.mark.parametrize("n, k", [(128, 4), (4096, 2), (768, 32), (100, 3), (96, 40)],
                                 ids=["blocks of 8", "blocks of 16", "768 columns", "not a multiple of 8", "k too large"])
VALUES = pytest.mark.parametrize("values", ["continuous", "ties"])


def _rows(n: int, k: int, values: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(n + k)
    z = torch.randn(64, n, generator=g)
    if values == "ties":
        z = (z * 2).round()  # a few distinct values, many equal
    z[0] = torch.arange(n, dtype=z.dtype)  # a row whose k largest sit in k neighbouring columns
    return z


@SHAPES
@VALUES
def test_topk_columns_take_the_values_torch_topk_takes(n, k, values):
    z = _rows(n, k, values)
    cols = topk_columns(z, k)
    assert cols.shape == (64, k)
    assert (cols.sort(1).values.diff(dim=1) > 0).all()  # k distinct columns per row
    expected = z.topk(k, dim=1).values
    assert torch.equal(z.gather(1, cols).sort(1, descending=True).values, expected)


@SHAPES
@VALUES
def test_topk_sorted_gives_values_largest_first_and_equal_values_in_column_order(n, k, values):
    z = _rows(n, k, values)
    vals, cols = topk_sorted(z, k)
    assert torch.equal(vals, z.topk(k, dim=1).values) and torch.equal(z.gather(1, cols), vals)
    for row_cols, row_vals in zip(cols.numpy(), vals.numpy()):
        assert list(np.lexsort((row_cols, -row_vals))) == list(range(k))  # already in (value desc, column) order
