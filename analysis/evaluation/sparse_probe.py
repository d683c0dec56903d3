"""Sparse probing (SAEBench's, at image level): how well k features of an SAE predict a concept.

Tasks: each class one-vs-rest (the store's labels) and each binary attribute. Images are split once by
key, the same way for every SAE on the store (:func:`in_test_split`). Each task is balanced in each split,
as SAEBench balances its datasets: all positives and as many negatives (or the reverse where negatives
are fewer), the extra ones left out in the order of their keys' hashes, so chance is 0.5.

For each task and each k: the k features of largest |mean over positives − mean over negatives| of
the per-image value (``by``) on the training images (ties to the smaller feature), then scikit-learn's
L2 logistic regression (C = 1, SAEBench's) on those k values; the test accuracy. The same regression on
the hook's activations of the same images, pooled over the codes' tokens the same way (max, CLS or
mean per dimension), is the dense ceiling.

Memory: one (tasks, d_sae) float64 matrix of mean differences, the chosen features' values of the
images used (sparse), and, for the ceiling, the pooled activations of those images.
"""

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from clipsae.analysis.output import by_setting
from clipsae.errors import ClipsaeError

TEST_SHARE = 0.2  # of the images, by key
MIN_PER_SIDE = 2  # positives and negatives a task needs in each split
DEFAULT_KS = (1, 2, 5)
MAX_ITER = 1000  # SAEBench's; scikit-learn's default warns before converging on raw activations
COLUMNS = ("task", "k", "features", "accuracy", "dense_accuracy", "train_images", "test_images")


def summary_file(by: str) -> str:
    """The name of sparse_probe.json for ``--by by``, which ``analyze compare`` reads."""
    return by_setting("sparse_probe", ".json", by)


def key_hashes(keys) -> np.ndarray:
    """Each key's place in [0, 1): the first 8 bytes of SHA-256 of its UTF-8 text, over 2⁶⁴."""
    return np.array([int.from_bytes(hashlib.sha256(str(k).encode()).digest()[:8], "big") / 2.0**64 for k in keys])


def in_test_split(keys) -> np.ndarray:
    """True for the images that test every task: those whose key hashes below :data:`TEST_SHARE`."""
    return key_hashes(keys) < TEST_SHARE


@dataclass(frozen=True)
class Task:
    """A binary concept over the store's images: ``positive_I``, where ``known_I``."""

    name: str
    positive_I: np.ndarray
    known_I: np.ndarray


def tasks_of(labels: np.ndarray, class_names: dict[int, str], attributes=None) -> list[Task]:
    """One task per class present in the labels (one-vs-rest over the labelled images) and per binary attribute."""
    tasks = [Task(f"class={class_names.get(int(c), int(c))}", labels == c, labels >= 0)
             for c in np.unique(labels[labels >= 0])]
    if attributes is not None:
        for name, values, binary in zip(attributes.names, attributes.values_AI, attributes.binary):
            if binary:
                tasks.append(Task(name, values == 1, ~np.isnan(values)))
    return tasks


@dataclass(frozen=True)
class Sides:
    """A task's balanced images in one split: positives and negatives, equally many, ascending."""

    positives: np.ndarray
    negatives: np.ndarray

    @property
    def images(self) -> np.ndarray:
        return np.concatenate([self.positives, self.negatives])

    @property
    def y(self) -> np.ndarray:
        return np.concatenate([np.ones(len(self.positives)), np.zeros(len(self.negatives))])


def balanced(task: Task, in_split: np.ndarray, rank: np.ndarray) -> Sides:
    """The task's images of one split, the larger side cut to the smaller one's size by key-hash order."""
    pos = np.flatnonzero(task.known_I & in_split & task.positive_I)
    neg = np.flatnonzero(task.known_I & in_split & ~task.positive_I)
    n = min(len(pos), len(neg))
    keep = lambda idx: np.sort(idx[np.argsort(rank[idx], kind="stable")[:n]])  # noqa: E731
    return Sides(keep(pos), keep(neg))


@dataclass
class Plan:
    """The tasks that can be scored, each with its train and test sides; and why the others cannot."""

    tasks: list[Task]
    train: list[Sides]
    test: list[Sides]
    skipped: list[str]


