"""The ``cytoclip`` command.

Verbs are declared as data (name -> module, help). Each module owns its arguments through
``configure_parser(parser)``, which must set ``parser.set_defaults(func=callable(args) -> int)``.
Modules are imported only when their verb runs, so ``cytoclip --help`` stays fast (no torch import).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module that configures it, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "ontology": ("cytoclip.ontology", "inspect the DHARANI nomenclature and merge specs"),
    "atlas": ("cytoclip.atlas", "list the specimens and sections of an atlas in the DHARANI layout"),
    "synth": ("cytoclip.synth.cli", "write the synthetic Nissl atlas in the DHARANI layout"),
    "prepare": ("cytoclip.prepare", "prepare whole-region images (regions) or 2 um/px tiles (tiles)"),
    "train": ("cytoclip.train", "train (fine-tune) a CLIP model on a prepared dataset"),
    "evaluate": ("cytoclip.evaluate", "evaluate a model or run: classification, retrieval, baselines"),
    "study": ("cytoclip.study", "run the study's notebooks with papermill and build the book"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cytoclip",
        description="CytoCLIP study: synthetic/real DHARANI atlas -> prepared dataset -> training -> evaluation -> book.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for verb, (module, help_) in VERBS.items():
        p = sub.add_parser(verb, help=help_, description=help_)
        if verb == chosen:  # configure only the verb that runs: keeps --help free of heavy imports
            importlib.import_module(module).configure_parser(p)
    return parser


def _version() -> str:
    from cytoclip import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "verb", None):
        parser.print_help()
        return 0
    func = getattr(args, "func", None)
    if func is None:
        parser.parse_args([args.verb, "--help"])
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and a rerun resumes", file=sys.stderr)
        return 130
