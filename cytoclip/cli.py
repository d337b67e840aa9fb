"""The ``cytoclip`` command.

Verbs are declared as data (name -> module, help). Each module owns its arguments through
``configure_parser(parser)``, which must set ``parser.set_defaults(func=callable(args) -> int)``.
Modules are imported only when their verb runs, so ``cytoclip --help`` stays fast (no torch import).

Errors: an exception that says what the user gave wrong (cytoclip's own error types, ``ValueError``,
``KeyError``, a missing file ...) is printed as one line, ``cytoclip <verb>: error: <message>``, and the
command exits 2, as argparse does for a bad option. ``--debug`` (anywhere on the command line) or
``CYTOCLIP_DEBUG=1`` prints the traceback as well. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

# verb -> (module that configures it, one-line help); "module:function" names another function than configure_parser
VERBS: dict[str, tuple[str, str]] = {
    "ontology": ("cytoclip.ontology", "inspect the DHARANI nomenclature and merge specs"),
    "atlas": ("cytoclip.atlas", "list the specimens and sections of an atlas in the DHARANI layout"),
    "synth": ("cytoclip.synth.cli", "write the synthetic Nissl atlas in the DHARANI layout"),
    "prepare": ("cytoclip.prepare", "prepare whole-region images (regions) or 2 um/px tiles (tiles)"),
    "train": ("cytoclip.train", "train (fine-tune) a CLIP model on a prepared dataset"),
    "evaluate": ("cytoclip.evaluate", "evaluate a model or run: classification, retrieval, baselines"),
    "predict": ("cytoclip.annotate.cli:configure_predict", "name images or drawn areas of a section (top-k regions)"),
    "segment": ("cytoclip.annotate.cli:configure_segment", "segment whole sections: GeoJSON, overlay, tile scores"),
    "study": ("cytoclip.study", "run the study's notebooks with papermill and build the book"),
    "export": ("cytoclip.export", "write a trained model in its base library's format (transformers / open_clip) "
                                  "with a model card"),
}

DEBUG_FLAG = "--debug"
DEBUG_ENV = "CYTOCLIP_DEBUG"
#: exit status for bad input (argparse uses 2 for a bad option too)
EXIT_BAD_INPUT = 2
#: exception types whose message describes bad input (plus every exception class defined in cytoclip)
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError,
    PermissionError,
)
_PACKAGE_DIR = Path(__file__).resolve().parent


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cytoclip",
        description="CytoCLIP study: synthetic/real DHARANI atlas -> prepared dataset -> training -> evaluation -> book.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help=f"show the traceback of an error (also anywhere after the verb, or {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for verb, (module, help_) in VERBS.items():
        p = sub.add_parser(verb, help=help_, description=help_)
        if verb == chosen:  # configure only the verb that runs: keeps --help free of heavy imports
            mod, _, fn = module.partition(":")
            getattr(importlib.import_module(mod), fn or "configure_parser")(p)
    return parser


def _version() -> str:
    from cytoclip import __version__

    return __version__


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` (wherever it stands before a ``--``), and whether it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    head = [a for a in argv[:end] if a != DEBUG_FLAG]
    return head + argv[end:], len(head) != end


def _debug_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _command_name(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The full command that ran, e.g. ``cytoclip prepare regions`` (follows nested sub-commands)."""
    p = parser
    while True:
        action = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, action.dest, None) if action is not None else None
        if chosen not in getattr(action, "choices", {}):
            return p.prog
        p = action.choices[chosen]


def is_input_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports bad input: one of :data:`INPUT_ERRORS`, a cytoclip error type, or a YAML error."""
    mro = type(exc).__mro__
    return (isinstance(exc, INPUT_ERRORS)
            or any(c.__module__.split(".")[0] == "cytoclip" for c in mro)
            or any(c.__name__ == "YAMLError" for c in mro))


def error_message(exc: BaseException) -> str:
    """The message of ``exc`` as a user reads it (a KeyError's message unquoted; the type name when empty)."""
    if type(exc).__str__ is KeyError.__str__ and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    else:
        text = str(exc)
    return text.strip() or type(exc).__name__


def _raised_outside_package(exc: BaseException) -> str | None:
    """The module that raised ``exc`` when that is not cytoclip's code (a library, or Python itself), else None."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return None
    last = Path(frames[-1].filename)
    try:
        last.resolve().relative_to(_PACKAGE_DIR)
        return None
    except (ValueError, OSError):
        return last.stem if last.suffix == ".py" else str(last)


def report_error(command: str, exc: BaseException, debug: bool, stream=None) -> int:
    """Print ``exc`` for the user of ``command``; return the exit status (2 for bad input, 1 otherwise)."""
    stream = sys.stderr if stream is None else stream
    if debug:
        traceback.print_exception(exc, file=stream)
    print(f"{command}: error: {error_message(exc)}", file=stream)
    origin = _raised_outside_package(exc)
    if origin is not None and not debug:
        # a message from a library rather than from cytoclip's own checks may need the traceback to act on
        print(f"{command}: ({type(exc).__name__} raised in {origin}; rerun with {DEBUG_FLAG} for the traceback)",
              file=stream)
    return EXIT_BAD_INPUT if is_input_error(exc) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    argv, debug = _split_debug(argv)
    debug = debug or _debug_env()
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
    except Exception as exc:
        if not (is_input_error(exc) or isinstance(exc, OSError)):
            raise  # a bug: the traceback is what a report needs
        return report_error(_command_name(parser, args), exc, debug)
