"""The verbs ``cytoclip predict`` and ``cytoclip segment``: a trained model used as a tool on images and sections."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MODEL_HELP = ("a training run directory, a saved model directory or a model spec (tiny, hf:..., open_clip:...); "
              "a run brings its training labels, prompt and image scale")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    cands = parser.add_mutually_exclusive_group()
    cands.add_argument("--labels", default=None, metavar="FILE",
                       help="candidate region names, one a line (default: the model's training labels)")
    cands.add_argument("--ontology-subtree", default=None, metavar="NAME_OR_ID",
                       help="candidates: the leaf structures under this ontology node (name, acronym or id)")
    parser.add_argument("--ontology", default=None, help="ontology.json for names and colours (default: the "
                        "atlas's, else the packaged DHARANI ontology)")
    parser.add_argument("--prompt", default=None, help="text template with {} (default: the run's, else '{}')")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto: the best "
                        "available)")


def configure_predict(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cytoclip predict``."""
    parser.description = ("Name images, or drawn areas of a section, with the top-k region names and scores. "
                          "Images: files or folders. Areas: --box and/or --geojson on --section.")
    parser.add_argument("images", nargs="*", help="image files or folders of images")
    _common(parser)
    parser.add_argument("--section", default=None, help="the section the areas are drawn on: a TIFF path, or "
                        "<specimen>/<section> with --atlas")
    parser.add_argument("--atlas", default=None, help="atlas root (local path or fsspec URL) holding --section")
    parser.add_argument("--box", action="append", default=[], metavar="X,Y,W,H",
                        help="an area: left, top, width, height in pixels at --box-mpp (repeatable)")
    parser.add_argument("--box-mpp", type=float, default=None,
                        help="µm/px of the --box coordinates (default: the section's level 0)")
    parser.add_argument("--geojson", default=None, help="areas: the polygons of a GeoJSON file in level-0 px "
                        "(QuPath or DHARANI export)")
    parser.add_argument("--mpp", type=float, default=None,
                        help="µm/px at which areas are read (default: the model's training images', else 16)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--output", default=None, help="write the predictions to a .csv or .json file")
    parser.set_defaults(func=_predict)


