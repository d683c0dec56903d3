"""A figure of matched feature pairs: each row shows an A feature's top images beside its B partner's."""

from pathlib import Path

from PIL import Image

from clipsae.analysis.output import pyplot


def plot_pairs(rows: list[tuple[str, list[Image.Image], list[Image.Image]]], per_side: int, path: Path,
               title: str) -> Path:
    """``rows``: (caption, A's images, B's images); a side with fewer images leaves blank cells."""
    plt = pyplot()
    cols = 2 * per_side + 1
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols, 1.5 * len(rows) + 0.6), squeeze=False)
    for r, (caption, imgs_a, imgs_b) in enumerate(rows):
        cells = [*imgs_a[:per_side], *[None] * (per_side - len(imgs_a[:per_side])), None,
                 *imgs_b[:per_side], *[None] * (per_side - len(imgs_b[:per_side]))]
        for c, im in enumerate(cells):
            ax = axes[r, c]
            ax.axis("off")
            if im is not None:
                ax.imshow(im)
        axes[r, 0].set_title(caption, loc="left", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
