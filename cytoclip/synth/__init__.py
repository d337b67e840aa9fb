"""The synthetic atlas: a procedural Nissl-stained developing human brain written in the DHARANI layout.

It lets the whole study run on any machine. **It is not DHARANI data**: every atlas it writes carries a
``SYNTHETIC.md`` label, and the study labels every number computed on it as synthetic.

Five specimens as in DHARANI (S1 14 GW, S2 17 GW, S3 21 GW sagittal; S4 22 GW coronal; S5 24 GW sagittal — the
CytoCLIP paper fixes S5 = 24 GW and S3 = 21 GW). Each specimen is one procedural 3-D brain
(:mod:`cytoclip.synth.anatomy`) cut along its plane at evenly spaced positions; each cut is labelled on a grid,
traced into annotation polygons and rendered as individual cell bodies (:mod:`cytoclip.synth.render`).

``generate(root, profile)`` is resumable (a section whose TIFF and GeoJSON both exist is skipped; both are written
atomically), runs sections in parallel, and is deterministic: the same seed and profile give byte-identical
annotations and identical pixels, whatever the number of workers.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = ["generate", "load_profile", "section_plan", "render_section", "SPECIMENS", "PROFILES_FILE"]

PROFILES_FILE = Path(__file__).resolve().parents[1] / "resources" / "synth_profiles.yaml"
#: the size_scale at which the synthetic brains have real fetal sizes (the ``full`` profile; a test checks it):
#: an atlas written at size_scale s has brains s / REAL_SIZE_SCALE of the real ones' linear size
REAL_SIZE_SCALE = 3.5
GENERATOR_VERSION = "2"  # 2: C-shaped wall around the ventricle, development as data, numba renderer


@dataclass(frozen=True)
class SpecimenSpec:
    specimen: int
    age_gw: float
    plane: str


SPECIMENS: tuple[SpecimenSpec, ...] = (
    SpecimenSpec(1, 14.0, "sagittal"),
    SpecimenSpec(2, 17.0, "sagittal"),
    SpecimenSpec(3, 21.0, "sagittal"),
    SpecimenSpec(4, 22.0, "coronal"),
    SpecimenSpec(5, 24.0, "sagittal"),
)

# Section window in normalised brain coordinates (see anatomy.py): the medulla is cut at y = -0.95.
X_RANGE = (-1.0, 1.1)  # posterior .. anterior (sagittal image columns run anterior -> posterior)
Y_RANGE = (-0.95, 0.8)
Z_RANGE = (-0.92, 0.92)


def load_profile(profile: str = "smoke", **overrides: Any) -> dict[str, Any]:
    """The resolved parameters of a profile from ``synth_profiles.yaml`` (overrides win; None is ignored)."""
    data = yaml.safe_load(PROFILES_FILE.read_text())
    if profile not in data["profiles"]:
        raise ValueError(f"synthetic atlas profile {profile!r}: unknown; expected one of {sorted(data['profiles'])} "
                         f"(defined in {PROFILES_FILE})")
    params = dict(data["defaults"])
    params.update(data["profiles"][profile])
    params.update({k: v for k, v in overrides.items() if v is not None})
    params["profile"] = profile
    # age-dependent anatomy, with sources (part of the record; keys as text so the record is valid sorted JSON)
    params["development"] = _text_keys(data["development"])
    params["brain_length_mm"] = {float(k): float(v) for k, v in params["brain_length_mm"].items()}
    for key in ("sections_per_specimen",):
        if int(params[key]) < 1:
            raise ValueError(f"{key}: expected a positive number, got {params[key]}")
    if float(params["label_mpp"]) % float(params["mpp0"]) != 0:
        raise ValueError("label_mpp must be a multiple of mpp0")
    return params


def _text_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _text_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_text_keys(v) for v in obj]
    return obj


def section_plan(params: dict[str, Any], seed: int = 0) -> list[dict[str, Any]]:
    """Every section to write: specimen, section number, age, plane and the cut position."""
    plan = []
    n = int(params["sections_per_specimen"])
    for spec in SPECIMENS:
        rng = np.random.default_rng(np.random.SeedSequence([seed, spec.specimen, 99]))
        lo, hi = (0.06, 0.8) if spec.plane == "sagittal" else (0.62, -0.66)
        # midpoints of n equal slabs, jittered within their slab: a few sections still spread over the brain
        positions = lo + (hi - lo) * (np.arange(n) + 0.5 + rng.uniform(-0.3, 0.3, n)) / n
        for i, pos in enumerate(positions):
            plan.append({"specimen": spec.specimen, "section": 1001 + 8 * i, "age_gw": spec.age_gw,
                         "plane": spec.plane, "position": round(float(pos), 4)})
    return plan


def _length_mm(params: dict[str, Any], age_gw: float) -> float:
    table = params["brain_length_mm"]
    ages = sorted(table)
    return float(np.interp(age_gw, ages, [table[a] for a in ages])) * float(params.get("size_scale", 1.0))


def label_section(item: dict[str, Any], params: dict[str, Any], seed: int
                  ) -> tuple[np.ndarray, list[str], float, dict[str, np.ndarray]]:
    """The label map of one section on the ``label_mpp`` grid, cropped to the tissue with a margin:
    (index array, acronym table, label µm/px, the anatomy's fields for the renderer on the same grid)."""
    from cytoclip.synth.anatomy import Brain

    brain = Brain.make(item["age_gw"], seed * 1000 + item["specimen"], params["development"])
    half_mm = _length_mm(params, item["age_gw"]) / 2.0
    lmpp = float(params["label_mpp"])
    unit_px = half_mm * 1000.0 / lmpp  # label pixels per normalised unit
    ys = Y_RANGE[1] - (np.arange(int((Y_RANGE[1] - Y_RANGE[0]) * unit_px)) + 0.5) / unit_px
    if item["plane"] == "sagittal":
        cols = X_RANGE[1] - (np.arange(int((X_RANGE[1] - X_RANGE[0]) * unit_px)) + 0.5) / unit_px
        x, y = np.meshgrid(cols, ys)
        z = np.full_like(x, item["position"])
    else:
        cols = Z_RANGE[0] + (np.arange(int((Z_RANGE[1] - Z_RANGE[0]) * unit_px)) + 0.5) / unit_px
        z, y = np.meshgrid(cols, ys)
        x = np.full_like(z, item["position"])
    labels, names, fields = brain.labels(x.astype(np.float32), y.astype(np.float32), z.astype(np.float32))
    fields["label_px_per_unit"] = unit_px
    # the slide holds the tissue with a margin: cropping saves the empty glass around small (young, lateral) cuts
    rows, cols = np.nonzero(labels.any(axis=1))[0], np.nonzero(labels.any(axis=0))[0]
    if rows.size:
        m = 16
        win = (slice(max(rows[0] - m, 0), rows[-1] + m + 1), slice(max(cols[0] - m, 0), cols[-1] + m + 1))
        labels = labels[win]
        fields = {k: (v[win] if isinstance(v, np.ndarray) else v) for k, v in fields.items()}
    return labels, names, lmpp, fields


def label_polygons(labels: np.ndarray, names: list[str], onto, factor: float, simplify: float = 0.6
                   ) -> dict[int, Any]:
    """Trace each label's region into a shapely (Multi)Polygon in level-0 pixels ({ontology id: geometry}).

    Contours run at the 0.5 iso-line of each label's mask, i.e. along the boundaries between label pixels;
    label pixel (r, c) covers level-0 pixels [factor*c, factor*(c+1)), so a contour coordinate u maps to
    factor * (u + 0.5). Nested rings (islands in holes) are resolved by XOR of the ring polygons.
    """
    import shapely
    from scipy import ndimage
    from shapely.geometry import Polygon
    from skimage import measure

    out: dict[int, Any] = {}
    for value, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or value >= len(names) or names[value] == "background":
            continue
        acr = names[value]
        node = onto.by_acronym(acr)
        r0, c0 = sl[0].start, sl[1].start
        mask = np.pad(labels[sl] == value, 1)
        rings = []
        for contour in measure.find_contours(mask.astype(np.float32), 0.5):
            if len(contour) < 4:
                continue
            rows = contour[:, 0] - 1 + r0
            cols = contour[:, 1] - 1 + c0
            poly = Polygon(np.column_stack([factor * (cols + 0.5), factor * (rows + 0.5)]))
            if poly.is_valid and poly.area > 0:
                rings.append(poly)
            elif poly.area > 0:
                rings.append(shapely.make_valid(poly))
        if not rings:
            continue
        geom = rings[0]
        for ring in rings[1:]:
            geom = geom.symmetric_difference(ring)
        geom = shapely.make_valid(shapely.simplify(geom, simplify * factor, preserve_topology=True))
        parts = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type in ("Polygon", "MultiPolygon")]
        if not parts:
            continue
        geom = shapely.union_all(parts)
        if geom.is_empty or geom.area < (2 * factor) ** 2:
            continue
        out[node.id] = geom
    return out


