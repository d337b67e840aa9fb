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

    sdf.bbox = (np.array(c, float) - np.array(r, float), np.array(c, float) + np.array(r, float))
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

    sdf.bbox = (np.minimum(a_, a_ + ab) - radius, np.maximum(a_, a_ + ab) + radius)
    return sdf


def mirrored(shape_fn: Callable[[float], Callable]) -> Callable:
    """A bilateral structure: ``shape_fn(side)`` builds one side; the union of both hemispheres."""
    left, right = shape_fn(-1.0), shape_fn(1.0)

    def sdf(x: Array, y: Array, z: Array) -> Array:
        return np.minimum(left(x, y, z), right(x, y, z))

    # one box around both sides (the midline cuts of a coronal section cross both)
    sdf.bbox = (np.minimum(left.bbox[0], right.bbox[0]), np.maximum(left.bbox[1], right.bbox[1]))
    sdf.sides = (left, right)
    return sdf


def shell(inner: Callable, thickness: float) -> Callable:
    """A layer of ``thickness`` lining the outside of ``inner``."""

    def sdf(x: Array, y: Array, z: Array) -> Array:
        d = inner(x, y, z)
        return np.abs(d - thickness / 2) - thickness / 2

    sdf.bbox = (inner.bbox[0] - thickness, inner.bbox[1] + thickness)
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


def smoothstep(lo: float, hi: float, v: Array) -> Array:
    t = np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


# ---------------------------------------------------------------------------------------------- the C-shaped wall
# The hemisphere is a C-shaped band swept around the lateral ventricle (anterior -> dorsal -> posterior and, in
# lateral cuts, down and forward into the temporal lobe). Points are described in the polar coordinates of two
# ellipses in the sagittal (x, y) plane: the pial ellipse (the C's outer surface at rho = 1) and the ventricle's.
# phi (degrees) runs 0 = anterior, 90 = dorsal, 180 = posterior, 270 = ventral.
PIAL_C = (0.0, -0.02, 0.95, 0.68)  # centre x, y and radii x, y
VENT_C = (0.0, -0.04, 0.66, 0.42)
PHI_START = -25.0  # the frontal/orbital pole
INNER_RHO = 0.5  # inner surface of the C (faces the insula laterally; medially the deep nuclei fill it)


def polar(x: Array, y: Array, ellipse: tuple[float, float, float, float]) -> tuple[Array, Array]:
    cx, cy, ax, ay = ellipse
    xn, yn = (x - cx) / ax, (y - cy) / ay
    phi = np.degrees(np.arctan2(yn, xn))
    phi = (phi - PHI_START) % 360.0 + PHI_START
    return np.sqrt(xn * xn + yn * yn), phi


def hemisphere_profile(z: Array) -> Array:
    """Left-right profile of a hemisphere (a flat medial face at the midline, rounded laterally); 0 outside."""
    dz = np.clip(np.abs(np.abs(z) - 0.36) / 0.40, 0.0, 1.0)
    g = (1.0 - dz ** 2.5) ** 0.4
    return np.where(np.abs(z) < 0.02, 0.0, g)  # the interhemispheric fissure


def phi_end(z: Array) -> Array:
    """Where the C ends: medially at the occipital pole, laterally it curls into the temporal pole."""
    return 200.0 + 70.0 * smoothstep(0.22, 0.45, np.abs(z))


@dataclass(frozen=True)
class Development:
    """The age-dependent anatomy of one specimen, resolved from the profile's ``development`` block."""

    zones: list[tuple[str, float]]  # (zone, thickness fraction of the wall) from the pia inwards
    ventricle_scale: float
    ge_scale: float
    cerebellum_scale: float
    sulci: list[dict]  # each: phi, width, depth (fraction of the wall), z (lo, hi); only those present at the age

    @classmethod
    def at(cls, dev: dict, age_gw: float) -> "Development":
        def interp(table: dict) -> float:
            pts = sorted((float(k), float(v)) for k, v in table.items() if k != "source")
            return float(np.interp(age_gw, [p[0] for p in pts], [p[1] for p in pts]))
        zones = [(name, interp(tab)) for name, tab in dev["zones"]["thickness"].items()]
        sulci = []
        for name, s in dev["sulci"].items():
            # a sulcus appears at its age and deepens over the following weeks
            grow = float(np.clip((age_gw - float(s["appears_gw"]) + 1.0) / 4.0, 0.0, 1.0))
            if grow > 0:
                sulci.append({"name": name, "phi": float(s["phi"]), "width": float(s["width"]),
                              "depth": float(s["depth"]) * grow, "z": tuple(s["z"])})
        return cls(zones=zones, ventricle_scale=interp(dev["ventricle_scale"]), ge_scale=interp(dev["ge_scale"]),
                   cerebellum_scale=interp(dev["cerebellum_scale"]), sulci=sulci)


