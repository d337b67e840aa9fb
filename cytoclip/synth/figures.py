"""Figures that put the synthetic atlas beside real DHARANI screenshots, to judge its realism by eye."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["compare_with_reference", "REFERENCE_OVERVIEW", "REFERENCE_CORTEX"]

REFERENCE_OVERVIEW = "dharani_specimen1_section1009_overview_with_annotation.png"
REFERENCE_CORTEX = "dharani_specimen1_section1009_cortex_level4_crop.png"


def _pick_section(atlas, specimen: int | None, section: int | None):
    secs = atlas.sections()
    if specimen is not None:
        secs = secs[secs["specimen"] == specimen]
    if section is not None:
        secs = secs[secs["section"] == section]
    if secs.empty:
        raise ValueError(f"{atlas.root}: no section matches specimen={specimen} section={section}")
    # the most medial-but-not-midline sagittal cut of the oldest brain shows the most structures
    if specimen is None and section is None:
        sag = secs[secs["plane"] == "sagittal"]
        secs = sag[sag["age_gw"] == sag["age_gw"].max()] if not sag.empty else secs
    rec = secs.iloc[min(1, len(secs) - 1)] if len(secs) > 1 else secs.iloc[0]
    return atlas.section(int(rec["specimen"]), int(rec["section"]))


def _pick_coronal(atlas):
    """The middle section of the coronal specimen (a cut of the same 3-D anatomy), or None."""
    secs = atlas.sections()
    secs = secs[secs["plane"] == "coronal"]
    if secs.empty:
        return None
    rec = secs.iloc[len(secs) // 2]
    return atlas.section(int(rec["specimen"]), int(rec["section"]))


def _outlined(ax, sec, mpp, onto, title):
    ax.imshow(sec.read_level(mpp))
    geoms = sec.annotations(mpp=mpp)
    for oid, g in geoms.items():
        for part in getattr(g, "geoms", [g]):
            xs, ys = part.exterior.xy
            ax.plot(xs, ys, lw=0.4, color=onto.color(oid))
    ax.set_title(f"{title}\nspecimen {sec.specimen} section {sec.section} ({sec.age_gw:g} GW {sec.plane}, "
                 f"{mpp:g} µm/px, {len(geoms)} ids)", fontsize=9)
    ax.axis("off")


def compare_with_reference(atlas_root: str | os.PathLike, reference_dir: str | os.PathLike,
                           out_png: str | os.PathLike, specimen: int | None = None, section: int | None = None,
                           overview_mpp: float = 32.0) -> Path:
    """Write a figure: synthetic section overview (with outlines) and cortical-wall close-ups beside DHARANI.

    Top row: the synthetic section at ``overview_mpp`` µm/px with its annotation outlines, and the reference
    DHARANI overview screenshot. Bottom row: the synthetic cortical wall at 16 µm/px (the reference crop's
    scale), a 2 µm/px close-up of the same wall, and the reference cortex crop. Returns ``out_png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from cytoclip.atlas import Atlas
    from cytoclip.io import atomic_path

    reference_dir = Path(reference_dir)
    refs = {}
    for name in (REFERENCE_OVERVIEW, REFERENCE_CORTEX):
        path = reference_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: reference screenshot not found (expected the DHARANI PNGs in "
                                    f"{reference_dir})")
        refs[name] = np.asarray(Image.open(path).convert("RGB"))
    atlas = Atlas(atlas_root)
    onto = atlas.ontology
    sec = _pick_section(atlas, specimen, section)

    # the close-up: the centre of the largest cortical-plate piece, where the wall's zones lie side by side
    cp = [(g.area, oid) for oid, g in sec.annotations(mpp=16.0).items() if onto[oid].acronym.startswith("CP-")]
    if not cp:
        raise ValueError(f"{sec.image_path}: no cortical plate annotated; choose another section")
    cp_geom = sec.annotations(mpp=16.0)[max(cp)[1]]
    px, py = cp_geom.representative_point().coords[0]
    w16, h16 = 400, 320
    crop16 = sec.read_region(int(px - w16 / 2), int(py - h16 / 2), w16, h16, mpp=16.0)
    w2, h2 = 600, 480  # 1.2 x 0.96 mm at 2 µm/px
    crop2 = sec.read_region(int(px * 8 - w2 / 2), int(py * 8 - h2 / 2), w2, h2, mpp=2.0)

    fig = plt.figure(figsize=(18, 10.5))
    gs = fig.add_gridspec(2, 6, height_ratios=[1.1, 1])
    _outlined(fig.add_subplot(gs[0, 0:2]), sec, overview_mpp, onto, "SYNTHETIC sagittal")
    cor = _pick_coronal(atlas)
    if cor is not None:
        _outlined(fig.add_subplot(gs[0, 2:4]), cor, overview_mpp, onto, "SYNTHETIC coronal (same 3-D model)")
    ax = fig.add_subplot(gs[0, 4:6])
    ax.imshow(refs[REFERENCE_OVERVIEW])
    ax.set_title("REAL: DHARANI specimen 1 section 1009 (CC BY 4.0),\n128 µm/px, with annotation", fontsize=9)
    ax.axis("off")
    panels = [(crop16, "SYNTHETIC cortical wall, 16 µm/px"), (crop2, "SYNTHETIC close-up, 2 µm/px"),
              (refs[REFERENCE_CORTEX], "REAL: DHARANI cortex crop, 16 µm/px (CC BY 4.0)")]
    for i, (img, title) in enumerate(panels):
        ax = fig.add_subplot(gs[1, 2 * i:2 * i + 2])
        ax.imshow(img)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle("Synthetic atlas (procedural, NOT DHARANI data) beside real DHARANI screenshots", fontsize=12)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out_png