def render_section(item: dict[str, Any], params: dict[str, Any], seed: int, onto=None
                   ) -> tuple[np.ndarray, dict[int, Any]]:
    """Render one section: (RGB level-0 image, {ontology id: polygon in level-0 px})."""
    from cytoclip.ontology import Ontology
    from cytoclip.synth.render import Stain, cytoarchitecture, render

    onto = onto or Ontology.load()
    labels, names, lmpp, fields = label_section(item, params, seed)
    factor = int(round(lmpp / float(params["mpp0"])))
    geoms = label_polygons(labels, names, onto, factor)
    rng = np.random.default_rng(np.random.SeedSequence([seed, item["specimen"], item["section"], 7]))
    cyto = [cytoarchitecture(n, item["age_gw"], params["development"]) for n in names]
    stain = Stain.sample(rng, artefacts=bool(params.get("artefacts", True)))
    return render(labels, cyto, rng, stain, factor, fields, lmpp), geoms


def _write_section(task: dict[str, Any]) -> dict[str, Any]:
    from cytoclip import layout
    from cytoclip.ontology import Ontology

    item, params, seed, root = task["item"], task["params"], task["seed"], Path(task["root"])
    onto = Ontology.load()
    image, geoms = render_section(item, params, seed, onto)
    tif, js = layout.section_paths(root, item["specimen"], item["section"])
    layout.write_pyramid_tiff(tif, image, float(params["mpp0"]), tile=int(params["tile"]),
                              quality=int(params["quality"]), min_size=96)
    layout.write_annotation(js, geoms, negative_y=True, ontology=onto)
    return {"specimen": item["specimen"], "section": item["section"], "regions": len(geoms),
            "shape": list(image.shape[:2])}