def pial_radius(phi: Array, z: Array, dev: Development, n: Array) -> Array:
    """The C's outer radius: 1 with the sulci of the age cut in (the plate folds in with the surface)."""
    r = 1.0 + 0.03 * n
    az = np.abs(z)
    for s in dev.sulci:
        zlo, zhi = s["z"]
        inz = smoothstep(zlo - 0.04, zlo + 0.04, az) * (1 - smoothstep(zhi - 0.04, zhi + 0.04, az))
        r = r - s["depth"] * inz * np.exp(-0.5 * ((phi - s["phi"]) / s["width"]) ** 2)
    return r


def band_sdf(x: Array, y: Array, z: Array, dev: Development, n: Array) -> tuple[Array, Array, Array]:
    """Signed distance (normalised units, < 0 inside) of the C-shaped cerebral wall; also phi and the pial
    distance (distance to the outer surface, used for the wall depth)."""
    g = np.maximum(hemisphere_profile(z), 1e-3)
    rho, phi = polar(x, y, PIAL_C)
    rho = rho / g
    ay = PIAL_C[3] * g
    rp = pial_radius(phi, z, dev, n)
    e_out = (rho - rp) * ay  # < 0 inside the pial surface
    e_in = (INNER_RHO - rho) * ay
    e = np.maximum(e_out, e_in)
    # rounded caps past the ends of the C
    mid, hw = (rp + INNER_RHO) / 2, (rp - INNER_RHO) / 2
    over = np.maximum(PHI_START - phi, phi - phi_end(z))
    cap = np.hypot(np.radians(np.maximum(over, 0.0)) * mid, rho - mid) * ay - hw * ay
    sdf = np.where(over > 0, cap, e)
    sdf = np.where(g <= 1e-3, 1.0, sdf)
    return sdf, phi, -e_out, rho


def ventricle_sdf(x: Array, y: Array, z: Array, dev: Development) -> Array:
    """The lateral ventricle: a C-shaped slit inside the wall (body, frontal horn and, laterally, the temporal
    horn), wide early and narrowing with age."""
    vs = dev.ventricle_scale
    rho, phi = polar(x, y, VENT_C)
    r_rad, r_z = 0.07 * vs, 0.07 * np.sqrt(vs)  # half-widths: across the wall (rho units) and left-right
    end = 190.0 + 65.0 * smoothstep(185.0, 240.0, phi)  # the horn dives laterally as it curls down
    zc = 0.2 + 0.2 * smoothstep(150.0, 280.0, phi)
    q = np.hypot((rho - 1.0) / r_rad, (np.abs(z) - zc) / r_z)  # an elliptical cross-section
    across = (q - 1.0) * min(r_rad * VENT_C[3], r_z)
    over = np.maximum(PHI_START + 15.0 - phi, phi - end) 
    along = np.radians(np.maximum(over, 0.0)) * VENT_C[2]
    return np.maximum(across, along - 0.02)


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


def lobe_masks(phi: Array, rho: Array, z: Array, n: Array) -> dict[str, Array]:
    """Lobe of every cortical point by its angle around the C (noisy boundaries; first match wins)."""
    az = np.abs(z)
    ph = phi + 8.0 * n
    masks: dict[str, Array] = {}
    taken = np.zeros(phi.shape, dtype=bool)

    def claim(name: str, m: Array) -> None:
        nonlocal taken
        m = m & ~taken
        masks[name] = m
        taken = taken | m

    claim("insula", (az > 0.5) & (rho < 0.55) & ((ph < 25) | (ph > 280)))
    claim("entorhinal", (ph > 255) & (az < 0.43))
    claim("cingulate", (az < 0.13) & (ph > 25) & (ph < 150) & (rho < 0.8))
    claim("orbital", ph < 5)
    claim("frontal", ph < 75)
    claim("parietal", ph < 145)
    claim("occipital", ph < 215)
    claim("temporal", np.ones_like(taken))
    return masks


