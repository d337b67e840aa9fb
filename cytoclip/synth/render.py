"""Nissl-like rendering of a label map: cell bodies in cresyl violet on a near-white slide.

Each structure has a cytoarchitecture (:class:`Cyto`): cell density, cell-body size and elongation, stain
intensity, clustering and neuropil tint. Known biology sets the transient cortical zones, germinal zones,
fibre tracts and ventricles; every other structure gets a profile derived deterministically from its
acronym (a SHA-256 hash, stable across runs and machines), so regions differ in learnable ways while
neighbours can look alike.

Rendering: cell centres are a Poisson point process drawn from a density raster on the label grid (8 µm/px);
each cell is an elliptical Gaussian body (size, elongation and orientation from its structure; radial cells
follow the gradient of the wall depth) splatted at level 0 by a compiled (numba) loop over cells, then the
neuropil is added and absorbance becomes colour through a Beer-Lambert table. The cost is one pass over the
cells and one over the pixels, which is what makes the demo atlas fast on one core.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
from numba import njit
from scipy import ndimage

# Optical density of cresyl violet per RGB channel as it scans (absorbs red and green, passes blue): dense stain
# is blue-violet, as in the DHARANI reference screenshots.
CRESYL_OD = np.array([0.74, 0.70, 0.20], dtype=np.float32)

ORIENT_RANDOM, ORIENT_RADIAL, ORIENT_TANGENTIAL = 0, 1, 2


@dataclass(frozen=True)
class Cyto:
    """Cytoarchitecture of one structure.

    ``density`` is cell bodies per level-0 pixel (2 µm/px); ``soma`` the Gaussian sigma of a cell body along its
    long axis (level-0 px) and ``elong`` long/short axis; ``orient`` how the long axis lies (random, radial =
    across the wall, tangential = along it); ``layers`` sub-bands of alternating density across the zone's depth
    (a laminated plate), ``columns`` amplitude of radial columns, ``sparse_top`` the fraction of the zone's depth
    next to the pia side that is cell-sparse (the sparse layer under the cortical plate).
    """

    density: float
    soma: float
    intensity: float  # peak absorbance of one cell body
    neuropil: float  # diffuse background absorbance of the tissue
    clustering: float = 0.0  # 0: uniform; >0: density modulated by a low-frequency field
    elong: float = 1.0
    orient: int = ORIENT_RANDOM
    layers: int = 0
    columns: float = 0.0
    sparse_top: float = 0.0
    tissue: bool = True  # False for ventricles (empty space)


def _stable_unit(key: str, salt: str) -> float:
    h = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


# Biology of the transient zones (Bayer & Altman; Kostovic & Rakic): a packed ventricular zone of radially
# elongated progenitors, a dense subventricular zone of small round cells, an intermediate zone of tangentially
# elongated migrating cells, a cell-poor subplate with scattered large neurons, a dense cortical plate of small
# radially aligned neurons in columns, and an almost cell-free marginal zone.
ZONE_CYTO: dict[str, Cyto] = {
    "MZ": Cyto(0.004, 1.0, 0.7, 0.04, 0.2),
    "CP": Cyto(0.055, 1.0, 0.85, 0.10, 0.1, elong=1.7, orient=ORIENT_RADIAL, columns=0.45),
    "SP": Cyto(0.012, 1.7, 0.8, 0.06, 0.4),
    "IZ": Cyto(0.014, 1.1, 0.7, 0.07, 0.2, elong=2.4, orient=ORIENT_TANGENTIAL),
    "SVZ": Cyto(0.045, 0.9, 0.85, 0.10, 0.3),
    "VZ": Cyto(0.07, 0.9, 0.9, 0.13, 0.1, elong=2.0, orient=ORIENT_RADIAL),
}
FIBRE_TRACTS = {"int", "ext", "cc", "ac", "fx", "mth", "och", "cp", "pc", "ml", "cpb", "emlth"}
GERMINAL = {"ftctxn", "orbn", "parn", "ocn", "tempn", "cingn", "phipn", "hipg", "str-g", "cc-gli", "dne", "tg",
            "hg", "mn", "rhn", "pcbn", "CB-g", "acbn", "TRI"}
VENTRICLES = {"LV", "3V", "Aq", "4V"}
# the developmental neuroepithelium drawn as each lobe's VZ (anatomy.LOBES) has the VZ's cytoarchitecture
_NEUROEPITHELIUM_LOBE = {"ftctxn": "FCTx", "orbn": "ORB", "parn": "PAR", "ocn": "OCC", "tempn": "TEMP",
                         "cingn": "CING", "phipn": "ENT"}
_SUFFIX_LOBE = {"FCTx": "frontal", "ORB": "orbital", "PAR": "parietal", "OCC": "occipital", "TEMP": "temporal",
                "INS": "insula", "CING": "cingulate", "ENT": "entorhinal"}


def _onset_reached(table: dict | None, lobe: str, age_gw: float) -> bool:
    onset = (table or {}).get(lobe)
    return onset is not None and age_gw >= float(onset)


def cytoarchitecture(acronym: str, age_gw: float, development: dict | None = None) -> Cyto:
    """The cytoarchitecture of ``acronym`` at ``age_gw``; ``development`` is the profile's development block
    (lamination and cell-sparse-layer onsets per lobe)."""
    a = float(np.clip((age_gw - 14.0) / 10.0, 0.0, 1.0))
    dev = development or {}
    if acronym in VENTRICLES or acronym == "background":
        return Cyto(0.0, 1.0, 0.0, 0.0, tissue=acronym != "background")
    if acronym in _NEUROEPITHELIUM_LOBE:
        acronym = "VZ-" + _NEUROEPITHELIUM_LOBE[acronym]
    zone, _, suffix = acronym.partition("-")
    if zone in ZONE_CYTO and suffix in _SUFFIX_LOBE:
        base = ZONE_CYTO[zone]
        lobe = _SUFFIX_LOBE[suffix]
        u = _stable_unit(suffix, "lobe:" + zone)  # lobes differ a little within a zone
        # germinal zones thin and empty, the plate and subplate fill with age (Bayer & Altman 2005)
        age = {"CP": 1.0 + 0.25 * a, "SP": 1.0 + 0.3 * a, "VZ": 1.0 - 0.35 * a, "SVZ": 1.0 - 0.2 * a}.get(zone, 1.0)
        c = replace(base, density=base.density * age * (0.75 + 0.5 * u),
                    intensity=base.intensity * (0.85 + 0.3 * _stable_unit(suffix, "int:" + zone)),
                    soma=base.soma * (0.85 + 0.3 * _stable_unit(suffix, "soma:" + zone)),
                    neuropil=base.neuropil * (0.8 + 0.4 * _stable_unit(suffix, "np:" + zone)))
        if zone == "CP":
            c = replace(c, soma=c.soma * (1.0 + 0.3 * a), columns=base.columns * (1.0 - 0.5 * a))
            if _onset_reached(dev.get("cp_lamination", {}).get("onset_gw"), lobe, age_gw):
                c = replace(c, layers=3, columns=c.columns * 0.5)
        if zone == "SP" and _onset_reached(dev.get("cell_sparse_layer", {}).get("onset_gw"), lobe, age_gw):
            c = replace(c, sparse_top=0.3)
        return c
    if acronym in GERMINAL or acronym == "GE":
        return Cyto(0.075 * (1.0 - 0.3 * a), 0.85, 1.0, 0.15, 0.15)
    if acronym in ("Rms", "Lms"):
        return Cyto(0.05, 1.2, 0.95, 0.1, 0.3, elong=2.2, orient=ORIENT_TANGENTIAL)
    if acronym in FIBRE_TRACTS:
        return Cyto(0.006, 1.2, 0.55, 0.025, 0.1, elong=2.5,
                    orient=ORIENT_TANGENTIAL if _stable_unit(acronym, "k") > 0.5 else ORIENT_RADIAL)
    if acronym == "DG":
        return Cyto(0.08, 0.9, 1.0, 0.12, 0.0)
    if acronym in ("SIM", "NOD"):  # cerebellar cortex under a dense external germinal layer
        return Cyto(0.045 + 0.02 * a, 0.9, 0.9, 0.1, 0.2, layers=2)
    # grey-matter nuclei: a deterministic profile from the structure's identity (density, soma size and shape,
    # stain, clustering), so nuclei differ in learnable ways while neighbours can look alike
    u = [_stable_unit(acronym, s) for s in ("d", "k", "i", "n", "c", "e")]
    return Cyto(density=0.008 + 0.024 * u[0], soma=0.9 + 1.1 * u[1],
                intensity=(0.6 + 0.4 * u[2]) * (1.0 + 0.1 * a), neuropil=0.03 + 0.06 * u[3],
                clustering=0.7 * u[4], elong=1.0 + 0.8 * u[5])


@dataclass(frozen=True)
class Stain:
    """Section-to-section variation of the preparation."""

    strength: float
    od: tuple[float, float, float]
    background: tuple[float, float, float]
    blur: float
    folds: int
    tears: int
    bubbles: int

    @classmethod
    def sample(cls, rng: np.random.Generator, artefacts: bool = True) -> "Stain":
        od = CRESYL_OD * rng.uniform(0.9, 1.1, 3)
        bg = (rng.uniform(243, 249), rng.uniform(242, 248), rng.uniform(245, 251))
        return cls(strength=float(rng.uniform(0.8, 1.2)), od=tuple(float(v) for v in od),
                   background=tuple(float(v) for v in bg), blur=float(rng.uniform(0.3, 0.9)),
                   folds=int(artefacts and rng.random() < 0.35), tears=int(artefacts and rng.random() < 0.35),
                   bubbles=int(rng.integers(0, 3)) if artefacts else 0)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """A smooth zero-mean, unit-ish field: coarse white noise upsampled (cheap low-frequency texture)."""
    gh, gw = max(2, shape[0] // cell + 2), max(2, shape[1] // cell + 2)
    coarse = ndimage.gaussian_filter(rng.standard_normal((gh, gw)).astype(np.float32), 1.0)
    coarse /= coarse.std() + 1e-6
    zoom = ndimage.zoom(coarse, (shape[0] / gh, shape[1] / gw), order=1)
    out = np.zeros(shape, dtype=np.float32)
    h, w = min(shape[0], zoom.shape[0]), min(shape[1], zoom.shape[1])
    out[:h, :w] = zoom[:h, :w]
    return out


COLUMN_PERIOD_UM = 60.0  # spacing of radial columns in the young cortical plate


@njit(cache=True)
def _splat(absorb, rows, cols, amp, sa, sb, theta):
    """Add one elliptical Gaussian cell body per cell (peak = its amplitude) into ``absorb`` in place."""
    h, w = absorb.shape
    for i in range(rows.shape[0]):
        r0, c0, s1, s2 = rows[i], cols[i], sa[i], sb[i]
        ct, st = np.cos(theta[i]), np.sin(theta[i])
        rad = int(2.5 * s1) + 1
        ir, ic = int(r0), int(c0)
        i1, i2 = 0.5 / (s1 * s1), 0.5 / (s2 * s2)
        for r in range(max(ir - rad, 0), min(ir + rad + 1, h)):
            dr = r + 0.5 - r0
            for c in range(max(ic - rad, 0), min(ic + rad + 1, w)):
                dc = c + 0.5 - c0
                u = dr * ct + dc * st
                v = -dr * st + dc * ct
                e = u * u * i1 + v * v * i2
                if e < 6.25:
                    absorb[r, c] += amp[i] * np.exp(-e)


@njit(cache=True)
def _compose(absorb, labels, factor, neuropil_lut, field, artefact, strength, lut):
    """Neuropil and artefacts on top of the cells, then absorbance -> RGB through a Beer-Lambert table."""
    h, w = absorb.shape
    out = np.empty((h, w, 3), dtype=np.uint8)
    gh, gw = field.shape
    nq = lut.shape[0] - 1
    for r in range(h):
        lr = r // factor
        fr = (r + 0.5) / factor - 0.5
        r0 = min(max(int(np.floor(fr)), 0), gh - 1)
        r1 = min(r0 + 1, gh - 1)
        wr = min(max(fr - r0, 0.0), 1.0)
        for c in range(w):
            lc = c // factor
            fc = (c + 0.5) / factor - 0.5
            c0 = min(max(int(np.floor(fc)), 0), gw - 1)
            c1 = min(c0 + 1, gw - 1)
            wc = min(max(fc - c0, 0.0), 1.0)
            f = ((1 - wr) * ((1 - wc) * field[r0, c0] + wc * field[r0, c1])
                 + wr * ((1 - wc) * field[r1, c0] + wc * field[r1, c1]))
            a = (absorb[r, c] + neuropil_lut[labels[lr, lc]] * (1.0 + 0.35 * f)) * artefact[lr, lc] * strength
            q = int(a * 256.0)
            q = min(max(q, 0), nq)
            out[r, c, 0] = lut[q, 0]
            out[r, c, 1] = lut[q, 1]
            out[r, c, 2] = lut[q, 2]
    return out


def _orientation(depth: np.ndarray) -> np.ndarray:
    """Angle (radians, rows/cols frame) of the radial direction of the wall: the gradient of the wall depth."""
    d = np.where(depth >= 0, depth, np.nan).astype(np.float32)
    d = ndimage.gaussian_filter(np.nan_to_num(d, nan=0.0), 1.5)
    gr, gc = np.gradient(d)
    return np.arctan2(gc, gr).astype(np.float32)


def cell_density(labels: np.ndarray, cyto: list[Cyto], fields: dict[str, np.ndarray], rng: np.random.Generator,
                 label_mpp: float) -> np.ndarray:
    """Expected cell bodies per level-0 pixel on the label grid: the structure's density shaped by clustering,
    the plate's columns and laminae and the cell-sparse layer."""
    lut = {k: np.array([getattr(c, k) for c in cyto], dtype=np.float32)
           for k in ("density", "clustering", "columns", "sparse_top")}
    lut["density"] *= np.array([c.tissue for c in cyto], dtype=np.float32)
    layers = np.array([c.layers for c in cyto], dtype=np.float32)
    dens = lut["density"][labels]
    dens *= np.clip(1.0 + lut["clustering"][labels] * _smooth_field(rng, labels.shape, 6), 0.0, None)
    zd = fields["zone_depth"]
    nl = layers[labels]
    dens *= np.where(nl > 0, 1.0 + 0.6 * np.cos(2 * np.pi * nl * zd), 1.0)
    # columns: radial stripes along the wall (arc is in normalised units; label_px_per_unit converts)
    period = COLUMN_PERIOD_UM / label_mpp
    arc_px = fields["arc"] * fields.get("label_px_per_unit", 1.0)
    dens *= 1.0 + lut["columns"][labels] * np.cos(2 * np.pi * arc_px / period)
    st = lut["sparse_top"][labels]
    dens *= np.where((st > 0) & (zd < st), 0.15, 1.0)
    return np.clip(dens, 0.0, None).astype(np.float32)


