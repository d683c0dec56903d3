"""``clipsae shards make --from-folder``: an ImageNet-style class-folder tree to labelled tars."""

import random
from pathlib import Path

from clipsae.errors import ClipsaeError
from clipsae.pipeline.tario import IMAGE_EXTS
from clipsae.pipeline.tarwrite import write_classes, write_tar


def make_shards_from_folder(src: str, out: str, per_shard: int = 1000, seed: int = 0) -> list[Path]:
    """Write tars of ``per_shard`` images each; label = index of the class folder in sorted order.

    Images are shuffled with a fixed seed so every tar mixes classes (a prefix of the tars
    is then a fair sample); the original file's bytes are stored unchanged.
    """
    if per_shard < 1:
        raise ClipsaeError("--per-shard must be at least 1")
    root = Path(src)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ClipsaeError(f"{src} has no class folders")
    items = [
        (label, f)
        for label, c in enumerate(classes)
        for f in sorted((root / c).iterdir())
        if f.is_file() and f.suffix.lower().lstrip(".") in IMAGE_EXTS
    ]
    if not items:
        raise ClipsaeError(f"no images ({', '.join(IMAGE_EXTS)}) under {src}")
    random.Random(seed).shuffle(items)
    dest = Path(out)
    if dest.exists() and not dest.is_dir():
        raise ClipsaeError(f"--out {dest} is a file; give a folder for the tars")
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, start in enumerate(range(0, len(items), per_shard)):
        samples = (
            {
                "__key__": f"{start + i:08d}",
                f.suffix.lower().lstrip("."): f.read_bytes(),
                "cls": label,
                "json": {"label": label, "class": classes[label], "path": str(f.relative_to(root))},
            }
            for i, (label, f) in enumerate(items[start : start + per_shard])
        )
        paths.append(write_tar(dest / f"{s:05d}.tar", samples))
    write_classes(dest, classes)
    return paths