def deep_structures(dev: Development) -> list[Structure]:
    """Everything inside or below the cerebral wall, in painting order (later structures win)."""
    ge = dev.ge_scale  # the ganglionic eminence shrinks as it empties (profile: development.ge_scale)
    cb = dev.cerebellum_scale  # the cerebellum grows late (profile: development.cerebellum_scale)
    return [
        # basal nuclei and their surroundings
        Structure("Cau", mirrored(lambda s: ellipsoid((0.18, 0.17, s * 0.3), (0.34, 0.13, 0.09)))),
        Structure("Put", mirrored(lambda s: ellipsoid((0.1, -0.06, s * 0.47), (0.27, 0.15, 0.08)))),
        Structure("GPl", mirrored(lambda s: ellipsoid((0.04, -0.09, s * 0.39), (0.14, 0.1, 0.045)))),
        Structure("GPm", mirrored(lambda s: ellipsoid((0.02, -0.1, s * 0.35), (0.1, 0.08, 0.03)))),
        Structure("NAc", mirrored(lambda s: ellipsoid((0.33, -0.12, s * 0.22), (0.1, 0.07, 0.08)))),
        Structure("ext", mirrored(lambda s: ellipsoid((0.08, -0.05, s * 0.575), (0.27, 0.17, 0.022)))),
        Structure("CLA", mirrored(lambda s: ellipsoid((0.08, -0.06, s * 0.615), (0.2, 0.13, 0.018)))),
        Structure("tcete", mirrored(lambda s: ellipsoid((0.08, -0.06, s * 0.65), (0.18, 0.11, 0.016)))),
        Structure("int", mirrored(lambda s: capsule((0.32, 0.06, s * 0.34), (-0.12, -0.14, s * 0.27), 0.04))),
        # the ganglionic eminence bulges from the floor of the ventricle (the wall carries it)
        Structure("GE", mirrored(lambda s: ellipsoid((0.16, 0.3, s * 0.26), (0.26 * ge, 0.1 * ge, 0.09 * ge)))),
        Structure("str-g", mirrored(lambda s: shell(ellipsoid((0.16, 0.3, s * 0.26),
                                                              (0.26 * ge, 0.1 * ge, 0.09 * ge)), 0.025))),
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
        Structure("SIM", ellipsoid(CEREBELLUM[0], tuple(r * cb for r in CEREBELLUM[1])),
                  where=lambda x, y, z: np.abs(z) >= 0.14),
        Structure("NOD", ellipsoid(CEREBELLUM[0], tuple(r * cb for r in CEREBELLUM[1])),
                  where=lambda x, y, z: np.abs(z) < 0.14),
        Structure("CB-g", ellipsoid((-0.6, -0.54, 0.0), (0.1 * cb, 0.07 * cb, 0.22 * cb))),
        Structure("DN", mirrored(lambda s: ellipsoid((-0.68, -0.53, s * 0.16 * cb), (0.07, 0.05, 0.06)))),
        Structure("TRI", ellipsoid((-0.56, -0.48, 0.0), (0.04, 0.03, 0.16)), noise=0.004),
        # olfactory system and migratory streams
        Structure("OLFb", mirrored(lambda s: ellipsoid((0.98, -0.34, s * 0.14), (0.09, 0.05, 0.06)))),
        Structure("Rms", mirrored(lambda s: capsule((0.55, 0.05, s * 0.18), (0.92, -0.32, s * 0.14), 0.025))),
        Structure("Lms", mirrored(lambda s: capsule((0.12, 0.0, s * 0.42), (0.1, -0.3, s * 0.6), 0.025))),
        Structure("OLF", mirrored(lambda s: ellipsoid((0.22, -0.38, s * 0.3), (0.12, 0.05, 0.1)))),
        Structure("EP", mirrored(lambda s: ellipsoid((0.2, -0.3, s * 0.55), (0.08, 0.04, 0.03)))),
        Structure("TT", mirrored(lambda s: ellipsoid((0.5, -0.22, s * 0.08), (0.07, 0.04, 0.03)))),
        Structure("acbn", mirrored(lambda s: ellipsoid((0.34, -0.04, s * 0.18), (0.06, 0.05, 0.04)))),
        # the lateral ventricles last: they are holes in everything around them
    ]