def plan(tasks: list[Task], keys) -> Plan:
    rank = key_hashes(keys)
    is_test = rank < TEST_SHARE
    out = Plan([], [], [], [])
    for t in tasks:
        tr, te = balanced(t, ~is_test, rank), balanced(t, is_test, rank)
        if min(len(tr.positives), len(te.positives)) < MIN_PER_SIDE:
            out.skipped.append(f"{t.name}: {len(tr.positives)} train and {len(te.positives)} test images on its "
                               f"smaller side, fewer than {MIN_PER_SIDE}")
            continue
        out.tasks.append(t)
        out.train.append(tr)
        out.test.append(te)
    return out


def block_matrix(block, n_features: int) -> sparse.csr_matrix:
    """A block of per-image values (store.codes.ImageValues) as an (images, features) CSR matrix."""
    return sparse.csr_matrix((block.values_E.astype(np.float64), block.latents_E, block.offsets),
                             shape=(len(block.images_I), n_features))


def mean_differences(codes, p: Plan, by: str) -> np.ndarray:
    """(tasks, d_sae): mean per-image value over each task's training positives minus over its negatives."""
    n_images = codes.n_images
    rows, cols, w = [], [], []
    for t, sides in enumerate(p.train):
        rows += [t] * len(sides.images)
        cols.append(sides.images)
        w.append(np.concatenate([np.full(len(sides.positives), 1 / len(sides.positives)),
                                 np.full(len(sides.negatives), -1 / len(sides.negatives))]))
    weights_TI = sparse.csc_matrix((np.concatenate(w), (np.array(rows), np.concatenate(cols))),
                                   shape=(len(p.tasks), n_images))
    diff_TF = np.zeros((len(p.tasks), codes.d_sae))
    for block in codes.iter_images(by):
        diff_TF += (weights_TI[:, block.images_I] @ block_matrix(block, codes.d_sae)).toarray()
    return diff_TF


def top_features(diff_TF: np.ndarray, k: int) -> np.ndarray:
    """(tasks, k): the k features of largest |difference| per task, ties to the smaller feature."""
    order = np.argsort(-np.abs(diff_TF), axis=1, kind="stable")
    return order[:, :k]


def chosen_values(codes, images: np.ndarray, features: np.ndarray, by: str) -> sparse.csr_matrix:
    """(store images, len(features)) per-image values of ``features`` (ascending), rows outside ``images`` empty."""
    col = np.full(codes.d_sae, -1)
    col[features] = np.arange(len(features))
    wanted = np.zeros(codes.n_images, dtype=bool)
    wanted[images] = True
    r, c, v = [], [], []
    for block in codes.iter_images(by):
        img = block.image_of_E
        keep = (col[block.latents_E] >= 0) & wanted[img]
        r.append(img[keep])
        c.append(col[block.latents_E[keep]])
        v.append(block.values_E[keep].astype(np.float64))
    return sparse.csr_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))),
                             shape=(codes.n_images, len(features)))


def pooled_activations(store, hook: str, positions: np.ndarray, images: np.ndarray, by: str,
                       batch: int = 256) -> np.ndarray:
    """(len(images), d) float32: each image's activations at ``positions``, pooled as ``by`` pools codes."""
    pool = {"max": lambda x: x.max(1), "mean": lambda x: x.mean(1), "cls": lambda x: x[:, 0]}[by]
    out = np.empty((len(images), store.d(hook)), dtype=np.float32)
    for lo in range(0, len(images), batch):
        out[lo:lo + batch] = pool(store.read(hook, images[lo:lo + batch])[:, positions].astype(np.float32))
    return out