def render(labels: np.ndarray, cyto: list[Cyto], rng: np.random.Generator, stain: Stain, factor: int,
           fields: dict[str, np.ndarray], label_mpp: float) -> np.ndarray:
    """Render a label-index map (values index ``cyto``; each label pixel = ``factor`` x ``factor`` level-0
    pixels) to an RGB uint8 Nissl image at level 0."""
    gh, gw = labels.shape
    h, w = gh * factor, gw * factor
    dens = cell_density(labels, cyto, fields, rng, label_mpp)
    counts = rng.poisson(dens * factor * factor).ravel()
    cell_pix = np.repeat(np.arange(counts.size), counts)
    n = cell_pix.size
    lr, lc = np.divmod(cell_pix, gw)
    rows = (lr + rng.random(n)) * factor
    cols = (lc + rng.random(n)) * factor
    lab = labels.ravel()[cell_pix]
    c_int = np.array([c.intensity for c in cyto], dtype=np.float64)
    c_soma = np.array([c.soma for c in cyto], dtype=np.float64)
    c_el = np.array([c.elong for c in cyto], dtype=np.float64)
    c_or = np.array([c.orient for c in cyto], dtype=np.int8)
    amp = c_int[lab] * rng.uniform(0.6, 1.4, n)
    sa = c_soma[lab] * rng.lognormal(0.0, 0.2, n)
    sb = sa / (c_el[lab] * rng.uniform(0.8, 1.2, n))
    blur2 = stain.blur ** 2  # the optics' blur widens every body (blurring a Gaussian widens it)
    sa, sb = np.sqrt(sa * sa + blur2), np.sqrt(np.maximum(sb, 0.5) ** 2 + blur2)
    radial = _orientation(fields["depth"]).ravel()[cell_pix]
    orient = c_or[lab]
    theta = np.where(orient == ORIENT_RADIAL, radial,
                     np.where(orient == ORIENT_TANGENTIAL, radial + np.pi / 2, 0.0))
    theta = theta + np.where(orient == ORIENT_RANDOM, rng.uniform(0, np.pi, n), rng.normal(0, 0.25, n))
    absorb = np.zeros((h, w), dtype=np.float32)
    _splat(absorb, rows, cols, amp, sa, sb, theta)
    artefact = _artefacts(labels, rng, stain)
    neuropil = np.array([c.neuropil for c in cyto], dtype=np.float32)
    field = _smooth_field(rng, labels.shape, 10)
    q = np.arange(int(6.0 * 256) + 1, dtype=np.float64) / 256.0
    lut = np.stack([np.clip(stain.background[ch] * np.exp(-q * stain.od[ch]), 0, 255) for ch in range(3)],
                   axis=1).astype(np.uint8)
    return _compose(absorb, labels, int(factor), neuropil, field, artefact, np.float32(stain.strength), lut)


