"""Training on several processes started by torchrun: this process's rank, and the collective steps
that keep every process's copy of the SAEs identical.

Every process holds the same SAEs and optimisers and reads its own share of the chunks. Its loss is
its rows' part of the global batch's loss: the batch-wide quantities a loss divides by (the row
count, the total variance) are those of the global batch. Summing the gradients across processes
before the (identical) optimiser step then gives each copy the step one process would take on the
whole global batch. Which latents fired is combined too, so dead-latent masks agree everywhere.
Alone (no torchrun), every operation here does nothing, and the losses are computed as they always were.
"""

import os
from dataclasses import dataclass

import torch

from clipsae.errors import ClipsaeError


@dataclass(frozen=True)
class Ranks:
    """This process's ``rank`` among ``world`` training processes (0 of 1 when alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that evaluates, logs and writes the run's files."""
        return self.rank == 0

    @property
    def share(self) -> float:
        """This process's fraction of the global batch (every process holds as many rows)."""
        return 1.0 / self.world

    def total_variance(self, x_BD: torch.Tensor) -> torch.Tensor:
        """Σ‖x − x̄‖² over the global batch whose rows ``x_BD`` are this process's share (no gradient)."""
        if self.world == 1:
            return (x_BD - x_BD.mean(0)).pow(2).sum().clamp_min(1e-12)
        with torch.no_grad():
            x = x_BD.double()
            sums = self.sum_(torch.cat([x.sum(0), x.pow(2).sum().reshape(1)]))
            n = x.shape[0] * self.world
            variance = sums[-1] - sums[:-1].pow(2).sum() / n
        return variance.to(x_BD.dtype).clamp_min(1e-12)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the processes, in place."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        """``t``'s element-wise maximum over the processes, in place."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def any_(self, mask: torch.Tensor) -> torch.Tensor:
        """True where the mask is true on some process."""
        if self.world == 1:
            return mask
        return self.max_(mask.to(torch.int32)).bool()

    def broadcast_(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``t`` on every process, in place."""
        if self.world > 1:
            import torch.distributed as dist

            dist.broadcast(t, 0)
        return t

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def join_ranks(device: str) -> Ranks:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), or stay alone.

    NCCL joins processes on CUDA devices, gloo those on the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        try:
            dist.init_process_group(backend)
        except (RuntimeError, ValueError) as exc:
            raise ClipsaeError(f"could not join the {world} training processes: {exc}") from None
    return Ranks(rank, world, local)


def leave_ranks(ranks: Ranks, wait: bool = True) -> None:
    """Leave the process group, once every process is done unless ``wait`` is False (a failure)."""
    if ranks.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            if wait:
                dist.barrier()
            dist.destroy_process_group()
