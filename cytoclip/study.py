"""The study runner: `_config.yml` -> papermill executions -> `book/`.

The study is data (`_config.yml`): profiles (smoke, demo, paper), experiments with their notebook, dependencies
and parameters. `run_study` executes the experiments in dependency order with papermill, writing each executed
notebook to ``book/experiments/<id>.ipynb`` and its results to ``book/results/<id>/``. An experiment whose notebook,
resolved parameters, code and upstream results are unchanged is skipped; a failed experiment is kept (its executed
notebook shows the error), experiments that depend on it are not run, the others go on, and the run exits non-zero
naming the failures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cytoclip.io import fingerprint, read_json, write_json
from cytoclip.progress import PROGRESS_FILE_ENV, StudyMonitor, format_duration

STUDY_FILE = "_config.yml"
PACKAGE_DIR = Path(__file__).resolve().parent


class StudyConfigError(ValueError):
    """The study file is malformed: the message names the file and the field."""


@dataclass
class Experiment:
    id: str
    notebook: str
    title: str
    depends_on: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the protocol keys (cytoclip.protocol.PROTOCOL_KEYS) its numbers depend on; None: all of them
    protocol: list[str] | None = None


@dataclass
class Study:
    root: Path
    path: Path
    title: str
    data: dict[str, Any]
    paths: dict[str, str]
    defaults: dict[str, Any]
    profiles: dict[str, dict[str, Any]]
    experiments: dict[str, Experiment]

    @property
    def book_dir(self) -> Path:
        return self.root / self.paths.get("book", "book")

    def results_dir(self, exp_id: str) -> Path:
        return self.book_dir / "results" / exp_id

    def executed_notebook(self, exp_id: str) -> Path:
        return self.book_dir / "experiments" / f"{exp_id}.ipynb"


def load_study(path: str | os.PathLike | None = None) -> Study:
    """Read and validate the study file (default ``./_config.yml``)."""
    path = Path(path or STUDY_FILE).resolve()
    if not path.is_file():
        raise StudyConfigError(f"{path}: study file not found (expected the study's _config.yml)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StudyConfigError(f"{path}: not valid YAML ({exc})") from None
    for key in ("profiles", "experiments"):
        if not isinstance(raw.get(key), dict) or not raw[key]:
            raise StudyConfigError(f"{path}: field '{key}' must be a non-empty mapping")
    experiments: dict[str, Experiment] = {}
    for exp_id, spec in raw["experiments"].items():
        if not isinstance(spec, dict) or "notebook" not in spec:
            raise StudyConfigError(f"{path}: experiments.{exp_id} needs a 'notebook' field")
        experiments[exp_id] = Experiment(
            id=exp_id, notebook=spec["notebook"], title=spec.get("title", exp_id),
            depends_on=list(spec.get("depends_on") or []), params=dict(spec.get("params") or {}),
            profiles={k: dict(v or {}) for k, v in (spec.get("profiles") or {}).items()},
            protocol=list(spec["protocol"]) if spec.get("protocol") is not None else None)
    for exp in experiments.values():
        for dep in exp.depends_on:
            if dep not in experiments:
                raise StudyConfigError(f"{path}: experiments.{exp.id}.depends_on names unknown experiment '{dep}'")
        for prof in exp.profiles:
            if prof not in raw["profiles"]:
                raise StudyConfigError(f"{path}: experiments.{exp.id}.profiles names unknown profile '{prof}'")
    study = Study(root=path.parent, path=path, title=raw.get("title", "Study"), data=dict(raw.get("data") or {}),
                  paths=dict(raw.get("paths") or {}), defaults=dict(raw.get("defaults") or {}),
                  profiles={k: dict(v or {}) for k, v in raw["profiles"].items()}, experiments=experiments)
    execution_order(study)  # raises on cycles
    from cytoclip.protocol import PROTOCOL_KEYS, check_departures

    for exp in experiments.values():
        unknown = sorted(set(exp.protocol or []) - set(PROTOCOL_KEYS))
        if unknown:
            raise StudyConfigError(f"{path}: experiments.{exp.id}.protocol names unknown key(s) {unknown}; "
                                   f"expected some of {sorted(PROTOCOL_KEYS)}")
    check_departures(study)
    return study


def execution_order(study: Study, only: list[str] | None = None) -> list[str]:
    """Experiments in dependency order (declaration order among equals); ``only`` adds their dependencies."""
    wanted: list[str] = list(study.experiments)
    if only:
        unknown = [e for e in only if e not in study.experiments]
        if unknown:
            raise StudyConfigError(f"{study.path}: unknown experiment(s) {unknown}; known: {list(study.experiments)}")
        closure: set[str] = set()
        stack = list(only)
        while stack:
            e = stack.pop()
            if e not in closure:
                closure.add(e)
                stack.extend(study.experiments[e].depends_on)
        wanted = [e for e in study.experiments if e in closure]
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(e: str, trail: tuple[str, ...]) -> None:
        if state.get(e) == 2:
            return
        if state.get(e) == 1:
            raise StudyConfigError(f"{study.path}: dependency cycle {' -> '.join(trail + (e,))}")
        state[e] = 1
        for dep in study.experiments[e].depends_on:
            visit(dep, trail + (e,))
        state[e] = 2
        order.append(e)

    for e in wanted:
        visit(e, ())
    return order


def resolve_params(study: Study, exp_id: str, profile: str) -> dict[str, Any]:
    """defaults < profile params < experiment params < experiment's per-profile params, plus runner-owned keys."""
    if profile not in study.profiles:
        raise StudyConfigError(f"{study.path}: unknown profile '{profile}'; known: {list(study.profiles)}")
    exp = study.experiments[exp_id]
    params: dict[str, Any] = dict(study.defaults)
    params.update(study.profiles[profile].get("params") or {})
    params.update(exp.params)
    params.update(exp.profiles.get(profile, {}))
    if study.data.get("source") == "dharani" or params.get("source") == "dharani":
        params["source"] = "dharani"
        params["atlas"] = params.get("atlas") or study.data.get("atlas")
    params.update(profile=profile, experiment=exp_id,
                  output_dir=str(study.results_dir(exp_id).relative_to(study.root)))
    return params