def configure_segment(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cytoclip segment``."""
    parser.description = ("Segment whole sections coarsely by naming every tissue tile: per section a GeoJSON of "
                          "the predicted regions (QuPath / DHARANI), an overlay PNG, per-tile scores (Parquet) and, "
                          "when annotated, pixel accuracy and per-region IoU. Finished sections are skipped on a "
                          "rerun.")
    parser.add_argument("sections", nargs="*", help="section TIFFs (DHARANI layout or any pyramidal TIFF with "
                        "resolution tags)")
    _common(parser)
    parser.add_argument("--atlas", default=None, help="atlas root: segment its sections (filter with --specimen "
                        "and --section)")
    parser.add_argument("--specimen", type=int, action="append", default=[], help="with --atlas: only this "
                        "specimen (repeatable)")
    parser.add_argument("--section", action="append", default=[], metavar="SPECIMEN/SECTION",
                        help="with --atlas: only this section, e.g. 5/1009 (repeatable)")
    parser.add_argument("--output-dir", required=True, help="where the per-section outputs go")
    parser.add_argument("--tile", type=int, default=None, help="tile side in px (default: the model's training "
                        "tiles, else 224)")
    parser.add_argument("--mpp", type=float, default=None, help="µm/px of the tiles (default: the model's "
                        "training tiles', else 2)")
    parser.add_argument("--min-tissue", type=float, default=0.5, help="tissue fraction a tile needs (default 0.5)")
    parser.add_argument("--negative-y", action="store_true",
                        help="store y negated in the GeoJSON, as DHARANI's own files do (QuPath wants it positive)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="skip sections already finished with the same model and parameters (default on)")
    parser.set_defaults(func=_segment)


def _open(args: argparse.Namespace, section_path=None):
    from cytoclip.annotate.labels import candidates
    from cytoclip.annotate.sources import load_ontology
    from cytoclip.annotate.trained import open_model

    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    ontology = load_ontology(args.ontology, atlas=args.atlas, section_path=section_path)
    trained = open_model(args.model, device=args.device)
    if args.prompt is not None:
        trained.prompt = args.prompt
    return trained, candidates(trained, ontology, labels=args.labels, subtree=args.ontology_subtree), ontology


def _predict(args: argparse.Namespace) -> int:
    import pandas as pd

    from cytoclip.annotate import predict as P
    from cytoclip.annotate.sources import image_files, open_section, parse_box, read_geojson_areas

    if args.top_k < 1:
        raise ValueError(f"--top-k: expected a positive integer, got {args.top_k}")
    areas_asked = bool(args.box or args.geojson)
    if not args.images and not areas_asked:
        raise ValueError("nothing to predict: give image files or folders, or --box / --geojson with --section")
    if areas_asked and args.section is None:
        raise ValueError("--box and --geojson need --section (a TIFF path, or <specimen>/<section> with --atlas)")
    boxes = [parse_box(b) for b in args.box]  # malformed boxes fail before the model loads
    files = image_files(args.images)
    section_path = args.section if args.section is not None and args.atlas is None else None
    if section_path is not None and not Path(section_path).is_file():
        raise FileNotFoundError(f"{section_path}: section image not found (expected a pyramidal TIFF, or "
                                f"<specimen>/<section> with --atlas)")
    trained, cands, ontology = _open(args, section_path)
    frames = []
    if files:
        frames.append(P.predict_images(trained, cands, files, top_k=args.top_k, batch_size=args.batch_size))
    if areas_asked:
        section = open_section(args.section, atlas=args.atlas, ontology=ontology)
        box_mpp = args.box_mpp or section.mpp0
        if boxes:
            areas = [(f"box {b[0]:g},{b[1]:g},{b[2]:g},{b[3]:g} @ {box_mpp:g} µm/px", P.box_geometry(*b, box_mpp, section))
                     for b in boxes]
            frames.append(P.predict_areas(trained, cands, section, areas, top_k=args.top_k, mpp=args.mpp, kind="box"))
        if args.geojson:
            frames.append(P.predict_areas(trained, cands, section, read_geojson_areas(args.geojson),
                                          top_k=args.top_k, mpp=args.mpp, kind="polygon"))
    frame = pd.concat([f for f in frames if len(f)], ignore_index=True)
    print(f"model {trained.spec}; {len(cands)} candidates ({cands.source}); prompt {trained.prompt!r}")
    print(P.format_table(frame))
    if args.output:
        meta = {"model": trained.spec, "candidates": cands.source, "labels": list(cands.names),
                "prompt": trained.prompt, "area_mpp": args.mpp or trained.read_mpp}
        print(f"wrote {P.write_predictions(frame, args.output, meta)}")
    return 0


def _segment(args: argparse.Namespace) -> int:
    import pandas as pd

    from cytoclip.annotate.segment import segment_sections
    from cytoclip.annotate.sources import atlas_sections, open_section

    if args.sections and args.atlas:
        raise ValueError("give section TIFFs or --atlas with filters, not both")
    if not args.sections and not args.atlas:
        raise ValueError("nothing to segment: give section TIFFs, or --atlas ROOT (with --specimen / --section)")
    if (args.specimen or args.section) and not args.atlas:
        raise ValueError("--specimen and --section filter the sections of --atlas")
    for p in args.sections:  # missing files fail before the model loads
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p}: section image not found (expected a pyramidal TIFF)")
    trained, cands, ontology = _open(args, args.sections[0] if args.sections else None)
    sections = (atlas_sections(args.atlas, args.specimen, args.section) if args.atlas
                else [open_section(p, ontology=ontology) for p in args.sections])
    summary = segment_sections(trained, cands, sections, args.output_dir, ontology=ontology, tile=args.tile,
                               mpp=args.mpp, batch_size=args.batch_size, min_tissue=args.min_tissue,
                               negative_y=args.negative_y, resume=args.resume)
    print(f"model {trained.spec}; {len(cands)} candidates ({cands.source})")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {Path(args.output_dir)}/ (<section>.geojson, .png, .tiles.parquet, .json; summary.csv)",
          file=sys.stdout)
    return 0