def fit_logistic(x, y, class_weight=None):
    """scikit-learn's L2 logistic regression (C = 1, up to :data:`MAX_ITER` iterations, SAEBench's) fitted to (x, y)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        # Reported by the score itself; a probe that has not converged in MAX_ITER is what it is.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=1.0, max_iter=MAX_ITER, class_weight=class_weight).fit(x, y)


def _accuracy(x_train, y_train, x_test, y_test) -> float:
    return float((fit_logistic(x_train, y_train).predict(x_test) == y_test).mean())


@dataclass
class Result:
    """One row per (task, k) in :data:`COLUMNS` order, and the tasks left out with why."""

    rows: list[tuple]
    skipped: list[str]

    def mean_accuracy(self) -> dict[int, float]:
        ks = sorted({r[1] for r in self.rows})
        return {k: float(np.mean([r[3] for r in self.rows if r[1] == k])) for k in ks}

    def mean_dense(self) -> float:
        dense = [r[4] for r in self.rows if r[4] is not None]
        return float(np.mean(dense)) if dense else float("nan")


def sparse_probe(codes, tasks: list[Task], ks=DEFAULT_KS, by: str = "max", dense: bool = True,
                 progress: bool = False) -> Result:
    """Score every task at every k (and the dense ceiling): see the module's procedure."""
    from tqdm import tqdm

    ks = sorted(set(ks))
    if not ks or ks[0] < 1 or ks[-1] > codes.d_sae:
        raise ClipsaeError(f"--k must name feature counts from 1 to {codes.d_sae}, not {','.join(map(str, ks))}")
    p = plan(tasks, codes.store.keys())
    if not p.tasks:
        raise ClipsaeError("no task has enough images on both sides of both splits"
                           + (f" ({p.skipped[0]})" if p.skipped else " (the store has no labels and no attributes were given)"))
    chosen_TK = top_features(mean_differences(codes, p, by), ks[-1])
    features = np.unique(chosen_TK)
    used = np.unique(np.concatenate([s.images for s in p.train + p.test]))
    values = chosen_values(codes, used, features, by)
    # ``features`` and ``used`` are sorted: a feature's column and an image's row are where they sort in.
    pooled_UD = pooled_activations(codes.store, codes.hook, codes.token_positions, used, by) if dense else None
    rows = []
    for t, task in enumerate(tqdm(p.tasks, desc="sparse probe", unit="task", disable=not progress)):
        tr, te = p.train[t], p.test[t]
        dense_acc = None
        if dense:
            at = lambda s: pooled_UD[np.searchsorted(used, s.images)]  # noqa: E731
            dense_acc = _accuracy(at(tr), tr.y, at(te), te.y)
        for k in ks:
            cols = np.searchsorted(features, chosen_TK[t, :k])
            x_tr, x_te = values[tr.images][:, cols].toarray(), values[te.images][:, cols].toarray()
            rows.append((task.name, k, " ".join(str(int(f)) for f in chosen_TK[t, :k]),
                         _accuracy(x_tr, tr.y, x_te, te.y), dense_acc, len(tr.images), len(te.images)))
    return Result(rows, p.skipped)


def run_sparse_probe(t, attributes, ks, by: str, dense: bool, classes=None, shards=None) -> list[str]:
    """sparse_probe.csv (a row per task and k) and sparse_probe.json (the mean accuracy per k, the ceiling)."""
    from clipsae.analysis.class_names import class_names
    from clipsae.analysis.output import write_csv, write_json

    tasks = tasks_of(t.store.labels(), class_names(t.store, classes, shards), attributes)
    res = sparse_probe(t.codes, tasks, ks, by, dense, progress=t.codes.progress)
    path = write_csv(t.out / by_setting("sparse_probe", ".csv", by), COLUMNS, res.rows)
    means = res.mean_accuracy()
    n_tasks = len({r[0] for r in res.rows})
    summary = {"codes": t.codes.name, "by": by, "tasks": n_tasks, "test_share": TEST_SHARE,
               "accuracy": {str(k): v for k, v in means.items()},
               "dense_accuracy": res.mean_dense() if dense else None, "skipped": res.skipped}
    js = write_json(t.out / summary_file(by), summary)
    lines = [f"{t.title}: sparse probing of {n_tasks} tasks by {by}: mean test accuracy "
             + ", ".join(f"{v:.4f} at k = {k}" for k, v in means.items())
             + (f"; dense ceiling {res.mean_dense():.4f}" if dense else "")]
    if res.skipped:
        lines.append(f"{len(res.skipped)} task(s) left out, too few images: {res.skipped[0]}"
                     + (" …" if len(res.skipped) > 1 else ""))
    return lines + [f"wrote {path}, {js}"]
