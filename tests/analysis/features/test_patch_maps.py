import numpy as np
import torch

from clipsae.analysis.features.patch_maps import grid_cells, patch_maps
from clipsae.store.layout import HookLayout
from tests.analysis.helpers import GRID, reference_codes


def test_grid_cells_put_patches_row_major_and_cls_off_the_grid():
    lay = HookLayout("h", n_tokens=7, d=4, cls_token=True, grid=(2, 3))
    rows, cols = grid_cells(np.arange(7), lay)
    assert rows.tolist() == [-1, 0, 0, 0, 1, 1, 1] and cols.tolist() == [-1, 0, 1, 2, 0, 1, 2]


def test_patch_maps_equal_the_sae_codes_of_each_patch(codes, encoded):
    store_path, w = encoded
    x = torch.from_numpy(codes.store.read("blocks.0", np.arange(codes.n_images)).astype(np.float32))
    ref = reference_codes({"architecture": "topk", "k": 4}, w, x).numpy()  # (images, tokens, features)
    rng = np.random.default_rng(0)
    feat = rng.integers(0, codes.d_sae, 60)
    img = rng.integers(0, codes.n_images, 60)
    scale = ref[:, 1:, :].max(axis=(0, 1))[feat] + 0.5
    got = patch_maps(codes, feat, img, scale)
    want = np.clip(np.rint(255 * ref[img, 1:, feat] / scale[:, None]), 0, 255)
    assert got.shape == (60, GRID[0] * GRID[1])
    assert np.abs(got.astype(int) - want).max() <= 1


def test_grid_cells_leave_cls_and_registers_off_the_grid():
    lay = HookLayout("h", n_tokens=1 + 2 + 4, d=4, cls_token=True, grid=(2, 2), registers=2)
    rows, cols = grid_cells(np.arange(7), lay)
    assert rows.tolist() == [-1, -1, -1, 0, 0, 1, 1] and cols.tolist() == [-1, -1, -1, 0, 1, 0, 1]


def test_token_roles_name_cls_each_register_and_the_patches():
    from clipsae.analysis.features.patch_maps import token_roles

    lay = HookLayout("h", n_tokens=1 + 2 + 4, d=4, cls_token=True, grid=(2, 2), registers=2)
    assert token_roles(np.arange(7), lay) == ["cls", "register1", "register2", "patch", "patch", "patch", "patch"]
    assert token_roles(np.arange(3), HookLayout("h", 3, 4)) == ["token"] * 3
