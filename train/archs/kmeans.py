"""``kmeans``: d_sae centroids of the training tokens, a baseline. Each token's code is 1 at its nearest
centroid (L0 = 1; saev's one-hot coding) and its reconstruction that centroid.

Seeding: k-means++ (scikit-learn's ``kmeans_plusplus``) on the first 3·d_sae training rows, collected
over the first batches (scikit-learn's own initial sample for mini-batch k-means). Then mini-batch k-means (Sculley 2010), one update per training batch: each
centroid c_j moves to c_j + (b_j / n_j)(m_j − c_j), m_j the mean of the b_j batch rows nearest to it and
n_j the rows it has had so far; so c_j is the running mean of its rows. The update is our own (ten lines)
rather than scikit-learn's ``MiniBatchKMeans``, whose state cannot be saved and restored through its
public interface: the centroids and counts are the SAE's buffers, in every checkpoint, so a killed fit
resumes where it stood.

Exported as ``onehot``: z = x·c_j − ‖c_j‖²/2, whose largest entry is the nearest centroid.
"""

import torch

from clipsae.errors import ClipsaeError
from clipsae.host_sync import declared
from clipsae.train.archs.base import StepOutput
from clipsae.train.archs.baseline import Baseline, no_loss


class KMeans(Baseline):
    name = "kmeans"
    export_as = "onehot"

    def label(self, spec):
        return f"kmeans-{spec.size}"

    def check_run(self, spec, steps, batch_size):
        need = 3 * spec.d_sae
        if steps * batch_size < need:
            raise ClipsaeError(f"--arch kmeans with {spec.d_sae:,} centroids seeds them from its first {need:,} training "
                               f"rows, and this run sees {steps * batch_size:,}: train at least "
                               f"{-(-need // batch_size):,} steps, or fewer centroids")

    def setup(self, sae, run_seed):
        n, d = sae.spec.d_sae, sae.spec.d
        sae.register_buffer("centroids_ND", torch.zeros(n, d))
        sae.register_buffer("counts_N", torch.zeros(n, dtype=torch.float64))
        sae.register_buffer("seed_rows_MD", torch.zeros(3 * n, d))
        sae.register_buffer("seed_filled", torch.zeros((), dtype=torch.int64))
        sae.register_buffer("seed", torch.tensor(run_seed % 2**31, dtype=torch.int64))

    @torch.no_grad()
    def fit_step(self, sae, x_BD):
        if not getattr(sae, "kmeans_seeded", False):
            with declared("k-means++ seeds on the host from the first 3·n rows: read each step until then, never after"):
                m = len(sae.seed_rows_MD)
                filled = int(sae.seed_filled)
                if filled < m:
                    take = min(m - filled, len(x_BD))
                    sae.seed_rows_MD[filled:filled + take] = x_BD[:take]
                    sae.seed_filled += take
                    if filled + take < m:
                        return no_loss(sae, x_BD, 1, torch.zeros(sae.spec.d_sae, dtype=torch.bool, device=x_BD.device))
                    self._seed(sae)
                sae.kmeans_seeded = True
        nearest, dist = self.assign(sae.centroids_ND, x_BD)
        b = torch.bincount(nearest, minlength=sae.spec.d_sae).double()
        sums = torch.zeros_like(sae.centroids_ND, dtype=torch.float64).index_add_(0, nearest, x_BD.double())
        sae.counts_N += b
        # Every centroid moves by its batch mean's share; one no row chose moves by 0 (b = 0), so no
        # boolean index (which would read the count of moved centroids back to the host) is needed.
        step = (b / sae.counts_N.clamp_min(1))[:, None]
        mean = sums / b.clamp_min(1)[:, None]
        sae.centroids_ND += (step * (mean - sae.centroids_ND.double())).float()
        mse = dist.mean()
        return StepOutput(mse, mse, torch.ones((), device=x_BD.device), b > 0)

    def _seed(self, sae) -> None:
        from sklearn.cluster import kmeans_plusplus

        rows = sae.seed_rows_MD.cpu().numpy()
        centres, _ = kmeans_plusplus(rows, sae.spec.d_sae, random_state=int(sae.seed))
        sae.centroids_ND.copy_(torch.from_numpy(centres))

    @staticmethod
    def assign(centroids_ND: torch.Tensor, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's nearest centroid and its squared distance."""
        d2 = (x_BD.pow(2).sum(1, keepdim=True) - 2 * x_BD @ centroids_ND.T + centroids_ND.pow(2).sum(1)).clamp_min(0)
        dist, nearest = d2.min(1)
        return nearest, dist

    def inference_weights(self, sae, scale):
        C = (sae.centroids_ND / scale).float().cpu()
        return C, -0.5 * C.pow(2).sum(1), C.contiguous(), torch.zeros(C.shape[1])


ARCH = KMeans()
