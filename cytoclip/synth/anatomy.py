"""Procedural 3-D anatomy of a developing human brain, evaluated on the 2-D grid of a section.

The brain lives in normalised coordinates: ``x`` anterior (+) to posterior (-), ``y`` dorsal (+) to ventral (-),
``z`` left-right (0 = midline); one unit is half the brain's length. Structures are smooth implicit shapes
(ellipsoids and capsules whose signed distance is perturbed by a smooth 3-D noise field, so neighbouring sections
agree) listed in :data:`STRUCTURES` in painting order; each names a real DHARANI ontology structure by acronym at
the level an annotator draws (leaves or near-leaves), so the paper's merge spec folds them into regions.

The cortical wall is not a shape of its own: inside the cerebrum, a point's relative depth between the pial
surface and the lateral ventricle picks its transient zone (marginal zone ... ventricular zone) and its position
picks the lobe. Zone thicknesses depend on age (the cortical plate and subplate thicken, the germinal zones thin).

Nothing here loops over pixels: every structure is one vectorised expression on the section's coordinate arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Array = np.ndarray

# ---------------------------------------------------------------------------------------------- 3-D noise


@dataclass(frozen=True)
class Noise3D:
    """A smooth random field on R^3: a sum of random plane waves (consistent across all cuts of one brain)."""

    k: Array  # (n, 3) wave vectors
    phase: Array  # (n,)
    amp: Array  # (n,)

    @classmethod
    def make(cls, rng: np.random.Generator, n: int = 24, scale: float = 4.0) -> "Noise3D":
        k = rng.normal(size=(n, 3)) * scale
        return cls(k=k, phase=rng.uniform(0, 2 * np.pi, n), amp=rng.uniform(0.5, 1.0, n) / np.sqrt(n))

    def __call__(self, x: Array, y: Array, z: Array) -> Array:
        out = np.zeros(np.broadcast(x, y, z).shape, dtype=np.float32)
        for (kx, ky, kz), ph, a in zip(self.k, self.phase, self.amp):
            out += np.float32(a) * np.sin(kx * x + ky * y + kz * z + ph).astype(np.float32)
        return out


# ---------------------------------------------------------------------------------------------- shapes

def ellipsoid(c: tuple[float, float, float], r: tuple[float, float, float]) -> Callable:
    """Approximate signed distance of an ellipsoid (negative inside), in normalised units."""
    cx, cy, cz = c
    rx, ry, rz = r
    rmin = min(r)

    def sdf(x: Array, y: Array, z: Array) -> Array:
        q = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2)
        return (q - 1.0) * rmin

    return sdf


def capsule(a: tuple[float, float, float], b: tuple[float, float, float], radius: float) -> Callable:
    """Signed distance of a capsule (segment a-b thickened by ``radius``)."""
    a_ = np.asarray(a, dtype=np.float64)
    ab = np.asarray(b, dtype=np.float64) - a_
    denom = float(ab @ ab)

    def sdf(x: Array, y: Array, z: Array) -> Array:
        px, py, pz = x - a_[0], y - a_[1], z - a_[2]
        t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / denom, 0.0, 1.0)
        dx, dy, dz = px - t * ab[0], py - t * ab[1], pz - t * ab[2]
        return np.sqrt(dx * dx + dy * dy + dz * dz) - radius

    return sdf


def mirrored(shape_fn: Callable[[float], Callable]) -> Callable:
    """A bilateral structure: ``shape_fn(side)`` builds one side; the union of both hemispheres."""
    left, right = shape_fn(-1.0), shape_fn(1.0)

    def sdf(x: Array, y: Array, z: Array) -> Array:
        return np.minimum(left(x, y, z), right(x, y, z))

    return sdf


def shell(inner: Callable, thickness: float) -> Callable:
    """A layer of ``thickness`` lining the outside of ``inner``."""

    def sdf(x: Array, y: Array, z: Array) -> Array:
        d = inner(x, y, z)
        return np.abs(d - thickness / 2) - thickness / 2

    return sdf


# ---------------------------------------------------------------------------------------------- the brain


@dataclass(frozen=True)
class Structure:
    """One painted structure: ontology acronym, signed distance, optional restriction to part of its shape."""

    acronym: str
    sdf: Callable
    where: Callable | None = None  # (x, y, z) -> bool mask restricting the shape
    noise: float = 0.012  # amplitude of boundary perturbation (normalised units)


def age_factor(age_gw: float) -> float:
    """0 at 14 GW, 1 at 24 GW (clipped)."""
    return float(np.clip((age_gw - 14.0) / 10.0, 0.0, 1.0))


def cerebrum_sdf(a: float) -> Callable:
    """Two hemispheres (split by the interhemispheric fissure) whose temporal lobes hang below the lateral
    (Sylvian) fissure: lateral sagittal cuts show the C-shaped hemisphere of the fetal brain."""
    dorsal = mirrored(lambda s: ellipsoid((0.05, 0.2, s * 0.37), (0.95, 0.52, 0.45 + 0.03 * a)))
    temporal = mirrored(lambda s: ellipsoid((-0.08, -0.3, s * 0.5), (0.5, 0.24, 0.26)))
    basal = mirrored(lambda s: ellipsoid((0.1, -0.12, s * 0.25), (0.55, 0.3, 0.3)))
    fissure = mirrored(lambda s: ellipsoid((0.12, -0.1, s * 0.8), (0.5, 0.045 + 0.02 * (1 - a), 0.2)))

    def sdf(x, y, z):
        inside = np.minimum.reduce([dorsal(x, y, z), temporal(x, y, z), basal(x, y, z)])
        return np.maximum(inside, -fissure(x, y, z))

    return sdf


def ventricle_sdf(a: float) -> Callable:
    grow = 1.9 - 0.8 * a  # the lateral ventricles are large early and narrow with age
    body = mirrored(lambda s: ellipsoid((0.02, 0.17, s * 0.22), (0.58, 0.10 * grow, 0.075 * grow)))
    temporal_horn = mirrored(lambda s: capsule((-0.35, 0.12, s * 0.25), (-0.12, -0.24, s * 0.43), 0.035 * grow))
    frontal_horn = mirrored(lambda s: ellipsoid((0.42, 0.12, s * 0.2), (0.2, 0.09 * grow, 0.06 * grow)))

    def sdf(x, y, z):
        return np.minimum(np.minimum(body(x, y, z), temporal_horn(x, y, z)), frontal_horn(x, y, z))

    return sdf


# Cortical zones from the pial surface inwards; thickness fractions of the wall at 14 GW (a=0) and 24 GW (a=1).
ZONES: list[tuple[str, float, float]] = [
    ("MZ", 0.05, 0.04),
    ("CP", 0.10, 0.22),
    ("SP", 0.10, 0.22),
    ("IZ", 0.25, 0.22),
    ("SVZ", 0.22, 0.16),
    ("VZ", 0.28, 0.14),
]

# Lobe -> (cortex acronym suffix used by layer acronyms, developmental neuroepithelium drawn for its VZ).
LOBES: dict[str, tuple[str, str | None]] = {
    "frontal": ("FCTx", "ftctxn"),
    "orbital": ("ORB", "orbn"),
    "parietal": ("PAR", "parn"),
    "occipital": ("OCC", "ocn"),
    "temporal": ("TEMP", "tempn"),
    "insula": ("INS", None),
    "cingulate": ("CING", "cingn"),
    "entorhinal": ("ENT", "phipn"),
}


def lobe_masks(x: Array, y: Array, z: Array, n: Array) -> dict[str, Array]:
    """Lobe of every cortical point, by position with noisy boundaries (order matters: first match wins)."""
    az = np.abs(z)
    xn, yn = x + 0.06 * n, y + 0.06 * n
    masks: dict[str, Array] = {}
    taken = np.zeros(x.shape, dtype=bool)

    def claim(name: str, m: Array) -> None:
        nonlocal taken
        m = m & ~taken
        masks[name] = m
        taken = taken | m

    claim("entorhinal", (yn < -0.18) & (az < 0.42) & (xn > -0.45) & (xn < 0.2))
    claim("cingulate", (az < 0.17) & (yn > 0.02) & (xn > -0.55) & (xn < 0.55))
    claim("insula", (az > 0.62) & (np.abs(yn + 0.02) < 0.16) & (np.abs(xn - 0.05) < 0.28))
    claim("orbital", (xn > 0.42) & (yn < 0.02))
    claim("occipital", xn < -0.55)
    claim("frontal", xn > 0.18)
    claim("temporal", yn < -0.04)
    claim("parietal", np.ones_like(taken))
    return masks


def deep_structures(a: float) -> list[Structure]:
    """Everything inside or below the cerebral wall, in painting order (later structures win)."""
    ge = 1.25 - 0.7 * a  # the ganglionic eminence shrinks as it empties
    cb = 0.75 + 0.35 * a  # the cerebellum grows late
    return [
        # basal nuclei and their surroundings
        Structure("Cau", mirrored(lambda s: ellipsoid((0.18, 0.05, s * 0.3), (0.34, 0.12, 0.085)))),
        Structure("Put", mirrored(lambda s: ellipsoid((0.1, -0.06, s * 0.47), (0.27, 0.15, 0.08)))),
        Structure("GPl", mirrored(lambda s: ellipsoid((0.04, -0.09, s * 0.39), (0.14, 0.1, 0.045)))),
        Structure("GPm", mirrored(lambda s: ellipsoid((0.02, -0.1, s * 0.35), (0.1, 0.08, 0.03)))),
        Structure("NAc", mirrored(lambda s: ellipsoid((0.33, -0.12, s * 0.22), (0.1, 0.07, 0.08)))),
        Structure("ext", mirrored(lambda s: ellipsoid((0.08, -0.05, s * 0.575), (0.27, 0.17, 0.022)))),
        Structure("CLA", mirrored(lambda s: ellipsoid((0.08, -0.06, s * 0.615), (0.2, 0.13, 0.018)))),
        Structure("tcete", mirrored(lambda s: ellipsoid((0.08, -0.06, s * 0.65), (0.18, 0.11, 0.016)))),
        Structure("int", mirrored(lambda s: capsule((0.32, 0.06, s * 0.34), (-0.12, -0.14, s * 0.27), 0.04))),
        Structure("GE", mirrored(lambda s: ellipsoid((0.14, 0.1, s * 0.26), (0.24 * ge, 0.08 * ge, 0.075 * ge)))),
        Structure("str-g", mirrored(lambda s: shell(ellipsoid((0.14, 0.1, s * 0.26),
                                                              (0.24 * ge, 0.08 * ge, 0.075 * ge)), 0.025))),
        # amygdala and hippocampal formation (medial temporal lobe)
        Structure("LA", mirrored(lambda s: ellipsoid((0.14, -0.3, s * 0.47), (0.09, 0.08, 0.06)))),
        Structure("CEA", mirrored(lambda s: ellipsoid((0.16, -0.25, s * 0.4), (0.07, 0.06, 0.05)))),
        Structure("MEA", mirrored(lambda s: ellipsoid((0.12, -0.33, s * 0.38), (0.07, 0.06, 0.05)))),
        Structure("CP-HIP", mirrored(lambda s: capsule((-0.4, -0.17, s * 0.4), (-0.06, -0.3, s * 0.45), 0.06))),
        Structure("DG", mirrored(lambda s: capsule((-0.38, -0.19, s * 0.41), (-0.08, -0.31, s * 0.455), 0.03))),
        Structure("CP-SUB", mirrored(lambda s: capsule((-0.38, -0.25, s * 0.34), (-0.06, -0.37, s * 0.39), 0.04))),
        Structure("CP-PRESUB", mirrored(lambda s: capsule((-0.36, -0.3, s * 0.29), (-0.1, -0.41, s * 0.34),
                                                          0.035))),
        Structure("CP-PARA", mirrored(lambda s: capsule((-0.3, -0.35, s * 0.25), (-0.12, -0.44, s * 0.29), 0.03))),
        Structure("hipg", mirrored(lambda s: capsule((-0.4, -0.12, s * 0.4), (-0.08, -0.24, s * 0.45), 0.025))),
        Structure("fx", mirrored(lambda s: capsule((0.12, 0.12, s * 0.05), (-0.3, 0.18, s * 0.12), 0.03))),
        # diencephalon
        Structure("AV", mirrored(lambda s: ellipsoid((0.08, 0.05, s * 0.1), (0.08, 0.06, 0.05)))),
        Structure("MD", mirrored(lambda s: ellipsoid((-0.08, 0.02, s * 0.07), (0.12, 0.1, 0.06)))),
        Structure("VL", mirrored(lambda s: ellipsoid((-0.04, -0.05, s * 0.17), (0.12, 0.09, 0.07)))),
        Structure("VPL", mirrored(lambda s: ellipsoid((-0.15, -0.08, s * 0.2), (0.1, 0.08, 0.06)))),
        Structure("PULV", mirrored(lambda s: ellipsoid((-0.3, 0.0, s * 0.15), (0.11, 0.11, 0.08)))),
        Structure("LGN", mirrored(lambda s: ellipsoid((-0.28, -0.15, s * 0.24), (0.06, 0.05, 0.04)))),
        Structure("RT", mirrored(lambda s: shell(ellipsoid((-0.1, -0.03, s * 0.15), (0.3, 0.16, 0.12)), 0.02)),
                  where=lambda x, y, z: np.abs(z) > 0.1),
        Structure("emlth", mirrored(lambda s: shell(ellipsoid((-0.1, -0.03, s * 0.15), (0.28, 0.14, 0.1)), 0.015)),
                  where=lambda x, y, z: np.abs(z) > 0.1),
        Structure("LH", mirrored(lambda s: ellipsoid((-0.26, 0.1, s * 0.05), (0.04, 0.03, 0.03)))),
        Structure("MEPO", mirrored(lambda s: ellipsoid((0.24, -0.25, s * 0.05), (0.07, 0.06, 0.04)))),
        Structure("LHA", mirrored(lambda s: ellipsoid((0.06, -0.27, s * 0.1), (0.12, 0.07, 0.05)))),
        Structure("VMH", mirrored(lambda s: ellipsoid((0.02, -0.33, s * 0.05), (0.07, 0.05, 0.04)))),
        Structure("MMN", mirrored(lambda s: ellipsoid((-0.12, -0.35, s * 0.04), (0.05, 0.045, 0.035)))),
        Structure("mth", mirrored(lambda s: capsule((-0.12, -0.3, s * 0.05), (0.02, 0.0, s * 0.08), 0.015))),
        Structure("och", capsule((0.2, -0.38, -0.15), (0.2, -0.38, 0.15), 0.03)),
        Structure("ac", capsule((0.2, -0.16, -0.45), (0.2, -0.16, 0.45), 0.028)),
        # midline: corpus callosum, its glioepithelium and sling; ventricles and their linings
        Structure("cc", ellipsoid((-0.02, 0.29, 0.0), (0.47, 0.05, 0.5)), where=lambda x, y, z: np.abs(z) < 0.42),
        Structure("cc-gli", ellipsoid((-0.02, 0.235, 0.0), (0.42, 0.02, 0.3)), where=lambda x, y, z: np.abs(z) < 0.3),
        Structure("cs", ellipsoid((0.0, 0.21, 0.0), (0.2, 0.018, 0.34)), where=lambda x, y, z: np.abs(z) > 0.18),
        Structure("dne", ellipsoid((-0.05, -0.1, 0.0), (0.26, 0.21, 0.05)), noise=0.006),
        Structure("tg", ellipsoid((-0.12, 0.0, 0.0), (0.12, 0.1, 0.045)), noise=0.006),
        Structure("hg", ellipsoid((0.05, -0.24, 0.0), (0.1, 0.08, 0.045)), noise=0.006),
        Structure("3V", ellipsoid((-0.05, -0.1, 0.0), (0.25, 0.2, 0.02)), noise=0.004),
        # midbrain
        Structure("Ret-MB", ellipsoid((-0.24, -0.27, 0.0), (0.18, 0.16, 0.25))),
        Structure("SC", ellipsoid((-0.33, -0.12, 0.0), (0.08, 0.06, 0.12)), where=lambda x, y, z: x > -0.36),
        Structure("ICc", ellipsoid((-0.38, -0.16, 0.0), (0.07, 0.06, 0.12)), where=lambda x, y, z: x <= -0.36),
        Structure("APT", ellipsoid((-0.17, -0.1, 0.0), (0.06, 0.05, 0.12))),
        Structure("pc", capsule((-0.2, -0.06, -0.08), (-0.2, -0.06, 0.08), 0.018)),
        Structure("SNc", mirrored(lambda s: ellipsoid((-0.2, -0.36, s * 0.09), (0.1, 0.03, 0.06)))),
        Structure("R", mirrored(lambda s: ellipsoid((-0.22, -0.3, s * 0.05), (0.04, 0.04, 0.035)))),
        Structure("cp", mirrored(lambda s: capsule((-0.1, -0.2, s * 0.22), (-0.25, -0.42, s * 0.12), 0.035))),
        Structure("PAG", capsule((-0.18, -0.2, 0.0), (-0.34, -0.27, 0.0), 0.05)),
        Structure("mn", capsule((-0.18, -0.2, 0.0), (-0.34, -0.27, 0.0), 0.03), noise=0.004),
        Structure("Aq", capsule((-0.18, -0.2, 0.0), (-0.34, -0.27, 0.0), 0.014), noise=0.002),
        Structure("DR", capsule((-0.28, -0.3, 0.0), (-0.34, -0.4, 0.0), 0.03)),
        # hindbrain
        Structure("Ret-P", ellipsoid((-0.32, -0.49, 0.0), (0.18, 0.15, 0.25))),
        Structure("PG", ellipsoid((-0.27, -0.57, 0.0), (0.12, 0.07, 0.15))),
        Structure("ml", mirrored(lambda s: capsule((-0.25, -0.38, s * 0.05), (-0.42, -0.7, s * 0.04), 0.02))),
        Structure("cpb", mirrored(lambda s: capsule((-0.4, -0.45, s * 0.14), (-0.58, -0.4, s * 0.22), 0.04))),
        Structure("Ret-Med", capsule((-0.42, -0.6, 0.0), (-0.52, -0.98, 0.0), 0.1)),
        Structure("IO", mirrored(lambda s: ellipsoid((-0.44, -0.8, s * 0.05), (0.04, 0.08, 0.04)))),
        Structure("rhn", ellipsoid((-0.5, -0.5, 0.0), (0.1, 0.06, 0.11)), noise=0.005),
        Structure("pcbn", mirrored(lambda s: ellipsoid((-0.48, -0.62, s * 0.09), (0.05, 0.06, 0.04)))),
        Structure("4V", ellipsoid((-0.52, -0.47, 0.0), (0.08, 0.035, 0.09)), noise=0.004),
        # cerebellum
        Structure("SIM", ellipsoid((-0.66, -0.4, 0.0), (0.22 * cb, 0.17 * cb, 0.55 * cb)),
                  where=lambda x, y, z: np.abs(z) >= 0.14),
        Structure("NOD", ellipsoid((-0.66, -0.4, 0.0), (0.22 * cb, 0.17 * cb, 0.55 * cb)),
                  where=lambda x, y, z: np.abs(z) < 0.14),
        Structure("CB-g", ellipsoid((-0.62, -0.44, 0.0), (0.1 * cb, 0.07 * cb, 0.3 * cb))),
        Structure("DN", mirrored(lambda s: ellipsoid((-0.7, -0.43, s * 0.2 * cb), (0.07, 0.05, 0.06)))),
        Structure("TRI", ellipsoid((-0.58, -0.38, 0.0), (0.04, 0.03, 0.2)), noise=0.004),
        # olfactory system and migratory streams
        Structure("OLFb", mirrored(lambda s: ellipsoid((0.98, -0.34, s * 0.14), (0.09, 0.05, 0.06)))),
        Structure("Rms", mirrored(lambda s: capsule((0.55, 0.05, s * 0.18), (0.92, -0.32, s * 0.14), 0.025))),
        Structure("Lms", mirrored(lambda s: capsule((0.12, 0.0, s * 0.42), (0.1, -0.3, s * 0.6), 0.025))),
        Structure("OLF", mirrored(lambda s: ellipsoid((0.22, -0.38, s * 0.3), (0.12, 0.05, 0.1)))),
        Structure("EP", mirrored(lambda s: ellipsoid((0.2, -0.3, s * 0.55), (0.08, 0.04, 0.03)))),
        Structure("TT", mirrored(lambda s: ellipsoid((0.5, -0.22, s * 0.08), (0.07, 0.04, 0.03)))),
        Structure("acbn", mirrored(lambda s: ellipsoid((0.34, -0.04, s * 0.18), (0.06, 0.05, 0.04)))),
        # the lateral ventricles last: they are holes in everything around them
        Structure("LV", ventricle_sdf(a), noise=0.006),
    ]


def brainstem_sdf(a: float) -> Callable:
    mb = ellipsoid((-0.24, -0.27, 0.0), (0.19, 0.17, 0.26))
    pons = ellipsoid((-0.32, -0.5, 0.0), (0.19, 0.16, 0.26))
    med = capsule((-0.42, -0.6, 0.0), (-0.52, -1.02, 0.0), 0.14)
    cb = 0.75 + 0.35 * a
    cereb = ellipsoid((-0.66, -0.4, 0.0), (0.23 * cb, 0.18 * cb, 0.56 * cb))

    def sdf(x, y, z):
        return np.minimum.reduce([mb(x, y, z), pons(x, y, z), med(x, y, z), cereb(x, y, z)])

    return sdf


@dataclass
class Brain:
    """One specimen's procedural brain at an age."""

    age_gw: float
    noise: Noise3D
    lobe_noise: Noise3D

    @classmethod
    def make(cls, age_gw: float, seed: int) -> "Brain":
        rng = np.random.default_rng(np.random.SeedSequence([seed, int(age_gw * 10), 17]))
        return cls(age_gw=age_gw, noise=Noise3D.make(rng, scale=5.0), lobe_noise=Noise3D.make(rng, scale=2.5))

    @property
    def a(self) -> float:
        return age_factor(self.age_gw)

    def labels(self, x: Array, y: Array, z: Array) -> tuple[Array, list[str]]:
        """Label the points (x, y, z): returns an int16 index array (0 = outside) and the acronym table."""
        a = self.a
        n = self.noise(x, y, z)
        names: list[str] = ["background"]
        index: dict[str, int] = {}

        def idx(acr: str) -> int:
            if acr not in index:
                index[acr] = len(names)
                names.append(acr)
            return index[acr]

        out = np.zeros(x.shape, dtype=np.int16)
        cer = cerebrum_sdf(a)(x, y, z) + 0.02 * n
        vent = ventricle_sdf(a)(x, y, z) + 0.006 * n
        inside_cer = cer < 0
        # relative depth through the wall: 0 at the pia, 1 at the ventricle
        d_out = np.maximum(-cer, 0.0)
        d_in = np.maximum(vent, 1e-4)
        t = d_out / (d_out + d_in)
        # the wall is only as deep as the ventricle is near: far from it (deep grey matter) depth saturates
        t = np.where(d_in > 0.35, d_out / (d_out + 0.35), t)
        lobes = lobe_masks(x, y, z, self.lobe_noise(x, y, z))
        edges = np.cumsum([(1 - a) * lo + a * hi for _, lo, hi in ZONES])
        edges = edges / edges[-1]
        zone = np.searchsorted(edges, np.clip(t + 0.015 * n, 0, 0.999), side="right")
        for lobe, mask in lobes.items():
            suffix, neuroepithelium = LOBES[lobe]
            m = inside_cer & mask
            for zi, (zname, _, _) in enumerate(ZONES):
                acr = f"{zname}-{suffix}"
                if zname == "VZ" and neuroepithelium is not None:
                    acr = neuroepithelium  # germinal zone drawn as the developmental neuroepithelium
                out[m & (zone == zi)] = idx(acr)
        stem = brainstem_sdf(a)(x, y, z) + 0.015 * n
        out[(stem < 0) & (out == 0)] = idx("Ret-MB")
        for s in deep_structures(a):
            d = s.sdf(x, y, z) + s.noise * n
            m = d < 0
            if s.where is not None:
                m &= s.where(x, y, z)
            if s.acronym in ("OLFb",):
                pass  # the olfactory bulb sits outside the cerebrum envelope
            else:
                m &= (out != 0)  # structures live inside the brain outline
            if m.any():
                out[m] = idx(s.acronym)
        return out, names