def _artefacts(labels: np.ndarray, rng: np.random.Generator, stain: Stain) -> np.ndarray:
    """A multiplicative absorbance map on the label grid: folds (doubled tissue: darker band), tears (empty
    crack) and bubbles (pale disc with a dark rim)."""
    h, w = labels.shape
    out = np.ones((h, w), dtype=np.float32)
    tissue_rows, tissue_cols = np.nonzero(labels)
    if tissue_rows.size == 0:
        return out

    def random_tissue_point() -> tuple[int, int]:
        i = int(rng.integers(0, tissue_rows.size))
        return int(tissue_rows[i]), int(tissue_cols[i])

    yy, xx = np.ogrid[:h, :w]
    for _ in range(stain.folds):
        r0, c0 = random_tissue_point()
        angle = rng.uniform(0, np.pi)
        dist = np.abs((yy - r0) * np.cos(angle) - (xx - c0) * np.sin(angle))
        width = rng.uniform(0.004, 0.012) * max(h, w)
        along = np.abs((yy - r0) * np.sin(angle) + (xx - c0) * np.cos(angle)) < rng.uniform(0.1, 0.3) * max(h, w)
        out[(dist < width) & along & (labels > 0)] *= np.float32(1.8)
    for _ in range(stain.tears):
        r0, c0 = random_tissue_point()
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.03, 0.1) * max(h, w)
        t = np.linspace(-0.5, 0.5, 400) * length
        wobble = np.cumsum(rng.normal(0, 0.3, t.size))
        rr = np.clip((r0 + t * np.sin(angle) + wobble * np.cos(angle)).astype(int), 0, h - 1)
        cc = np.clip((c0 + t * np.cos(angle) - wobble * np.sin(angle)).astype(int), 0, w - 1)
        out[rr, cc] = 0.0
    for _ in range(stain.bubbles):
        r0, c0 = random_tissue_point()
        rad = rng.uniform(0.004, 0.015) * max(h, w)
        d = np.sqrt((yy - r0) ** 2 + (xx - c0) ** 2)
        out[d < rad] *= np.float32(0.35)
        out[(d >= rad) & (d < rad + 0.6)] *= np.float32(1.8)
    return out
