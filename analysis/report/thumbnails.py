"""JPEG thumbnails of a store's images, read once from the original tars, one file per image."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from clipsae.analysis.images import iter_tar_images
from clipsae.store.reader import ActivationStore

QUALITY = 85


def thumbnail_name(image: int) -> str:
    """The thumbnail's file name inside the report's ``images/`` folder."""
    return f"{image}.jpg"


def _save(im: Image.Image, size: int, path: Path) -> None:
    im.thumbnail((size, size), Image.Resampling.BICUBIC)
    im.save(path, "JPEG", quality=QUALITY)


def write_thumbnails(store: ActivationStore, images, out: Path, size: int, shards: Path | None = None,
                     progress: bool = True) -> int:
    """Write ``out/<image>.jpg`` (longest side ``size``) for each image; returns how many.

    The tars are read in one thread while a small pool resizes and encodes (PIL releases the GIL there).
    """
    images = sorted({int(i) for i in images})
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(images), desc="thumbnails", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = []
        for img, im in iter_tar_images(store, images, shards):
            pending.append(pool.submit(_save, im, size, out / thumbnail_name(img)))
            if len(pending) >= 64:
                for f in pending:
                    f.result()
                bar.update(len(pending))
                pending = []
        for f in pending:
            f.result()
        bar.update(len(pending))
    bar.close()
    return len(images)
