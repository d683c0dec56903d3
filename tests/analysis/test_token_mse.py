import numpy as np
import pytest

from clipsae.analysis.token_mse import token_mse
from clipsae.errors import ClipsaeError
from clipsae.store.codes import PartSums
from clipsae.store.layout import HookLayout


def test_mse_and_fvu_equal_a_direct_computation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 5, 6)) + np.arange(5)[None, :, None]
    x_hat = x + 0.3 * rng.standard_normal(x.shape)
    sums = PartSums(np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2), ((x - x_hat) ** 2).sum((0, 2)),
                    (x**2).sum((0, 2)), x.sum(0), n_images=30)
    t = token_mse(sums, np.arange(5), HookLayout("h", 5, 6, cls_token=True, grid=(2, 2)))
    np.testing.assert_allclose(t.mse_T, ((x - x_hat) ** 2).mean((0, 2)))
    np.testing.assert_allclose(t.fvu_T, ((x - x_hat) ** 2).sum((0, 2)) / ((x - x.mean(0)) ** 2).sum((0, 2)))
    flat = x.reshape(-1, 6)
    assert t.fvu == pytest.approx(((x - x_hat) ** 2).sum() / ((flat - flat.mean(0)) ** 2).sum())
    assert t.rows_T.tolist() == [-1, 0, 0, 1, 1] and t.cols_T.tolist() == [-1, 0, 1, 0, 1]


def test_codes_of_one_token_are_refused():
    sums = PartSums(*(np.zeros(1),) * 6, np.zeros((1, 3)), n_images=4)
    with pytest.raises(ClipsaeError, match="several tokens"):
        token_mse(sums, np.arange(1), HookLayout("h", 1, 3))
