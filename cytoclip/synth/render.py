"""Nissl-like rendering of a label map: cell bodies in cresyl violet on a near-white slide.

Each structure has a cytoarchitecture (:class:`Cyto`): cell density, cell-body size and elongation, stain
intensity, clustering and neuropil tint. Known biology sets the transient cortical zones, germinal zones,
fibre tracts and ventricles; every other structure gets a profile derived deterministically from its
acronym (a SHA-256 hash, stable across runs and machines), so regions differ in learnable ways while
neighbours can look alike.

Rendering is O(pixels) and vectorised: cell centres are a Bernoulli point process drawn from a per-pixel
density raster, splatted into one raster per cell-shape class and shaped by a Gaussian filter (the cell
body), then converted to colour with Beer-Lambert absorption. There is no loop over cells.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

# Optical density of cresyl violet per RGB channel as it scans (absorbs red and green, passes blue): dense stain
# is blue-violet, as in the DHARANI reference screenshots.
CRESYL_OD = np.array([0.74, 0.70, 0.20], dtype=np.float32)

# Cell-body shapes (Gaussian sigma in level-0 pixels along rows, cols): small round, medium, large,
# radially elongated (vertical), tangentially elongated (horizontal).
KERNELS: list[tuple[float, float]] = [(0.9, 0.9), (1.3, 1.3), (1.9, 1.9), (1.6, 0.8), (0.8, 1.6)]


@dataclass(frozen=True)
class Cyto:
    """Cytoarchitecture of one structure (densities are cell centres per level-0 pixel)."""

    density: float
    kernel: int  # index into KERNELS
    intensity: float  # peak absorbance of one cell body
    neuropil: float  # diffuse background absorbance of the tissue
    clustering: float = 0.0  # 0: uniform; >0: density modulated by a low-frequency field
    tissue: bool = True  # False for ventricles (empty space)


def _stable_unit(key: str, salt: str) -> float:
    h = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


# Biology of the transient zones (Bayer & Altman; Kostovic): germinal zones packed with small cells, a dense
# cortical plate, cell-sparse marginal zone and subplate, an intermediate zone of migrating elongated cells.
ZONE_CYTO: dict[str, Cyto] = {
    "MZ": Cyto(0.0025, 1, 0.7, 0.05, 0.2),
    "CP": Cyto(0.042, 1, 0.8, 0.10, 0.1),
    "SP": Cyto(0.0055, 2, 0.75, 0.06, 0.4),
    "IZ": Cyto(0.010, 4, 0.7, 0.07, 0.2),
    "SVZ": Cyto(0.040, 0, 0.85, 0.10, 0.3),
    "VZ": Cyto(0.065, 3, 0.9, 0.13, 0.1),
}
FIBRE_TRACTS = {"int", "ext", "cc", "ac", "fx", "mth", "och", "cp", "pc", "ml", "cpb", "emlth"}
GERMINAL = {"ftctxn", "orbn", "parn", "ocn", "tempn", "cingn", "phipn", "hipg", "str-g", "cc-gli", "dne", "tg",
            "hg", "mn", "rhn", "pcbn", "CB-g", "acbn", "TRI"}
VENTRICLES = {"LV", "3V", "Aq", "4V"}


def cytoarchitecture(acronym: str, age_factor: float) -> Cyto:
    """The cytoarchitecture of ``acronym`` at an age (0 = 14 GW, 1 = 24 GW)."""
    a = age_factor
    if acronym in VENTRICLES or acronym == "background":
        return Cyto(0.0, 0, 0.0, 0.0, tissue=acronym != "background")
    zone = acronym.split("-", 1)[0]
    if zone in ZONE_CYTO and "-" in acronym:
        base = ZONE_CYTO[zone]
        u = _stable_unit(acronym, "lobe")  # lobes differ a little within a zone
        age = {"CP": 1.0 + 0.25 * a, "SP": 1.0 + 0.3 * a, "VZ": 1.0 - 0.35 * a, "SVZ": 1.0 - 0.2 * a}.get(zone, 1.0)
        return replace(base, density=base.density * age * (0.8 + 0.4 * u),
                       intensity=base.intensity * (0.9 + 0.2 * _stable_unit(acronym, "int")),
                       kernel=base.kernel if zone != "CP" or a < 0.6 else 2 if u > 0.6 else 1)
    if acronym in GERMINAL or acronym == "GE":
        return Cyto(0.075 * (1.0 - 0.3 * a), 0, 1.0, 0.15, 0.15)
    if acronym in ("Rms", "Lms"):
        return Cyto(0.05, 3 if acronym == "Lms" else 4, 0.95, 0.1, 0.3)
    if acronym in FIBRE_TRACTS:
        return Cyto(0.006, 4 if _stable_unit(acronym, "k") > 0.5 else 3, 0.55, 0.025, 0.1)
    if acronym == "DG":
        return Cyto(0.08, 0, 1.0, 0.12, 0.0)
    if acronym in ("SIM", "NOD"):  # cerebellar cortex under a dense external germinal layer
        return Cyto(0.045 + 0.02 * a, 0, 0.9, 0.1, 0.2)
    # grey-matter nuclei: a deterministic profile from the structure's identity
    u = [_stable_unit(acronym, s) for s in ("d", "k", "i", "n", "c")]
    return Cyto(density=0.008 + 0.022 * u[0], kernel=[0, 1, 2, 1, 2][int(u[1] * 5)],
                intensity=(0.6 + 0.4 * u[2]) * (1.0 + 0.1 * a), neuropil=0.03 + 0.06 * u[3],
                clustering=0.7 * u[4])


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


def render(labels: np.ndarray, cyto: list[Cyto], rng: np.random.Generator, stain: Stain) -> np.ndarray:
    """Render an (H, W) label-index map (values index ``cyto``) to an RGB uint8 Nissl image."""
    shape = labels.shape
    dens_lut = np.array([c.density * c.tissue for c in cyto], dtype=np.float32)
    clus_lut = np.array([c.clustering for c in cyto], dtype=np.float32)
    int_lut = np.array([c.intensity for c in cyto], dtype=np.float32)
    np_lut = np.array([c.neuropil for c in cyto], dtype=np.float32)
    kern_lut = np.array([c.kernel for c in cyto], dtype=np.int8)

    density = dens_lut[labels]
    cluster = _smooth_field(rng, shape, 24)
    density *= np.clip(1.0 + clus_lut[labels] * cluster, 0.0, None)
    centres = rng.random(shape, dtype=np.float32) < density
    del density
    absorb = np.zeros(shape, dtype=np.float32)
    amp = int_lut[labels] * rng.uniform(0.6, 1.4, size=shape).astype(np.float32)
    kernel_of = kern_lut[labels]
    for k, (sr, sc) in enumerate(KERNELS):
        pts = np.where(centres & (kernel_of == k), amp, 0.0).astype(np.float32)
        if not pts.any():
            continue
        # a delta through a Gaussian peaks at 1 / (2 pi sr sc): rescale so one cell's peak = its intensity
        absorb += ndimage.gaussian_filter(pts, (sr, sc), truncate=3.0) * np.float32(2 * np.pi * sr * sc)
    del pts, amp, centres
    absorb += np_lut[labels] * (1.0 + 0.35 * _smooth_field(rng, shape, 40))
    _artefacts(absorb, labels, rng, stain)
    absorb *= np.float32(stain.strength)
    if stain.blur > 0:
        absorb = ndimage.gaussian_filter(absorb, stain.blur)
    np.clip(absorb, 0.0, 6.0, out=absorb)
    rgb = np.empty(shape + (3,), dtype=np.uint8)
    for ch in range(3):
        rgb[..., ch] = np.clip(stain.background[ch] * np.exp(-absorb * np.float32(stain.od[ch])), 0, 255)
    return rgb


def _artefacts(absorb: np.ndarray, labels: np.ndarray, rng: np.random.Generator, stain: Stain) -> None:
    """Folds (doubled tissue: darker band), tears (empty crack) and bubbles (pale disc with a dark rim)."""
    h, w = absorb.shape
    tissue_rows, tissue_cols = np.nonzero(labels[:: max(1, h // 200), :: max(1, w // 200)])
    if tissue_rows.size == 0:
        return
    scale_r, scale_c = max(1, h // 200), max(1, w // 200)

    def random_tissue_point() -> tuple[int, int]:
        i = int(rng.integers(0, tissue_rows.size))
        return int(tissue_rows[i] * scale_r), int(tissue_cols[i] * scale_c)

    yy, xx = np.ogrid[:h, :w]
    for _ in range(stain.folds):
        r0, c0 = random_tissue_point()
        angle = rng.uniform(0, np.pi)
        dist = np.abs((yy - r0) * np.cos(angle) - (xx - c0) * np.sin(angle))
        width = rng.uniform(0.004, 0.012) * max(h, w)
        along = np.abs((yy - r0) * np.sin(angle) + (xx - c0) * np.cos(angle)) < rng.uniform(0.1, 0.3) * max(h, w)
        band = (dist < width) & along & (labels > 0)
        absorb[band] *= np.float32(1.8)
    for _ in range(stain.tears):
        r0, c0 = random_tissue_point()
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.03, 0.1) * max(h, w)
        t = np.linspace(-0.5, 0.5, 400) * length
        wobble = np.cumsum(rng.normal(0, 0.8, t.size))
        rr = np.clip((r0 + t * np.sin(angle) + wobble * np.cos(angle)).astype(int), 0, h - 1)
        cc = np.clip((c0 + t * np.cos(angle) - wobble * np.sin(angle)).astype(int), 0, w - 1)
        crack = np.zeros((h, w), dtype=bool)
        crack[rr, cc] = True
        crack = ndimage.binary_dilation(crack, iterations=int(rng.integers(2, 5)))
        absorb[crack] = 0.0
    for _ in range(stain.bubbles):
        r0, c0 = random_tissue_point()
        rad = rng.uniform(0.004, 0.015) * max(h, w)
        r_lo, r_hi = max(0, int(r0 - rad - 4)), min(h, int(r0 + rad + 4))
        c_lo, c_hi = max(0, int(c0 - rad - 4)), min(w, int(c0 + rad + 4))
        d = np.sqrt((yy[r_lo:r_hi] - r0) ** 2 + (xx[:, c_lo:c_hi] - c0) ** 2)
        window = absorb[r_lo:r_hi, c_lo:c_hi]  # a view: edits land in ``absorb``
        window[d < rad] *= np.float32(0.35)
        window[(d >= rad) & (d < rad + 2.5)] += np.float32(0.8)
