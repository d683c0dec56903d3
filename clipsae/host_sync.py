"""Reads from the device back to the host: where they are allowed, and a watch that finds the others.

A GPU runs ahead of the Python that queues its work; an op whose result the host must see (``.item()``,
``nonzero``, a boolean mask index, ``unique``, a Python ``if`` on a tensor, a copy to the CPU) makes the
host wait until the device has finished everything queued before it. The hot loops (a training step,
encode's batches, extraction's batches) allow such a read only inside :func:`declared`, which names why
it is needed there. :class:`SyncWatch` records every op that forces one, on any device, the CPU
included (where the op is cheap but dispatches all the same), so that a test on a machine without a
GPU fails on a read that would stall one.
"""

import contextlib
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_state = threading.local()
_OURS = str(Path(__file__).resolve().parents[1])  # the repository's root: frames of our code start with it

# Ops whose result the host needs before it can go on: their output's size or value depends on the data.
_ALWAYS = {"_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "_unique", "_unique2",
           "unique_dim", "unique_consecutive", "unique_dim_consecutive", "equal", "allclose"}


def _reads_back(func, args, kwargs) -> bool:
    name = func._schema.name.split("::", 1)[-1]
    if name in _ALWAYS:
        return True
    if name == "repeat_interleave" and isinstance(args[0], torch.Tensor) and len(args) > 1 \
            and isinstance(args[1], torch.Tensor) and kwargs.get("output_size") is None:
        return True  # the output's length is the sum of the repeats
    if name == "repeat_interleave" and len(args) == 1 and kwargs.get("output_size") is None:
        return True  # repeat_interleave(repeats): the output's length is their sum
    if name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else [])):
        return True  # a boolean mask index: nonzero inside
    if name == "bincount" and kwargs.get("minlength", args[2] if len(args) > 2 else 0) in (0, None):
        return True  # sized by the largest value
    if name in ("_to_copy", "copy_"):
        dev = kwargs.get("device")
        if name == "copy_":
            dst, src = args[0], args[1]
            return isinstance(src, torch.Tensor) and dst.device.type == "cpu" and src.device.type != "cpu"
        return dev is not None and torch.device(dev).type == "cpu" and args[0].device.type != "cpu"
    return False


@contextlib.contextmanager
def declared(why: str):
    """Allow reads back to the host within: ``why`` says what the host needs there (said once, in the code)."""
    previous = getattr(_state, "why", None)
    _state.why = why
    try:
        yield
    finally:
        _state.why = previous


def allowed_reason() -> str | None:
    """Why a read back is allowed here, or None where it is not."""
    return getattr(_state, "why", None)


@dataclass(frozen=True)
class Read:
    """One op that read back to the host: its name, whether a :func:`declared` block allowed it (and why),
    and where in our code it was called."""

    op: str
    why: str | None
    where: str


class SyncWatch(TorchDispatchMode):
    """Records every op that reads back to the host (``reads``); ``undeclared`` are those outside :func:`declared`.

    Use as a context manager around the code to check. ``.cpu()`` of a CPU tensor dispatches nothing, so
    on the CPU a copy to the host is only seen where it crosses devices; every other read is seen anywhere.
    """

    def __init__(self):
        super().__init__()
        self.reads: list[Read] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _reads_back(func, args, kwargs):
            ours = [f for f in traceback.extract_stack()[:-1]
                    if f.filename.startswith(_OURS) and "site-packages" not in f.filename]
            where = f"{Path(ours[-1].filename).relative_to(_OURS)}:{ours[-1].lineno}" if ours else "?"
            self.reads.append(Read(func._schema.name, allowed_reason(), where))
        return func(*args, **kwargs)

    @property
    def undeclared(self) -> list[Read]:
        return [r for r in self.reads if r.why is None]
