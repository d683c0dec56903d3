"""What `clipsae train` is asked beside its run settings (train/config.py): the store and hook, which
SAEs, how long, where. Each field is an option (clipsae/options.py); ``configure_training`` resolves
them against the store into a TrainConfig."""

from dataclasses import dataclass
from pathlib import Path

from clipsae.options import check, option
from clipsae.store.layout import TOKEN_MODES


@dataclass(frozen=True)
class TrainRequest:
    """The options that name what to train and for how long, before the store is read."""

    store: str | None = option(None, shown_default="required, unless --universal")
    """Activation store from `clipsae extract`: a folder, s3://… or gs://…."""
    universal: str | None = option(None, metavar="STORE:HOOK,STORE:HOOK[,…]")
    """Train universal SAEs instead: one set of latents over several models' activations of the same images (stores
    matched by image key), an encoder and a decoder per model; in place of --store and --hook."""
    grid: str | None = option(None, metavar="RxC")
    """Universal SAEs over patches of unequal grids: average-pool each store's patches to this grid (with --tokens
    patches)."""
    selection: str = option("global")
    """Universal SAEs' latent selection: global (one TopK over the models' summed pre-activations, SPARC's) or own
    (each model's own TopK); a comma list sweeps."""
    hook: str | None = option(None, shown_default="the store's only hook")
    """Hook to train on; may be left out when the store has one hook."""
    tokens: str = option("all", choices=TOKEN_MODES)
    """Which stored tokens become training rows: cls, patches or all."""
    arch: str = option("topk")
    """relu, topk, batchtopk, matryoshka, jumprelu, gated, archetypal, archetypal_jumprelu or mp, or the baselines pca, kmeans, nmf and random; a comma list sweeps (an empty item is refused)."""
    expansion: str = option("16")
    """Latents per input dimension, n = expansion · d; a comma list sweeps."""
    latents: str | None = option(None, shown_default="expansion · d")
    """The number of latents n, instead of --expansion (a baseline may have fewer than d: PCA's top components, k-means' centroids, NMF's concepts); a comma list sweeps."""
    k: str | None = option(None, shown_default="32; mp needs it given")
    """Active latents per token (TopK family), or the pursuit's steps (mp); a comma list sweeps."""
    l1: str = option("5")
    """L1 coefficient λ of the relu and gated SAEs; a comma list sweeps."""
    seed: str = option("0")
    """Seed of the initialisation, the data order and the holdout split; a comma list trains every SAE once per seed in one data pass (data order and holdout from the first)."""
    sweep: Path | None = option(None, metavar="FILE")
    """JSON list of SAEs, e.g. [{"arch": "topk", "k": 32}, {"arch": "relu", "l1": 5}] (keys arch, expansion, k,
    l1; missing keys take the options' values), instead of the product of the lists."""
    tokens_total: float | None = option(None, above=0, shown_default="one pass over the training rows")
    """Training tokens, rounded up to whole batches (said in a note); refused below one batch."""
    steps: int | None = option(None, at_least=1, shown_default="from --tokens-total")
    """Training steps, instead of --tokens-total."""
    device: str = option("auto")
    """cuda, cuda:N, cpu, or auto (cuda when there is one)."""
    out: Path | None = option(None, shown_default="runs/<store>-<hook>-<tokens>")
    """Run directory."""
    aux_alpha: float = option(1 / 32, at_least=0, shown_default="1/32")
    """AuxK loss weight α (TopK family)."""
    matryoshka_weighting: str = option("uw", choices=("uw", "rw"))
    """Matryoshka level weights: uw uniform, rw reverse-linear."""
    l0_coefficient: str = option("1")
    """JumpReLU's sparsity weight c (SAELens's l0_coefficient): of the L0 penalty c·L0, or of the target loss c·(L0/T − 1)² with --target-l0; a comma list sweeps."""
    target_l0: str | None = option(None, shown_default="none: the L0 penalty")
    """JumpReLU's target L0 T (dictionary_learning's loss), instead of the penalty; a comma list sweeps."""
    bandwidth: float = option(0.05, above=0)
    """JumpReLU's straight-through bandwidth ε, in units of the pre-activations of inputs scaled to E‖x‖ = √d."""
    sparsity_warmup: int = option(0, at_least=0)
    """Steps over which JumpReLU's sparsity weight rises from 0 to c."""
    candidates: int | None = option(None, at_least=1, shown_default="the number of latents, at most the rows sampled")
    """Archetypal's candidate points: k-means centroids of up to 16,384 sampled training rows, the atoms' convex hull."""
    delta: float = option(1.0, at_least=0)
    """Archetypal's bound δ on each atom's relaxation Λ_i (its norm), in units of inputs scaled to E‖x‖ = √d."""

    def __post_init__(self):
        check(self)
