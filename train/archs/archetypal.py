"""``archetypal``: the Relaxed Archetypal SAE (RA-SAE, Fel et al. 2025; overcomplete's ``RATopKSAE``).

Each dictionary atom is a convex combination of fixed candidate points, plus a small bounded relaxation:

    D = (W·C + Λ) · exp(μ),   W (n, m) row-stochastic,   ‖Λ_i‖ ≤ δ,   C (m, d) fixed

C holds m candidate points taken from the store before training: the k-means centroids (scikit-learn's
``KMeans``, one initialisation, seeded by the SAE's seed) of the sample of scaled training rows the run
draws for its input scale (up to 16,384 rows), centred on b_dec's initial value (their median), since
the atoms reconstruct x̃ − b_dec. The encoder starts as the atoms' unit directions. Tying the atoms to the data's own points is what makes two runs find the
same dictionary: the answer to the instability the compare table's ``stability`` measures. W starts
as the identity (atom i on candidate i; with fewer candidates than atoms, on candidate i mod m), Λ at 0,
μ at 0. After each optimiser step W is projected back onto row-stochastic matrices (ReLU, then each row
divided by its sum) and each row of Λ is scaled down to norm δ where longer, as overcomplete does. The
atoms are not unit-norm: exp(μ) and the convex combinations set their lengths.

The encoder and the loss are TopK's (``--k``, AuxK for dead latents), as overcomplete's ``RATopKSAE``;
``archetypal_jumprelu`` puts the same dictionary behind JumpReLU's encoder and loss (``RAJumpSAE``).
Saved as SAELens ``topk`` (or ``jumprelu``) with W_dec = D, which every analysis reads; W, C and Λ stay
in the run's checkpoint.
"""

from dataclasses import replace

import torch

from clipsae.errors import ClipsaeError
from clipsae.train.archs.topk import TopK
from clipsae.train.ranks import Ranks
from clipsae.train.statistics import GM_ROWS

KMEANS_ITERATIONS = 50


def dictionary(sae) -> torch.Tensor:
    """D = (W·C + Λ)·exp(μ), (n, d)."""
    return (sae.arch_W @ sae.candidates + sae.relax) * sae.multiplier.exp()


def candidate_points(sample_MD: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """The m k-means centroids of the sample's rows (float32, on the sample's device); m is at most the sample's
    rows (``Archetypal.fit_rows`` settles it against the rows the sample will hold)."""
    from sklearn.cluster import KMeans

    fit = KMeans(n_clusters=m, n_init=1, max_iter=KMEANS_ITERATIONS, random_state=seed % 2**31).fit(
        sample_MD.double().cpu().numpy())
    return torch.from_numpy(fit.cluster_centers_).float().to(sample_MD.device)


class ArchetypalDictionary:
    """The archetypal dictionary, put in front of an encoder architecture: ``class X(ArchetypalDictionary, Enc)``."""

    def normalize(self, spec):
        spec = super().normalize(spec)
        if spec.delta < 0:
            raise ClipsaeError(f"--delta must be at least 0, not {spec.delta:g}")
        if spec.candidates < 0:
            raise ClipsaeError(f"--candidates must be at least 1, not {spec.candidates}")
        return spec

    def n_candidates(self, spec) -> int:
        """m: settled by ``fit_rows`` before training (one per latent by default, at most the sample's rows)."""
        return spec.candidates or spec.d_sae

    def fit_rows(self, spec, n_rows):
        sampled = min(n_rows, GM_ROWS)
        if not spec.candidates:  # the default: one per latent, as many as the sample holds
            return replace(spec, candidates=min(spec.d_sae, sampled))
        if spec.candidates > sampled:
            raise ClipsaeError(f"--candidates {spec.candidates} is more than the {sampled:,} training rows sampled "
                               f"for them (the store's training rows, at most {GM_ROWS:,}); give --candidates "
                               f"{sampled} or fewer")
        return spec

    def setup(self, sae, run_seed):
        super().setup(sae, run_seed)
        n, d, m = sae.spec.d_sae, sae.spec.d, self.n_candidates(sae.spec)
        del sae.W_dec  # the atoms are made from W, C and Λ, not learned on their own
        eye = torch.zeros(n, m)
        eye[torch.arange(n), torch.arange(n) % m] = 1.0
        sae.arch_W = torch.nn.Parameter(eye)
        sae.relax = torch.nn.Parameter(torch.zeros(n, d))
        sae.multiplier = torch.nn.Parameter(torch.zeros(()))
        sae.register_buffer("candidates", torch.zeros(m, d))
        sae.W_dec = dictionary(sae).detach()

    @torch.no_grad()
    def initialise(self, sae, sample_MD: torch.Tensor, run_seed: int) -> None:
        # k-means seeded by the SAE's own seed: the seeds of a run differ in their candidates, as other SAEs'
        # seeds differ in their initial dictionaries, so that the stability of seeds measures something.
        seed = sae.spec.seed if sae.spec.seed is not None else run_seed
        # Centred on b_dec (the median, set before this), as the atoms reconstruct x̃ − b_dec.
        sae.candidates.copy_(candidate_points(sample_MD - sae.b_dec, self.n_candidates(sae.spec), seed))
        sae.W_dec = dictionary(sae).detach()
        # The encoder starts as the atoms' directions, as every clipsae SAE's starts as its decoder's.
        sae.W_enc.copy_(sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def loss(self, sae, x, dead_C, ranks=Ranks()):
        sae.W_dec = dictionary(sae)
        return super().loss(sae, x, dead_C, ranks)

    @torch.no_grad()
    def after_update(self, sae) -> None:
        super().after_update(sae)
        W = sae.arch_W.relu_()
        W /= W.sum(1, keepdim=True) + 1e-8
        norms = sae.relax.norm(dim=1, keepdim=True)
        sae.relax.mul_((sae.spec.delta / norms.clamp_min(1e-12)).clamp(max=1.0))

    @torch.no_grad()
    def inference_weights(self, sae, scale):
        D = dictionary(sae)
        return ((sae.W_enc * scale).float().cpu(), sae.b_enc.detach().float().cpu().clone(),
                (D / scale).contiguous().float().cpu(), (sae.b_dec / scale).float().cpu().clone())


class Archetypal(ArchetypalDictionary, TopK):
    name = "archetypal"
    options = ("candidates", "delta")
    export_as = "topk"

    def label(self, spec):
        return f"archetypal-{spec.size}-k{spec.k}"


ARCH = Archetypal()
