"""Names of a store's integer labels: from ``--classes`` or the ``classes.json`` written beside the tars."""

import json
from pathlib import Path

from clipsae.analysis.images import locate_tar
from clipsae.errors import ClipsaeError
from clipsae.store.reader import ActivationStore

CLASSES_FILE = "classes.json"


def read_class_names(path: Path) -> dict[int, str]:
    """Label → name from a JSON object (``{"0": "tench", …}``), a JSON list, or a text file of one name per line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ClipsaeError(f"cannot read class names from {path}: {exc.strerror}") from None
    if Path(path).suffix == ".json":
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ClipsaeError(f"{path} is not valid JSON: {exc}") from None
        if isinstance(obj, list):
            obj = dict(enumerate(obj))
        if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
            raise ClipsaeError(f"{path} must hold a list of class names or an object of label → name")
        try:
            return {int(k): v for k, v in obj.items()}
        except ValueError:
            raise ClipsaeError(f"{path}: labels must be integers, as the store's are") from None
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ClipsaeError(f"{path} names no classes")
    return dict(enumerate(names))


def class_names(store: ActivationStore, classes: Path | None = None, shards: Path | None = None) -> dict[int, str]:
    """``classes`` if given, else the classes.json beside the store's first tar, else no names ({})."""
    if classes is not None:
        return read_class_names(classes)
    for part in store.parts[:1]:
        tar = locate_tar(part.source, shards)
        if tar is not None and (tar.parent / CLASSES_FILE).is_file():
            return read_class_names(tar.parent / CLASSES_FILE)
    return {}
