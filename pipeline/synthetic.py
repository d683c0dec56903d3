"""A small labelled image set drawn procedurally: the demo's and the tests' data."""

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

from clipsae.errors import ClipsaeError
from clipsae.files import write_json
from clipsae.pipeline.masks import MASK_CLASSES_FILE
from clipsae.pipeline.tarwrite import write_classes, write_tar

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220)}
CLASSES = [f"{c} {s}" for s in SHAPES for c in COLOURS]


def draw(label: int, rng: random.Random, size: int = 96) -> Image.Image:
    """One image of class ``label``: a coloured shape at a random place and scale on a noisy grey ground."""
    return draw_with_attributes(label, rng, size)[0]


def draw_with_attributes(label: int, rng: random.Random, size: int = 96) -> tuple[Image.Image, dict]:
    """:func:`draw`'s image and what it shows: ``colour``, ``shape``, ``size`` (the shape's radius over
    the image's side) and ``background`` (the ground's grey level over 255), for attribute probes."""
    return draw_with_mask(label, rng, size)[:2]


def draw_with_mask(label: int, rng: random.Random, size: int = 96) -> tuple[Image.Image, dict, Image.Image]:
    """:func:`draw_with_attributes`, and the image's segmentation mask: the shape's pixels hold its
    mask class (``label + 1``, see :func:`mask_classes`), the ground 0."""
    shape, colour = SHAPES[label // len(COLOURS)], list(COLOURS.values())[label % len(COLOURS)]
    grey = rng.randint(90, 170)
    im = Image.new("RGB", (size, size), (grey, grey, grey))
    mask = Image.new("L", (size, size), 0)
    d, m = ImageDraw.Draw(im), ImageDraw.Draw(mask)
    for _ in range(30):
        x, y, g = rng.randrange(size), rng.randrange(size), rng.randint(60, 200)
        d.point((x, y), fill=(g, g, g))
    r = rng.randint(size // 6, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    fill = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in colour)
    for draw_on, value in ((d, fill), (m, label + 1)):
        if shape == "circle":
            draw_on.ellipse((cx - r, cy - r, cx + r, cy + r), fill=value)
        elif shape == "square":
            draw_on.rectangle((cx - r, cy - r, cx + r, cy + r), fill=value)
        elif shape == "triangle":
            draw_on.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=value)
        else:
            w = max(2, r // 3)
            draw_on.rectangle((cx - r, cy - w, cx + r, cy + w), fill=value)
            draw_on.rectangle((cx - w, cy - r, cx + w, cy + r), fill=value)
    attrs = {"colour": list(COLOURS)[label % len(COLOURS)], "shape": shape, "size": round(r / size, 4),
             "background": round(grey / 255, 4)}
    return im, attrs, mask


def mask_classes() -> dict[int, str]:
    """The synthetic masks' classes: 0 the ground, label + 1 each colour-shape class."""
    return {0: "ground", **{i + 1: name for i, name in enumerate(CLASSES)}}


def hierarchy() -> dict[str, list[str]]:
    """Each shape is the parent of its colour-shape classes (for ``analyze absorption``)."""
    return {shape: [f"{c} {shape}" for c in COLOURS] for shape in SHAPES}


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_synthetic_shards(out: str | Path, n_images: int, per_shard: int, seed: int = 0, size: int = 96,
                          masks: bool = True) -> list[Path]:
    """Write ``n_images`` labelled JPEGs as tars of ``per_shard`` (keys ``img0000000``…), plus classes.json
    and hierarchy.json; each sample's .json holds its label, class name and what :func:`draw_with_attributes`
    drew. With ``masks``, each sample has its segmentation mask (``seg.png``), and ``mask_classes.json``
    names their classes."""
    if n_images < 1 or per_shard < 1:
        raise ClipsaeError(f"need at least one image and one image per tar (got {n_images} and {per_shard})")
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for s, start in enumerate(range(0, n_images, per_shard)):
        samples = []
        for i in range(start, min(start + per_shard, n_images)):
            label = rng.randrange(len(CLASSES))
            im, attrs, mask = draw_with_mask(label, rng, size)
            samples.append({
                "__key__": f"img{i:07d}",
                "jpg": jpeg_bytes(im),
                "cls": label,
                "json": {"label": label, "class": CLASSES[label], **attrs},
                **({"seg.png": png_bytes(mask)} if masks else {}),
            })
        paths.append(write_tar(dest / f"{s:05d}.tar", samples))
    write_classes(dest, CLASSES)
    write_json(dest / "hierarchy.json", hierarchy(), indent=1)
    if masks:
        write_json(dest / MASK_CLASSES_FILE, {str(k): v for k, v in mask_classes().items()}, indent=1)
    return paths
