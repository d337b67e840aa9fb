"""``cytoclip evaluate``: :func:`cytoclip.evaluate.run.evaluate` from the command line.

The defaults resolve as the notebooks resolve them (:func:`~cytoclip.evaluate.run.resolve_evaluation`): a run
directory brings its own image type, split and seed, and the retrieval set has the paper's size, so the command
gives the numbers the study's page gives for the same run and dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cytoclip evaluate``."""
    parser.add_argument("--model", required=True, help="a training run or saved-model directory, or a model spec "
                        "(tiny, hf:..., open_clip:..., uni:..., conch:...)")
    parser.add_argument("--dataset", required=True, help="prepared dataset directory (manifest.parquet)")
    parser.add_argument("--output-dir", required=True, help="where results.json, embeddings.npz and figures go")
    parser.add_argument("--image-type", default=None, help="exact | exact_mask | square224 | square336 | tile "
                        "(default: the run's, else square224 or tile)")
    parser.add_argument("--split", default=None, help="split scheme: sections | tiles | cross_age | cross_plane "
                        "(default: the run's, else the manifest's split column)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of --split (default 0)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the retrieval draw and the bootstrap "
                        "(default: the run's seed, else 0)")
    parser.add_argument("--retrieval-size", type=int, default=None,
                        help="validation images drawn for retrieval (default: the paper's, 925 regions / 1237 tiles)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples per interval (0: none)")
    parser.add_argument("--prompt", default="{}", help="text template with {} or 'ontology_path'")
    parser.add_argument("--probes", action=argparse.BooleanOptionalAction, default=None,
                        help="linear-probe / k-NN baselines (default: for image-only models)")
    parser.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--atlas", default=None, help="atlas root, for the adjacency part of the error analysis")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cpu)")
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from cytoclip.evaluate.run import evaluate

    res = evaluate(args.model, args.dataset, args.output_dir, image_type=args.image_type, split=args.split,
                   split_seed=args.split_seed, seed=args.seed, retrieval_size=args.retrieval_size,
                   n_boot=args.n_boot, prompt=args.prompt, probes=args.probes, figures=args.figures,
                   atlas=args.atlas, batch_size=args.batch_size, device=args.device)
    c = res["classification"] or {}
    r = res["retrieval"]["image_to_image"]
    print(f"[{res['data']}] {res['model']} on {res['dataset']} ({res['image_type']}, "
          f"{res['validation_data']['n_images']} validation images, {res['label_type']}-region labels): "
          f"weighted F1 {c.get('f1_weighted', float('nan')):.4f}, macro F1 {c.get('f1_macro', float('nan')):.4f}; "
          f"image-to-image Recall@10 {r['recall_at_10']:.4f}")
    print(f"wrote {Path(args.output_dir) / 'results.json'}")
    return 0
