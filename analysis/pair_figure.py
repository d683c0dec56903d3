"""A figure of matched feature pairs: each row shows an A feature's top images beside its B partner's."""

from pathlib import Path

from PIL import Image

from clipsae.analysis.output import pyplot


def plot_pairs(rows: list[tuple[str, list[Image.Image], list[Image.Image]]], per_side: int, path: Path,
               title: str) -> Path:
    """``rows``: (caption, A's images, B's images); a side with fewer images leaves blank cells."""
    plt = pyplot()
    cols = 2 * per_side + 1
    height = 1.6 * len(rows) + 0.7
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols, height), squeeze=False)
    for r, (caption, imgs_a, imgs_b) in enumerate(rows):
        cells = [*imgs_a[:per_side], *[None] * (per_side - len(imgs_a[:per_side])), None,
                 *imgs_b[:per_side], *[None] * (per_side - len(imgs_b[:per_side]))]
        for c, im in enumerate(cells):
            ax = axes[r, c]
            ax.axis("off")
            if im is not None:
                ax.imshow(im)
        # Captions at 11 pt and 110 dpi: about 17 pixels tall, readable without zooming in.
        axes[r, 0].set_title(caption, loc="left", fontsize=11)
    fig.suptitle(title, fontsize=12)
    # Fixed margins, not tight_layout: a caption wider than its cell would make it shrink every image.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 0.55 / height, wspace=0.06, hspace=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
