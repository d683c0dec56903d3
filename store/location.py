"""Where a store lives: a local directory, or an object store (``s3://bucket/acts.zarr``, ``gs://…``).

A local store is a ``pathlib.Path`` and keeps every local fast path. A remote one is a
``UPath`` (universal_pathlib, the pathlib interface over fsspec), so the same code lists, reads
and writes it; credentials and the endpoint come from the usual environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` as botocore reads them; Google's
application-default credentials). Object stores have no rename: every object is written whole or
not at all, which is what a store needs of a chunk or a ``zarr.json``.
"""

from pathlib import Path

from clipsae.errors import ClipsaeError

# scheme: (the fsspec implementation's package, the extra that installs it)
SCHEMES = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}


def is_remote(path) -> bool:
    """True for a store on an object store."""
    return not isinstance(path, Path)


def store_path(value) -> Path:
    """The store location ``value`` names: a Path, or a UPath for ``s3://`` and ``gs://``.

    Remote paths keep no cached listings: other processes add parts while this one looks.
    """
    if not isinstance(value, str):
        return value
    scheme, sep, _ = value.partition("://")
    if not sep:
        return Path(value)
    if scheme not in SCHEMES:
        raise ClipsaeError(f"{value}: unknown scheme {scheme}://; a store is a local path, s3://bucket/… or gs://bucket/…")
    package, extra = SCHEMES[scheme]
    try:
        import upath
        __import__(package)
    except ImportError:
        raise ClipsaeError(f"{scheme}:// stores need {package} and universal_pathlib: "
                           f"pip install 'clipsae[{extra}]'") from None
    return upath.UPath(value, use_listings_cache=False)


def check_reachable(path) -> None:
    """Raise a one-line error when a remote store's bucket cannot be reached: no credentials,
    no endpoint, no bucket. A local path is always reachable."""
    if not is_remote(path):
        return
    bucket = f"{path.protocol}://{path.anchor.rstrip('/')}"
    try:
        # A listing, not exists(): exists() answers False for every failure, a listing says which.
        path.fs.ls(path.anchor)
    except FileNotFoundError:
        raise ClipsaeError(f"bucket {bucket} does not exist or is not visible with these credentials") from None
    except Exception as exc:  # botocore, aiohttp and google-auth each raise their own types
        name = type(exc).__name__
        if "Credential" in name or "NoAuth" in name:
            raise ClipsaeError(f"no credentials for {bucket}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (S3) or "
                               f"Google application-default credentials (GCS)") from None
        raise ClipsaeError(f"cannot reach {bucket}: {' '.join(str(exc).split()) or name}") from None


def absolute(value) -> Path:
    """The store location with a local path made absolute (for jobs started elsewhere, and records)."""
    path = store_path(value)
    return path if is_remote(path) else path.absolute()


def read_bytes(path) -> bytes:
    """A file's bytes; on an object store one GET (opening the object first would add a HEAD)."""
    return path.fs.cat_file(path.path) if is_remote(path) else path.read_bytes()
