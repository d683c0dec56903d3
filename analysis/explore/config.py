"""What `clipsae serve` is asked: each field is its option (clipsae/options.py), checked here once.

No torch and no web framework here, so that ``clipsae serve --help`` and option errors answer at once.
"""

import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from clipsae.errors import ClipsaeError
from clipsae.options import check, option

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class CodesSpec:
    """One ``--codes`` value: ``NAME`` (codes of ``--store``) or ``STORE:NAME``; served under ``label``."""

    store: str
    name: str
    label: str


def parse_codes(values: tuple[str, ...], store: str | None) -> tuple[CodesSpec, ...]:
    """The served codes, each labelled by its name, or ``<store name>:<name>`` where names repeat."""
    if not values:
        raise ClipsaeError("give at least one --codes NAME (codes of --store) or --codes STORE:NAME")
    specs = []
    for v in values:
        where, sep, name = v.rpartition(":")
        if sep and where and where not in ("s3", "gs"):  # s3://… alone is a store, not STORE:CODES
            specs.append((where, name))
        elif store is None:
            raise ClipsaeError(f"--codes {v!r} names no store: give --store, or write STORE:CODES")
        else:
            specs.append((store, v))
    if any(not name or "/" in name for _, name in specs):
        raise ClipsaeError(f"--codes {values!r}: a codes name is a plain folder name")
    names = [name for _, name in specs]
    out = []
    for store_path, name in specs:
        label = name if names.count(name) == 1 else f"{Path(str(store_path).rstrip('/')).name.removesuffix('.zarr')}.{name}"
        out.append(CodesSpec(str(store_path), name, label))
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise ClipsaeError(f"--codes names the same codes twice: {', '.join(labels)}")
    return tuple(out)


@dataclass(frozen=True)
class ServeConfig:
    """What ``clipsae serve`` was asked; checks its own values when made."""

    store: str | None = option(None)
    """Activation store whose codes --codes names: a folder, s3://bucket/… or gs://bucket/…."""
    codes: tuple[str, ...] = option((), cli=False)
    """The codes to serve (several --codes: side by side)."""
    host: str = option("127.0.0.1")
    """Address to listen on; any but the loopback needs --token."""
    port: int = option(8000, at_least=0, below=65536)
    """Port to listen on; 0 takes a free one (printed)."""
    token: str | None = option(None, shown_default="none on 127.0.0.1; generated and printed on any other --host")
    """Every request must carry it: `Authorization: Bearer T`, or `?token=T` on a link (kept in a cookie)."""
    device: str = option("auto")
    """Where the model and SAE run when a page needs them (uploads, steering, text search): cuda, cuda:N, cpu, auto."""
    max_upload: float = option(20.0, above=0)
    """Largest uploaded image, in MB."""
    max_pixels: int = option(40_000_000, at_least=1)
    """Largest uploaded image, in pixels (a decompression bomb is refused)."""
    preload: bool = option(False)
    """Load the model and SAE in the background as soon as the server starts, so that the first upload, steer or
    text search does not wait for them (by default they load on first need, and browsing never loads them)."""
    index_only: bool = option(False)
    """Build (or check) the index of every --codes, then exit without serving."""
    progress: bool = option(True, cli=False)
    """Show progress bars while the index is built."""

    def __post_init__(self):
        check(self)
        if self.host not in LOOPBACK and self.token is None:
            object.__setattr__(self, "token", secrets.token_urlsafe(16))
        if self.token is not None and (len(self.token) < 8 or not self.token.isprintable() or " " in self.token):
            raise ClipsaeError("--token must be at least 8 printable characters without spaces")
        if self.host not in LOOPBACK:
            try:
                ipaddress.ip_address(self.host)
            except ValueError:
                raise ClipsaeError(f"--host {self.host!r} is not an IP address (e.g. 0.0.0.0 or 127.0.0.1)") from None

    @property
    def served(self) -> tuple[CodesSpec, ...]:
        return parse_codes(self.codes, self.store)
