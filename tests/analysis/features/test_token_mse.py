import numpy as np
import pytest

from clipsae.analysis.features.token_mse import token_mse
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


@pytest.fixture(scope="module")
def snapshot_codes(tmp_path_factory):
    """A store, a clipsae run on it with three snapshots, each snapshot encoded as codes s<tokens>."""
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from clipsae.train.configure import configure_training
    from clipsae.train.trainer import run_train
    from tests.analysis.helpers import make_store

    tmp = tmp_path_factory.mktemp("snapshots")
    store = make_store(tmp / "s.zarr", n_parts=2, per_part=12)
    plan = configure_training(store, expansion="2", k="2", batch_size=16, steps=30, holdout=0.0, out=tmp / "run",
                              snapshot_every=160, device="cpu")
    run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held)
    names = []
    for snap in sorted((tmp / "run" / "snapshots").iterdir(), key=lambda p: int(p.name)):
        run_encode(EncodeConfig(store, snap, name=f"s{snap.name}", progress=False))
        names.append(f"s{snap.name}")
    return store, names


def test_several_codes_draw_their_maps_side_by_side(snapshot_codes, run_cli, tmp_path):
    import csv

    from clipsae.store.codes import Codes
    from clipsae.store.reader import ActivationStore

    store, names = snapshot_codes
    assert names == ["s160", "s320", "s480"]
    code, out, err = run_cli("analyze", "token-mse", "--store", store, *[a for n in names for a in ("--codes", n)],
                             "--out", tmp_path)
    assert code == 0, err
    with open(tmp_path / "token_mse_series.csv") as fh:
        rows = list(csv.DictReader(fh))
    s = ActivationStore.open(store)
    for n in names:
        c = Codes(s, n)
        ref = token_mse(c.sums(), c.token_positions, s.layout(c.hook))
        mine = [r for r in rows if r["codes"] == n]
        assert [int(r["token"]) for r in mine] == ref.positions_T.tolist()
        np.testing.assert_allclose([float(r["mse"]) for r in mine], ref.mse_T, rtol=1e-5)
    assert "s160: 160 tokens" in out and "s480: 480 tokens" in out
    assert (tmp_path / "token_mse_series.png").read_bytes()[:4] == b"\x89PNG"


def test_codes_of_other_tokens_cannot_share_a_figure(snapshot_codes, run_cli, tmp_path):
    from clipsae.analysis.encode import EncodeConfig, run_encode
    from clipsae.store.codes import Codes
    from clipsae.store.reader import ActivationStore

    store, names = snapshot_codes
    sae = Codes(ActivationStore.open(store), names[0]).identity["provenance"]["sae_path"]
    run_encode(EncodeConfig(store, sae, name="patches", tokens="patches", progress=False))
    code, _, err = run_cli("analyze", "token-mse", "--store", store, "--codes", names[0], "--codes", "patches",
                           "--out", tmp_path)
    assert code == 1 and "do not cover the same tokens" in err and len(err.strip().splitlines()) == 1
