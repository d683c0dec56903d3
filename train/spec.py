"""What one SAE of a run is: its architecture and sizes, as a plain dataclass (no torch)."""

from dataclasses import dataclass, field, replace

# Options that only some architectures use: each says which in its ``options`` (train/archs/base.py).
ARCH_OPTIONS = ("matryoshka_weighting", "bandwidth", "l0_coefficient", "target_l0", "sparsity_warmup", "candidates",
                "delta")


@dataclass(frozen=True)
class SAESpec:
    """One SAE of a run: its architecture (a name in ``train/archs/``) and sizes; made by the architecture."""

    arch: str
    d: int
    expansion: int
    k: int = 32
    l1: float = 5.0
    aux_alpha: float = 1 / 32
    matryoshka_weighting: str = "uw"
    matryoshka_fractions: tuple[float, ...] = field(default=(1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0))
    seed: int | None = None  # its own initialisation seed, in a run of several seeds (None: the run's)
    latents: int | None = None  # the number of latents where given directly (--latents), instead of expansion · d
    # JumpReLU's and Gated's own options (0 where an architecture does not use them; see train/archs/jumprelu.py)
    bandwidth: float = 0.0
    l0_coefficient: float = 0.0
    target_l0: float = 0.0
    sparsity_warmup: int = 0
    # Archetypal's (train/archs/archetypal.py): candidate points (0: as many as latents) and the relaxation's bound
    candidates: int = 0
    delta: float = 0.0
    # A universal SAE's (train/universal.py): each model's input width, in the order of --universal (d is their
    # sum), and how its latents are selected (global: one TopK over the models' summed pre-activations)
    blocks: tuple[int, ...] = ()
    selection: str = "global"

    @property
    def d_sae(self) -> int:
        """The number of latents (SAELens's name, the one cfg.json and the codes record); a universal SAE's
        expansion is of its widest model."""
        return self.latents if self.latents is not None else self.expansion * (max(self.blocks) if self.blocks else self.d)

    @property
    def size(self) -> str:
        """How labels write the width: ``x16`` (the expansion), or ``n64`` where the latents were given."""
        return f"n{self.latents}" if self.latents is not None else f"x{self.expansion}"

    @property
    def aux_k(self) -> int:
        return max(1, self.d // 2)

    @property
    def label(self) -> str:
        """A directory-safe name that tells SAEs of a sweep apart (the architecture decides it), with
        ``-seed<N>`` where the SAE has a seed of its own."""
        from clipsae.train import archs

        own = "-own" if self.blocks and self.selection == "own" else ""  # a universal SAE's per-model selection
        return archs.get(self.arch).label(self) + own + (f"-seed{self.seed}" if self.seed is not None else "")

    @property
    def unseeded(self) -> "SAESpec":
        """The same SAE without a seed of its own: what its seeds have in common."""
        return replace(self, seed=None)

    @property
    def levels(self) -> list[int]:
        """Matryoshka prefix sizes m_1 < … < m_L = d_sae."""
        return sorted({max(1, round(f * self.d_sae)) for f in self.matryoshka_fractions} | {self.d_sae})

    def level_weights(self) -> list[float]:
        """w_l, summing to 1: uniform (UW) or reverse-linear (RW, the smallest prefix weighs most)."""
        L = len(self.levels)
        raw = [1.0] * L if self.matryoshka_weighting == "uw" else [float(L - i) for i in range(L)]
        return [w / sum(raw) for w in raw]

    def to_json(self) -> dict:
        seed = {"seed": self.seed} if self.seed is not None else {}
        seed |= {"latents": self.latents} if self.latents is not None else {}
        # Written only where set, so that the specs of runs made before these options read the same.
        seed |= {k: getattr(self, k) for k in ARCH_OPTIONS[1:] if getattr(self, k)}
        seed |= {"blocks": list(self.blocks), "selection": self.selection} if self.blocks else {}
        return {"arch": self.arch, "d": self.d, "expansion": self.expansion, "k": self.k, "l1": self.l1,
                "aux_alpha": self.aux_alpha, "matryoshka_weighting": self.matryoshka_weighting,
                "matryoshka_fractions": list(self.matryoshka_fractions), **seed}

    @classmethod
    def from_json(cls, obj: dict) -> "SAESpec":
        obj = dict(obj)
        obj["matryoshka_fractions"] = tuple(obj.get("matryoshka_fractions", cls.matryoshka_fractions))
        obj["blocks"] = tuple(obj.get("blocks", ()))
        return cls(**obj)