CEREBELLUM = ((-0.64, -0.5, 0.0), (0.22, 0.17, 0.36))
# the deep grey core (basal nuclei and diencephalon) filling the C's concavity medially; tissue of the core
# not claimed by a nucleus is drawn as the internal capsule, the white matter between them
CORE = mirrored(lambda s: ellipsoid((0.0, -0.08, s * 0.3), (0.5, 0.42, 0.32)))


def brainstem_sdf(dev: Development) -> Callable:
    """Midbrain, pons, medulla and cerebellum as one body, joined to the diencephalon of the core."""
    mb = ellipsoid((-0.22, -0.25, 0.0), (0.21, 0.18, 0.26))
    pons = ellipsoid((-0.32, -0.5, 0.0), (0.19, 0.16, 0.26))
    med = capsule((-0.42, -0.6, 0.0), (-0.52, -1.02, 0.0), 0.14)
    cb = dev.cerebellum_scale
    cereb = ellipsoid(CEREBELLUM[0], tuple(r * cb * 1.03 for r in CEREBELLUM[1]))
    peduncle = capsule((-0.36, -0.48, 0.0), (-0.6, -0.5, 0.0), 0.12 * cb)  # the cerebellum hangs on the pons

    def sdf(x, y, z):
        return np.minimum.reduce([mb(x, y, z), pons(x, y, z), med(x, y, z), cereb(x, y, z), peduncle(x, y, z)])

    parts = (mb, pons, med, cereb, peduncle)
    sdf.bbox = (np.min([p.bbox[0] for p in parts], axis=0), np.max([p.bbox[1] for p in parts], axis=0))
    return sdf


def _coarse_noise(noise: Noise3D, x: Array, y: Array, z: Array, step: int = 4) -> Array:
    """The smooth field on every ``step``-th grid point, bilinearly interpolated (it varies over many pixels)."""
    if x.ndim != 2 or min(x.shape) < 2 * step:
        return noise(x, y, z)
    c = noise(x[::step, ::step], y[::step, ::step], z[::step, ::step])

    def interp_matrix(n: int, m: int) -> Array:  # (n, m): linear interpolation of m coarse samples to n
        pos = np.minimum(np.arange(n, dtype=np.float64) / step, m - 1)
        lo = np.minimum(np.floor(pos).astype(int), m - 2)
        w = (pos - lo).astype(np.float32)
        mat = np.zeros((n, m), dtype=np.float32)
        mat[np.arange(n), lo] = 1 - w
        mat[np.arange(n), lo + 1] = w
        return mat

    return interp_matrix(x.shape[0], c.shape[0]) @ c @ interp_matrix(x.shape[1], c.shape[1]).T


def _window(x: Array, y: Array, z: Array, bbox) -> tuple[slice, slice] | None:
    """Rows and columns of a planar grid whose points can lie in ``bbox`` (None: nowhere). Every coordinate of
    the grid is constant, or varies along rows only, or along columns only."""
    lo, hi = bbox
    rows = np.ones(x.shape[0], bool)
    cols = np.ones(x.shape[1], bool)
    for k, arr in enumerate((x, y, z)):
        along_r, along_c = arr[:, 0], arr[0, :]
        ok_r = (along_r >= lo[k]) & (along_r <= hi[k])
        ok_c = (along_c >= lo[k]) & (along_c <= hi[k])
        if np.ptp(along_c) == 0:
            rows &= ok_r
        elif np.ptp(along_r) == 0:
            cols &= ok_c
        else:
            return (slice(0, x.shape[0]), slice(0, x.shape[1]))
    if not rows.any() or not cols.any():
        return None
    r, c = np.nonzero(rows)[0], np.nonzero(cols)[0]
    return slice(r[0], r[-1] + 1), slice(c[0], c[-1] + 1)


