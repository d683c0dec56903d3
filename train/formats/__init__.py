"""SAE file formats: one module per tool that publishes SAEs, registered by its module's name.

Each module defines ``FORMAT``, a :class:`SAEFormat`: how to recognise the tool's files from their
contents (``detect``), what a folder of them holds (``needs``, for the error when nothing matches)
and how to load them as a :class:`~clipsae.train.model.SparseAutoencoder` on raw activations,
following that tool's own code for keys, orientation and formula. Adding a format is one file
here (and its test). ``load_sae`` tries them in :data:`ORDER`; ``--sae-format`` names one.
"""

import importlib
import pkgutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from clipsae.errors import ClipsaeError

# Detection order: the most specific layouts first (a clipsae run is also a SAELens folder).
ORDER = ("saelens", "sparsify", "dictionary_learning", "prisma", "saev", "clipscope", "msae", "overcomplete")


@dataclass(frozen=True)
class SAEFormat:
    """One tool's SAE files: ``load(path, device, **options)`` returns the model and the file its weights came from.

    ``options``: the settings, with their types, that the tool's files do not record and a user gives as
    ``--sae-options KEY=VALUE,…`` (overcomplete's ``top_k``); most formats record everything and take none."""

    name: str
    needs: str  # what the tool's files are, for the error when no format recognises a path
    detect: Callable[[Path], bool]
    load: Callable[..., tuple]
    options: dict = field(default_factory=dict)

    def typed_options(self, given: dict) -> dict:
        """``given`` (KEY: text or value) as this format's typed options; one line names a key it does not take."""
        out = {}
        for key, value in given.items():
            if key not in self.options:
                takes = f"it takes {', '.join(self.options)}" if self.options else "it takes none"
                raise ClipsaeError(f"--sae-options {key}: the {self.name} format does not take it ({takes})")
            try:
                out[key] = self.options[key](value)
            except ValueError:
                kind = {int: "an integer", float: "a number"}.get(self.options[key], self.options[key].__name__)
                raise ClipsaeError(f"--sae-options {key}={value}: not {kind}") from None
        return out


SAE_OPTIONS_HELP = ("KEY=VALUE,… settings the SAE's files do not record, for the formats that ask for them "
                    "(overcomplete state dicts: class, top_k, k, delta, normalization).")


def _sae_format_option(f):
    import click

    f = click.option("--sae-options", default=None, metavar="KEY=VALUE,…", help=SAE_OPTIONS_HELP)(f)
    return click.option("--sae-format", type=click.Choice(names()), default=None,
                        help="The SAE's format, where detection from its files should not decide.")(f)


SAE_FORMAT = _sae_format_option  # the --sae-format and --sae-options of every command that loads an SAE


def parse_options(text: str | None) -> dict[str, str]:
    """``KEY=VALUE,…`` as a dict (empty for None); one line says what is malformed."""
    out: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ClipsaeError(f"--sae-options {item!r} is not KEY=VALUE")
        if key.strip() in out:
            raise ClipsaeError(f"--sae-options names {key.strip()} twice")
        out[key.strip()] = value.strip()
    return out


def names() -> list[str]:
    """Every format's name, found without importing any of them."""
    found = {m.name for m in pkgutil.iter_modules(__path__)}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def get(name: str) -> SAEFormat:
    """The format called ``name``; a ClipsaeError lists the known ones otherwise."""
    if name not in names():
        raise ClipsaeError(f"--sae-format {name!r} is not one of {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}").FORMAT


def detect(path: Path) -> SAEFormat:
    """The format whose files ``path`` holds; a ClipsaeError says what each format would need."""
    for name in names():
        fmt = get(name)
        if fmt.detect(path):
            return fmt
    needs = "; ".join(get(n).needs for n in names())
    hint = _sweep_hint(path) if path.is_dir() else ""
    kind = "an SAE directory" if path.is_dir() else "an SAE file"
    raise ClipsaeError(f"{path} is not {kind}: it holds none of {needs}{hint}")


def sweep_members(p: Path) -> list[Path]:
    """The SAE folders of a sweep's run folder (``clipsae train`` with several architectures or widths)."""
    return sorted(x for x in p.iterdir() if x.is_dir() and (x / "cfg.json").is_file()) if p.is_dir() else []


def _sweep_hint(p: Path) -> str:
    members = sweep_members(p)
    return f"; it is a sweep run directory: `clipsae sae info {p}` lists its {len(members)} SAEs" if members else ""


def folder_with(*files: str) -> Callable[[Path], bool]:
    """A ``detect`` for formats that are a folder holding these files."""
    return lambda p: p.is_dir() and all((p / f).is_file() for f in files)


def need_tensors(weights: dict, names_: tuple[str, ...], where: Path) -> None:
    """Raise naming the tensors a file lacks (and what it has)."""
    missing = [n for n in names_ if n not in weights]
    if missing:
        raise ClipsaeError(f"{where} lacks the tensors {', '.join(missing)} (it has {', '.join(sorted(weights)) or 'none'})")


def pickle_head(p: Path) -> bytes:
    """The pickle of a ``torch.save`` archive (its keys and class names, no tensor data), or b"" for any
    other file: a look at what a file holds without loading a tensor (a published SAE may be gigabytes)."""
    if not zipfile.is_zipfile(p):
        return b""
    with zipfile.ZipFile(p) as z:
        pickles = [n for n in z.namelist() if n.endswith("data.pkl")]
        return z.read(pickles[0]) if pickles else b""


def pickle_mentions(p: Path, *names: bytes) -> bool:
    """True for a ``torch.save`` archive whose pickle names every one of ``names``."""
    head = pickle_head(p)
    return bool(head) and all(n in head for n in names)


class PickledObject:
    """What an object of a class clipsae does not import unpickles as: its constructor arguments and state,
    recorded and never run, so that a file that pickles its tool's config (or a whole module) still reads.
    ``qualname`` is the class the file named; a pickled module's ``state`` is its ``__dict__``."""

    qualname = ""
    args: tuple = ()
    kwargs: dict = {}
    state = None

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


def _stand_in(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (PickledObject,), {"qualname": qualname})


def torch_load(path: Path, device: str, inert: bool = False):
    """A ``torch.save`` file of tensors and plain values, read without running pickled code.

    ``inert``: any other class the file pickles (a tool's config object) is read as a
    :class:`PickledObject` instead of refused; torch's weights-only unpickler still runs no code of it.
    """
    import pickle

    import torch

    try:
        others = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a torch archive at all: torch.load below says what it is
        others = []
    try:
        if inert and others:
            with torch.serialization.safe_globals([(_stand_in(name), name) for name in others]):
                return torch.load(path, map_location=device, weights_only=True)
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        if others:
            raise ClipsaeError(f"cannot read {path}: it pickles {', '.join(others)} beside its tensors, and clipsae "
                               f"runs no pickled code (it reads tensors and plain values only)") from None
        raise ClipsaeError(f"cannot read {path}: it is not a torch.save file of tensors and plain values") from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise ClipsaeError(f"cannot read {path}: {first_sentence(exc)}") from None


def first_sentence(exc: Exception) -> str:
    """An exception's message as one line, ending at its first sentence, never mid-word."""
    text = " ".join(str(exc).split())
    cut = text.find(". ")
    return text[: cut + 1] if 0 < cut < 300 else text if len(text) <= 300 else text[:300].rsplit(" ", 1)[0] + " …"