def notebook_parameters(study: Study, exp_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """The resolved parameters an experiment's notebook declares (its ``parameters`` cell).

    Study-wide defaults a notebook does not use are not passed; a parameter set for this experiment
    (``experiments.<id>.params`` or its per-profile block) that the notebook does not declare is an error naming
    the closest declared name, so a typo in the study file cannot silently run the defaults.
    """
    from cytoclip.params import check_parameters, declared_parameters

    exp = study.experiments[exp_id]
    src = study.root / exp.notebook
    declared = declared_parameters(src)
    own = set(exp.params) | {k for block in exp.profiles.values() for k in block}
    try:
        check_parameters(own, declared, where=f"{study.path}: experiments.{exp_id} ({exp.notebook})")
    except ValueError as exc:
        raise StudyConfigError(str(exc)) from None
    return {k: v for k, v in params.items() if k in declared}


def code_fingerprint() -> str:
    """Fingerprint of the installed cytoclip sources and resources: changed code reruns the study."""
    files = sorted(p for p in PACKAGE_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return fingerprint([(str(p.relative_to(PACKAGE_DIR)), fingerprint(p)) for p in files])


@dataclass
class ExperimentOutcome:
    id: str
    status: str  # ok | skipped (unchanged) | failed | blocked (a dependency failed)
    seconds: float = 0.0
    message: str = ""


def _experiment_fingerprint(study: Study, exp_id: str, params: dict, upstream: dict[str, str], code: str) -> str:
    nb = study.root / study.experiments[exp_id].notebook
    return fingerprint(params, nb, upstream, code)


def _ipc_kernel_manager() -> type:
    """nbclient's kernel manager on IPC sockets: the kernel talks to the runner through local files, not TCP
    ports, so ipykernel has no reason to print its "running over TCP without encryption" warning into the
    terminal at every experiment."""
    from jupyter_client import AsyncKernelManager

    return type("IPCKernelManager", (AsyncKernelManager,), {"transport": "ipc"})


def run_study(profile: str = "demo", only: list[str] | None = None, config: str | os.PathLike | None = None,
              force: bool = False, kernel_name: str | None = None, log=print,
              monitor: bool = True, standins: str | os.PathLike | bool | None = None,
              standins_size: str = "full") -> list[ExperimentOutcome]:
    """Execute the study's experiments for ``profile``; returns one outcome per experiment in order.

    While an experiment runs, a status line (``monitor``) shows its cells done, the step it is in (the training
    epoch and loss when it trains) and the time left, estimated from the last run of the same profile.

    ``standins``: run ``profile`` on random-weight stand-ins of its real models written under this folder
    (``True``: ``data/standins``), on the smoke synthetic atlas, a step or two per training run, into the
    folder's own ``runs/`` and ``book/`` (:func:`cytoclip.models.standins.use_standins`)."""
    import papermill as pm

    study = load_study(config)
    if standins:
        from cytoclip.models.standins import use_standins

        use_standins(study, profile, None if standins is True else standins, size=standins_size, log=log)
    order = execution_order(study, only)
    # progress bars belong to interactive use; in executed pages they are noise (the runner logs progress)
    os.environ.setdefault("TQDM_DISABLE", "1")
    code = code_fingerprint()
    previous_runtimes = _previous_runtimes(study, profile)
    outcomes: dict[str, ExperimentOutcome] = {}
    fingerprints: dict[str, str] = {}
    (study.book_dir / "experiments").mkdir(parents=True, exist_ok=True)
    for i, exp_id in enumerate(order, 1):
        exp = study.experiments[exp_id]
        failed_deps = [d for d in exp.depends_on if outcomes.get(d) and outcomes[d].status in ("failed", "blocked")]
        if failed_deps:
            outcomes[exp_id] = ExperimentOutcome(exp_id, "blocked", message=f"dependency failed: {failed_deps}")
            log(f"[{i}/{len(order)}] {exp_id}: not run, {outcomes[exp_id].message}")
            continue
        params = resolve_params(study, exp_id, profile)
        upstream = {d: fingerprints.get(d) or _stored_fingerprint(study, d) for d in exp.depends_on}
        fp = _experiment_fingerprint(study, exp_id, params, upstream, code)
        fingerprints[exp_id] = fp
        record_path = study.results_dir(exp_id) / "study.json"
        previous = read_json(record_path) if record_path.is_file() else {}
        out_nb = study.executed_notebook(exp_id)
        if not force and previous.get("fingerprint") == fp and previous.get("status") == "ok" and out_nb.is_file():
            outcomes[exp_id] = ExperimentOutcome(exp_id, "skipped", message="unchanged")
            log(f"[{i}/{len(order)}] {exp_id}: unchanged, skipped")
            continue
        src = study.root / exp.notebook
        if not src.is_file():
            outcomes[exp_id] = ExperimentOutcome(exp_id, "failed", message=f"notebook not found: {src}")
            log(f"[{i}/{len(order)}] {exp_id}: FAILED, {outcomes[exp_id].message}")
            continue
        study.results_dir(exp_id).mkdir(parents=True, exist_ok=True)
        running = out_nb.with_name(f".{exp_id}.running.ipynb")
        expected = (previous_runtimes.get(exp_id) or {}).get("seconds")
        log(f"[{i}/{len(order)}] {exp_id}: running {exp.notebook} ({profile})"
            + (f", took {format_duration(expected)} last time" if expected else ""))
        t0 = time.perf_counter()
        status, message = "ok", ""
        try:
            nb_params = notebook_parameters(study, exp_id, params)
        except StudyConfigError as exc:
            outcomes[exp_id] = ExperimentOutcome(exp_id, "failed", message=str(exc))
            log(f"[{i}/{len(order)}] {exp_id}: FAILED, {exc}")
            continue
        # the kernel's progress bars publish their state here (cytoclip.progress); the monitor shows it
        progress_file = study.results_dir(exp_id) / ".progress.json"
        progress_file.unlink(missing_ok=True)
        os.environ[PROGRESS_FILE_ENV] = str(progress_file)
        try:
            with StudyMonitor(f"[{i}/{len(order)}] {exp_id}", running, progress_file, expected,
                              enabled=monitor):
                pm.execute_notebook(str(src), str(running), parameters=nb_params, cwd=str(study.root),
                                    kernel_name=kernel_name, progress_bar=False, log_output=False,
                                    report_mode=False, kernel_manager_class=_ipc_kernel_manager())
        except pm.PapermillExecutionError as exc:
            status, message = "failed", f"{exc.ename}: {exc.evalue}"
        except Exception as exc:  # kernel died, bad parameters, ...: shown, the study goes on
            status, message = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            os.environ.pop(PROGRESS_FILE_ENV, None)
            progress_file.unlink(missing_ok=True)
        seconds = time.perf_counter() - t0
        if running.exists():
            _dress_for_book(running, exp.title, study, exp_id, status, seconds)
            os.replace(running, out_nb)  # the failed notebook is kept on purpose: it shows the error
        write_json(record_path, {"experiment": exp_id, "title": exp.title, "profile": profile, "status": status,
                                 "message": message, "fingerprint": fp, "params": params,
                                 "seconds": round(seconds, 1), "finished": _now()})
        outcomes[exp_id] = ExperimentOutcome(exp_id, status, seconds, message)
        log(f"[{i}/{len(order)}] {exp_id}: {status} in {format_duration(seconds)}"
            f"{(' — ' + message) if message else ''}")
        # after every experiment, so the summary page (run last) reads this run's times of all the others
        _write_study_log(study, profile, [outcomes[e] for e in order if e in outcomes])
    result = [outcomes[e] for e in order]
    _write_study_log(study, profile, result)
    write_toc(study)
    return result


def _dress_for_book(path: Path, title: str, study: Study | None = None, exp_id: str | None = None,
                   status: str = "ok", seconds: float | None = None) -> None:
    """Make an executed notebook a page a reader reads, not a log.

    - Title it after its experiment (one notebook runs several experiments).
    - Open it with what was run on which data and what it found (from the page's own ``results.json`` and
      ``headline.csv``: :func:`cytoclip.report.at_a_glance`).
    - Fold the parameter cells away (Jupyter Book's ``hide-cell``; readers can still open them) and move them
      under that opening, so a page starts with its title, not with two folded cells.
    - Keep the machine out of the published outputs: stderr (warnings, library chatter) moves to
      ``results/<id>/stderr.txt``, and the study root's absolute path becomes relative.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    root = f"{study.root}{os.sep}" if study is not None else None
    stderr: list[str] = []
    for idx, cell in enumerate(nb.cells):
        tags = cell.metadata.setdefault("tags", [])
        if ("parameters" in tags or "injected-parameters" in tags) and "hide-cell" not in tags:
            tags.append("hide-cell")
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                stderr.append(f"--- cell {idx}\n{out.get('text', '')}")
                continue
            if root:
                if "text" in out:
                    out["text"] = out["text"].replace(root, "")
                for mime, value in out.get("data", {}).items():
                    if mime.startswith("text/") and isinstance(value, str):
                        out["data"][mime] = value.replace(root, "")
            kept.append(out)
        cell["outputs"] = kept
    heading = next((c for c in nb.cells if c.cell_type == "markdown" and c.source.lstrip().startswith("# ")), None)
    if heading is not None:
        lines = heading.source.lstrip().splitlines()
        heading.source = "\n".join([f"# {title}"] + lines[1:])
    if study is not None and exp_id is not None:
        results = study.results_dir(exp_id)
        if stderr:
            (results / "stderr.txt").write_text("\n".join(stderr))
        glance = _glance_markdown(results, status, seconds)
        # idempotent: a page dressed again keeps one opening
        nb.cells = [c for c in nb.cells if "at-a-glance" not in c.metadata.get("tags", [])]
        if glance and heading is not None:
            at = nb.cells.index(heading) + 1
            cell = nbformat.v4.new_markdown_cell(glance)
            cell.metadata["tags"] = ["at-a-glance"]
            nb.cells.insert(at, cell)
    if heading is not None:
        # display only: the executed outputs are kept, so moving the (output-less) parameter cells changes nothing
        params = [c for c in nb.cells if {"parameters", "injected-parameters"} & set(c.metadata.get("tags", []))]
        rest = [c for c in nb.cells if not any(c is q for q in params)]
        at = rest.index(heading) + 1
        at += at < len(rest) and "at-a-glance" in rest[at].metadata.get("tags", [])
        nb.cells = rest[:at] + params + rest[at:]
    nbformat.write(nb, path)


def _glance_markdown(results_dir: Path, status: str, seconds: float | None) -> str:
    """The opening lines of a page: what ran, on which data, and what it found."""
    from cytoclip import report

    res = read_json(results_dir / "results.json") if (results_dir / "results.json").is_file() else {}
    headline = results_dir / "headline.csv"
    found = report.at_a_glance(report.read_headline(headline)) if headline.is_file() else []
    found += [str(line) for line in res.get("glance") or []]
    if not res and not found:
        return ""
    data = res.get("data") or "unknown data"
    data = ", ".join(map(str, data)) if isinstance(data, (list, tuple)) else str(data)  # the summary holds several
    dep = res.get("departures") or []
    lines = [f"**At a glance.** Profile `{res.get('profile', '')}`, data: **{data}**"
             + (" (not DHARANI)" if data == "synthetic atlas" else "")
             + (f", {len(dep)} departure(s) from the paper's protocol (listed below)" if dep else
                ", the paper's protocol")
             + (f"; ran in {format_duration(seconds)}" if seconds else "")
             + ("." if status == "ok" else f"; **{status}** (the error is shown below).")]
    if found:
        lines.append("")
        lines += [f"- {line}" for line in found]
    return "\n".join(lines)


def _previous_runtimes(study: Study, profile: str) -> dict[str, dict]:
    """Wall times of the last run of ``profile`` (study_log.json), the estimate of each experiment's time left."""
    log_path = study.book_dir / "results" / "study_log.json"
    previous = read_json(log_path) if log_path.is_file() else {}
    return dict(previous.get("runtimes", {})) if previous.get("profile") == profile else {}


def _stored_fingerprint(study: Study, exp_id: str) -> str | None:
    path = study.results_dir(exp_id) / "study.json"
    return read_json(path).get("fingerprint") if path.is_file() else None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_study_log(study: Study, profile: str, outcomes: list[ExperimentOutcome]) -> None:
    import torch

    log_path = study.book_dir / "results" / "study_log.json"
    previous = read_json(log_path) if log_path.is_file() else {}
    runtimes = dict(previous.get("runtimes", {})) if previous.get("profile") == profile else {}
    for o in outcomes:
        if o.status != "skipped":
            runtimes[o.id] = {"status": o.status, "seconds": round(o.seconds, 1), "message": o.message}
    write_json(log_path, {
        "profile": profile, "finished": _now(), "command": " ".join(["cytoclip"] + sys.argv[1:]) if sys.argv else "",
        "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
        "machine": platform.machine(), "cpus": os.cpu_count(), "host": socket.gethostname(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "outcomes": [o.__dict__ for o in outcomes], "runtimes": runtimes})
    _write_book_includes(study, profile, runtimes)


def _write_book_includes(study: Study, profile: str, runtimes: dict[str, dict]) -> None:
    """Markdown snippets the book's static chapters include: provenance of the numbers, runtimes."""
    from cytoclip.io import atomic_path

    params = {e: resolve_params(study, e, profile) for e in study.experiments}
    sources = sorted({p.get("source", "synthetic") for p in params.values()})
    models = sorted({str(p.get("model")) for p in params.values() if p.get("model")})
    lines = [f"- **Profile:** `{profile}` — {study.profiles[profile].get('description', '')}"]
    for src in sources:
        if src == "synthetic":
            atlas_profiles = sorted({str(p.get("atlas_profile")) for p in params.values()})
            lines.append(f"- **Data:** the *synthetic atlas* (`cytoclip synth`, profile {', '.join(atlas_profiles)}, "
                         f"seed {params[next(iter(params))].get('atlas_seed', 0)}), written in the DHARANI layout. "
                         "**Not DHARANI data**: every number computed on it is labelled synthetic.")
        else:
            roots = sorted({str(p.get("atlas")) for p in params.values()})
            lines.append(f"- **Data:** a DHARANI mirror at {', '.join(roots)}.")
    lines.append(f"- **Models trained or evaluated:** {', '.join(f'`{m}`' for m in models)}"
                 + (" (`tiny`: a small CLIP trained from scratch on the CPU, standing in for the paper's pretrained "
                    "CLIP/BiomedCLIP)." if "tiny" in models else "."))
    lines.append("- **The paper's numbers** (DHARANI, pretrained models on A100 GPUs) are shown beside ours in "
                 "separate columns, never mixed in.")
    table = ["| experiment | status | minutes |", "| --- | --- | ---: |"]
    total = 0.0
    for e in study.experiments:
        r = runtimes.get(e)
        if r:
            total += r["seconds"]
            table.append(f"| {e} | {r['status']} | {r['seconds'] / 60:.1f} |")
    table.append(f"| **total** | | **{total / 60:.1f}** |")
    import torch

    env = (f"Profile `{profile}`; Python {sys.version.split()[0]}, torch {torch.__version__}, "
           f"{platform.platform()}, {os.cpu_count()} CPU cores"
           + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU") + ".")
    for name, text in (("provenance.md", "\n".join(lines) + "\n"),
                       ("runtimes.md", env + "\n\n" + "\n".join(table) + "\n")):
        with atomic_path(study.book_dir / "results" / name) as tmp:
            tmp.write_text(text)


# Static chapters around the experiment notebooks; experiments appear in the order of the study file.
BOOK_FRONT = ["intro", "methods"]
BOOK_BACK = ["open_questions", "reproducibility", "api"]


def write_toc(study: Study) -> Path:
    """Write ``book/_toc.yml``: the static chapters and every experiment that has an executed notebook."""
    book = study.book_dir
    chapters = [{"file": name} for name in BOOK_FRONT[1:] if (book / f"{name}.md").is_file()]
    exps = [{"file": f"experiments/{e}"} for e in study.experiments if study.executed_notebook(e).is_file()]
    back = [{"file": name} for name in BOOK_BACK if (book / f"{name}.md").is_file()]
    toc = {"format": "jb-book", "root": BOOK_FRONT[0],
           "parts": [p for p in ({"caption": "Methods", "chapters": chapters},
                                 {"caption": "Experiments", "chapters": exps},
                                 {"caption": "Appendix", "chapters": back}) if p["chapters"]]}
    path = book / "_toc.yml"
    header = "# Written by `cytoclip study run` from _config.yml (experiments with an executed notebook).\n"
    text = header + yaml.safe_dump(toc, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        from cytoclip.io import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------- CLI
def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="study_cmd", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="execute the experiments of a profile with papermill into book/")
    run.add_argument("--profile", default="demo", help="smoke | demo | paper (default: demo)")
    run.add_argument("--only", nargs="+", metavar="ID", help="run these experiments (and what they depend on)")
    run.add_argument("--force", action="store_true", help="rerun even unchanged experiments")
    run.add_argument("--config", default=STUDY_FILE, help="study file (default: ./_config.yml)")
    run.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    run.add_argument("--stand-ins", nargs="?", const=True, default=None, metavar="DIR",
                     help="run the profile on random-weight stand-ins of its real models (written to DIR, default "
                          "data/standins), the smoke synthetic atlas and a step or two per run: the real path "
                          "without downloads")
    run.add_argument("--stand-ins-size", default="full", choices=("full", "small"),
                     help="full: the real architectures (default); small: the same families at tiny widths")
    run.set_defaults(func=_cmd_run)
    lst = sub.add_parser("list", help="list experiments in execution order with their notebooks")
    lst.add_argument("--config", default=STUDY_FILE)
    lst.set_defaults(func=_cmd_list)
    par = sub.add_parser("params", help="print the resolved papermill parameters of an experiment")
    par.add_argument("experiment")
    par.add_argument("--profile", default="demo")
    par.add_argument("--config", default=STUDY_FILE)
    par.set_defaults(func=_cmd_params)


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        outcomes = run_study(args.profile, args.only, args.config, force=args.force, kernel_name=args.kernel,
                             standins=getattr(args, "stand_ins", None),
                             standins_size=getattr(args, "stand_ins_size", "full"))
    except StudyConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bad = [o for o in outcomes if o.status in ("failed", "blocked")]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed", "blocked")}
    width = max(len(o.id) for o in outcomes) if outcomes else 10
    print(f"{'experiment':{width}s}  {'status':8s} {'wall':>8s}")
    for o in outcomes:
        print(f"{o.id:{width}s}  {o.status:8s} {format_duration(o.seconds) if o.status != 'skipped' else '-':>8s}")
    total = sum(o.seconds for o in outcomes)
    print(f"{'total':{width}s}  {'':8s} {format_duration(total):>8s}")
    print("study: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for o in bad:
        print(f"  {o.status}: {o.id} — {o.message}", file=sys.stderr)
    return 1 if bad else 0


def _cmd_list(args: argparse.Namespace) -> int:
    study = load_study(args.config)
    for e in execution_order(study):
        exp = study.experiments[e]
        deps = f"  (after {', '.join(exp.depends_on)})" if exp.depends_on else ""
        print(f"{e:24s} {exp.notebook}{deps}")
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    study = load_study(args.config)
    if args.experiment not in study.experiments:
        print(f"error: unknown experiment '{args.experiment}'", file=sys.stderr)
        return 2
    print(yaml.safe_dump(resolve_params(study, args.experiment, args.profile), sort_keys=False))
    return 0