@dataclass
class Brain:
    """One specimen's procedural brain at an age (its development resolved from the profile)."""

    age_gw: float
    dev: Development
    noise: Noise3D
    lobe_noise: Noise3D

    @classmethod
    def make(cls, age_gw: float, seed: int, development: dict) -> "Brain":
        rng = np.random.default_rng(np.random.SeedSequence([seed, int(age_gw * 10), 17]))
        return cls(age_gw=age_gw, dev=Development.at(development, age_gw), noise=Noise3D.make(rng, scale=5.0),
                   lobe_noise=Noise3D.make(rng, scale=2.5))

    @property
    def a(self) -> float:
        return age_factor(self.age_gw)

    def labels(self, x: Array, y: Array, z: Array) -> tuple[Array, list[str], dict[str, Array]]:
        """Label the points (x, y, z) of a planar grid.

        Returns an int16 index array (0 = outside), the acronym table, and fields the renderer uses for
        cytoarchitecture: ``depth`` (0 at the pia .. 1 at the ventricle; -1 off the wall), ``zone_depth``
        (0 .. 1 inside the point's own zone) and ``arc`` (position along the wall, normalised units).
        """
        dev = self.dev
        n = _coarse_noise(self.noise, x, y, z)
        ln = _coarse_noise(self.lobe_noise, x, y, z)
        names: list[str] = ["background"]
        index: dict[str, int] = {}

        def idx(acr: str) -> int:
            if acr not in index:
                index[acr] = len(names)
                names.append(acr)
            return index[acr]

        out = np.zeros(x.shape, dtype=np.int16)
        band, phi, d_pia, rho_g = band_sdf(x, y, z, dev, n)
        band = band + 0.01 * n
        vent = ventricle_sdf(x, y, z, dev) + 0.006 * n
        in_band = band < 0
        # relative depth through the wall: 0 at the pia, 1 at the ventricle; far from the ventricle (lateral
        # cuts, the inner wall) the depth saturates so the deep zones thin out as in tangential cuts
        d_out = np.maximum(np.minimum(d_pia, -band), 0.0)
        d_in = np.minimum(np.maximum(vent, 1e-4), 0.3)
        t = d_out / (d_out + d_in)
        fr = np.array([f for _, f in dev.zones], dtype=np.float64)
        edges = np.concatenate([[0.0], np.cumsum(fr / fr.sum())])
        tt = np.clip(t + 0.012 * n, 0, 0.9999)
        zone = np.searchsorted(edges[1:], tt, side="right")
        zone_depth = (tt - edges[zone]) / (edges[zone + 1] - edges[zone])
        lobes = lobe_masks(phi, rho_g, z, ln)
        for lobe, mask in lobes.items():
            suffix, neuroepithelium = LOBES[lobe]
            m = in_band & mask
            for zi, (zname, _) in enumerate(dev.zones):
                acr = f"{zname}-{suffix}"
                if zname == "VZ" and neuroepithelium is not None:
                    acr = neuroepithelium  # germinal zone drawn as the developmental neuroepithelium
                mz = m & (zone == zi)
                if mz.any():
                    out[mz] = idx(acr)
        for acr, body in (("int", CORE), ("Ret-MB", brainstem_sdf(dev))):
            win = _window(x, y, z, (body.bbox[0] - 0.05, body.bbox[1] + 0.05))
            if win is not None:
                sub = out[win]
                sub[(body(x[win], y[win], z[win]) + 0.015 * n[win] < 0) & (sub == 0)] = idx(acr)
        for s in deep_structures(dev):
            win = _window(x, y, z, (s.sdf.bbox[0] - 0.05, s.sdf.bbox[1] + 0.05))
            if win is None:
                continue
            xs, ys, zs = x[win], y[win], z[win]
            d = s.sdf(xs, ys, zs) + s.noise * n[win]
            m = d < 0
            if s.where is not None:
                m &= s.where(xs, ys, zs)
            sub = out[win]
            if s.acronym != "OLFb":  # the olfactory bulb sits outside the cerebrum envelope
                m &= (sub != 0)  # structures live inside the brain outline
            if m.any():
                sub[m] = idx(s.acronym)
        # the lateral ventricles last: they are holes in everything around them
        out[(vent < 0) & (out != 0)] = idx("LV")
        wall = in_band & (out != 0) & (out != index.get("LV", -1))
        fields = {"depth": np.where(wall, t, -1.0).astype(np.float32),
                  "zone_depth": np.where(wall, zone_depth, 0.0).astype(np.float32),
                  "arc": (np.radians(phi) * 0.8).astype(np.float32)}
        return out, names, fields
