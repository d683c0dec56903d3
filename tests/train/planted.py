"""Planted dictionaries: activations x = Σ_j a_j D_j + noise with a known dictionary D."""

from pathlib import Path

import numpy as np


def planted_dictionary(n_images: int, tokens: int, d: int, n_features: int, mean_active: float, seed: int,
                       noise: float = 0.01, exponent: float = 0.5):
    """(acts (n_images, tokens, d) float32, D (n_features, d) unit rows).

    Feature j fires independently with probability ∝ (j+1)^-exponent (a power law scaled so that
    ``mean_active`` fire per token), with magnitude uniform in [0.5, 1.5].
    """
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n_features, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    p = (np.arange(n_features) + 1.0) ** -exponent
    p *= mean_active / p.sum()
    rows = n_images * tokens
    active = rng.random((rows, n_features)) < p
    a = active * rng.uniform(0.5, 1.5, size=(rows, n_features))
    x = a @ D + noise * rng.standard_normal((rows, d))
    return x.reshape(n_images, tokens, d).astype(np.float32), D.astype(np.float32)


def recovery(D_true: np.ndarray, W_dec: np.ndarray) -> float:
    """Mean over true features of the best cosine with a learned feature (rows of W_dec)."""
    learned = W_dec / np.linalg.norm(W_dec, axis=1, keepdims=True)
    return float((D_true @ learned.T).max(axis=1).mean())


def hard_planted_dictionary(n_rows: int, d: int, n_features: int, mean_active: float, seed: int,
                            offset: float = 8.0, sigma: float = 0.8, partner: float = 0.5):
    """(x (n_rows, d) float32, D): a harder planted dictionary than :func:`planted_dictionary`.

    Feature 2i+1 joins feature 2i on half the rows where 2i fires (co-occurrence); magnitudes are
    lognormal(0, ``sigma``) (heavy-tailed); every row carries a common offset of norm ``offset``.
    """
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n_features, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    p = (np.arange(n_features) + 1.0) ** -0.5
    p *= mean_active / p.sum()
    active = rng.random((n_rows, n_features)) < p
    active[:, 1::2] |= active[:, 0::2] & (rng.random((n_rows, n_features // 2)) < partner)
    mu = rng.standard_normal(d)
    mu *= offset / np.linalg.norm(mu)
    x = (active * rng.lognormal(0.0, sigma, size=(n_rows, n_features))) @ D + mu + 0.01 * rng.standard_normal((n_rows, d))
    return x.astype(np.float32), D.astype(np.float32)


def write_small_planted(path, n_images: int, d: int, n_features: int, seed: int):
    """A store of ``n_images`` images × 2 tokens of :func:`planted_dictionary` (2 active per token) in hook ``a``,
    float32: the architectures' tests' small set."""
    from clipsae.store.writer import write_store

    acts, _ = planted_dictionary(n_images, 2, d, n_features, mean_active=2, seed=seed)
    write_store(path, {"a": acts}, [f"k{i:05d}" for i in range(len(acts))], attrs={"model": "planted"}, dtype="float32")
    return path


def write_planted_store(path):
    """(path, D): a store of 4,096 images × 8 tokens of :func:`planted_dictionary` (128 power-law features in
    64 dimensions, 3 active per token on average) in hook ``x``, the suite's planted set."""
    from clipsae.store.writer import write_store

    acts, dictionary = planted_dictionary(4096, 8, 64, 128, mean_active=3, seed=0)
    write_store(path, {"x": acts}, [f"img{i:05d}" for i in range(len(acts))], attrs={"model": "planted"})
    return path, dictionary


def planted_pair(root, n_images: int = 4096, d_a: int = 32, d_b: int = 24, shared: int = 24, own: int = 8,
                 mean_active: float = 3.0, seed: int = 0, drop_b: int = 0):
    """Two stores of one sparse code per image through different random dictionaries: ``shared`` features both
    models have, ``own`` more each that only one has; hook ``x`` in a.zarr (d_a) and b.zarr (d_b), one token per
    image. b.zarr holds the images in reverse order, less its first ``drop_b``. Returns (a, b, D_a, D_b) with
    D_a (shared + own, d_a) the rows of A's features (shared first, then A's own), D_b likewise."""
    from clipsae.store.writer import write_store

    rng = np.random.default_rng(seed)
    n_feat = shared + 2 * own
    p = (np.arange(n_feat) % (shared + own) + 1.0) ** -0.3
    p *= mean_active / p[: shared + own].sum()
    codes = (rng.random((n_images, n_feat)) < p) * rng.uniform(0.5, 1.5, size=(n_images, n_feat))

    def unit(n, d):
        D = rng.standard_normal((n, d))
        return D / np.linalg.norm(D, axis=1, keepdims=True)

    D_a, D_b = unit(shared + own, d_a), unit(shared + own, d_b)
    a_codes = codes[:, : shared + own]
    b_codes = np.concatenate([codes[:, :shared], codes[:, shared + own:]], axis=1)
    x_a = a_codes @ D_a + 0.01 * rng.standard_normal((n_images, d_a))
    x_b = b_codes @ D_b + 0.01 * rng.standard_normal((n_images, d_b))
    keys = np.array([f"img{i:05d}" for i in range(n_images)])
    root = Path(root)
    write_store(root / "a.zarr", {"x": x_a[:, None].astype(np.float32)}, list(keys), attrs={"model": "planted-a"})
    order = np.arange(n_images)[::-1][drop_b:]
    write_store(root / "b.zarr", {"x": x_b[order][:, None].astype(np.float32)}, list(keys[order]),
                attrs={"model": "planted-b"})
    return root / "a.zarr", root / "b.zarr", D_a.astype(np.float32), D_b.astype(np.float32)