def generate(root: str | os.PathLike, profile: str = "smoke", seed: int = 0, workers: int | None = None,
             progress: bool = True, **overrides: Any) -> Path:
    """Write (or complete) the synthetic atlas of ``profile`` at ``root``; returns ``root``.

    ``overrides`` replace profile parameters (e.g. ``sections_per_specimen=3``, ``size_scale=0.5``).
    Sections already written completely are kept, so an interrupted run resumes.
    """
    from cytoclip.progress import tqdm

    from cytoclip import layout
    from cytoclip.io import atomic_path, write_json
    from cytoclip.ontology import Ontology

    params = load_profile(profile, **overrides)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    record = {"generator": "cytoclip.synth", "version": GENERATOR_VERSION, "seed": int(seed), "params": params}
    record_path = root / "synth.json"
    if record_path.is_file():
        from cytoclip.io import read_json

        previous = read_json(record_path)
        if _normalise(previous) != _normalise(record):
            raise ValueError(f"{root}: holds a synthetic atlas made with other parameters ({record_path}); "
                             "choose another directory or delete it")
    write_json(record_path, record)
    onto_path = layout.ontology_path(root)
    if not onto_path.is_file():
        onto_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(onto_path) as tmp:
            shutil.copyfile(Path(__file__).resolve().parents[1] / "resources" / "dharani_ontology.json", tmp)
    layout.write_specimens_table(root, [{"specimen": s.specimen, "age_gw": s.age_gw, "plane": s.plane,
                                         "source": "synthetic"} for s in SPECIMENS])
    with atomic_path(root / "SYNTHETIC.md") as tmp:
        tmp.write_text(
            "# Synthetic atlas — NOT DHARANI data\n\n"
            "Written by `cytoclip synth` (procedural anatomy and Nissl-like rendering) in the DHARANI layout so that\n"
            "the CytoCLIP study runs anywhere. Results computed on it describe the method, not real tissue.\n\n"
            f"- generator: cytoclip.synth version {GENERATOR_VERSION}\n- profile: {profile}\n- seed: {seed}\n"
            f"- level 0: {params['mpp0']} µm/px (TIFF resolution tags)\n"
            "- ontology: the real DHARANI nomenclature (CC BY 4.0), copied to ontology/ontology.json\n")
    Ontology.load(onto_path)  # fail early on a bad copy
    plan = section_plan(params, seed)
    todo = [it for it in plan if not all(p.is_file() for p in layout.section_paths(root, it["specimen"],
                                                                                    it["section"]))]
    n_workers = max(1, (os.cpu_count() or 1) if workers is None else int(workers))
    tasks = [{"item": it, "params": params, "seed": int(seed), "root": str(root)} for it in todo]
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc=f"synthetic atlas ({profile})",
               unit="section", enabled=progress)
    if n_workers == 1 or len(tasks) <= 1:
        for t in tasks:
            _write_section(t)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=min(n_workers, len(tasks))) as pool:
            for fut in as_completed([pool.submit(_write_section, t) for t in tasks]):
                fut.result()
                bar.update()
    bar.close()
    return root


def _normalise(record: dict) -> str:
    import json

    return json.dumps(record, sort_keys=True, default=str)
