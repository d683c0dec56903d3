"""``archetypal_jumprelu``: the archetypal dictionary of ``archetypal.py``, D = (W·C + Λ)·exp(μ), behind
JumpReLU's encoder and loss (``jumprelu.py``: a threshold per latent, the L0 penalty or ``--target-l0``), as
overcomplete's ``RAJumpSAE``. Its sparsity is found by the penalty rather than fixed by ``--k``. Saved as
SAELens ``jumprelu`` with W_dec = D.
"""

from clipsae.train.archs.archetypal import ArchetypalDictionary
from clipsae.train.archs.jumprelu import JumpReLU


class ArchetypalJumpReLU(ArchetypalDictionary, JumpReLU):
    name = "archetypal_jumprelu"
    options = JumpReLU.options + ("candidates", "delta")
    export_as = "jumprelu"


ARCH = ArchetypalJumpReLU()
