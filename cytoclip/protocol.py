"""The study protocol as data: which parameters define what a number measures, and where a profile departs
from the paper.

``_config.yml`` declares the paper's protocol once: the ``paper`` profile resolves every experiment exactly as
the paper ran it. Every other profile (``demo``, ``smoke``) that resolves a *protocol key* to another value must
give the reason under ``profiles.<P>.departures.<key>``; :func:`departures` lists them (the paper's value, ours,
the reason) for an experiment's page and the summary table, and :func:`check_departures` refuses a study file in
which a departure has no reason.
"""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["PAPER_PROFILE", "PROTOCOL_KEYS", "departures", "check_departures", "departure_note", "departure_summary"]

PAPER_PROFILE = "paper"

#: parameters that change what a number measures (the rest — paths, workers, device, n_boot — do not)
PROTOCOL_KEYS: dict[str, str] = {
    "source": "the atlas (DHARANI or the synthetic atlas)",
    "model": "the base model that is fine-tuned",
    "image_size": "the model's input size in pixels",
    "image_type": "how a region is cut out (square224, square336, exact, exact_mask, tile)",
    "label_type": "single-region labels or the multi-region labels (Table I 'Multi')",
    "planes": "the sectioning planes the experiment's images come from",
    "split": "how training and validation images are separated",
    "targets": "the loss targets (pairs: the paper's symmetric cross-entropy over image-text pairs)",
    "augment": "training-time image augmentation (the paper describes none)",
    "epochs": "training epochs",
    "batch_size": "images per optimizer step",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay (not given in the paper; 0.2 as in CLIP / open_clip)",
    "warmup_steps": "linear warm-up steps (not given in the paper)",
    "max_tiles_per_section": "tiles kept per section (the paper keeps all)",
    "prompt": "the text template of a class name",
}


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return "—" if value is None else str(value)


def departures(study: Any, exp_id: str, profile: str, params: dict[str, Any] | None = None
               ) -> list[dict[str, str]]:
    """``[{key, paper, ours, reason}]``: the protocol keys of ``exp_id`` (its ``protocol:`` list, default all)
    whose value differs from the paper profile's, with the reason the study file declares for ``profile``.

    ``params`` are the values actually used (a notebook's parameters, which a user may have set with
    ``papermill -p``); default: the study's resolution for ``profile``. A key that differs without a declared
    reason gets the reason "set for this run" (``check_departures`` refuses that in the study file itself).
    """
    from cytoclip.study import resolve_params

    if PAPER_PROFILE not in study.profiles or exp_id not in study.experiments:
        return []
    ours = dict(params) if params is not None else resolve_params(study, exp_id, profile)
    paper = resolve_params(study, exp_id, PAPER_PROFILE)
    reasons = dict(study.profiles.get(profile, {}).get("departures") or {}) if profile != PAPER_PROFILE else {}
    keys = study.experiments[exp_id].protocol
    out = []
    for key in (PROTOCOL_KEYS if keys is None else [k for k in PROTOCOL_KEYS if k in keys]):
        if key in ours and ours.get(key) != paper.get(key):
            out.append({"key": key, "paper": _fmt(paper.get(key)), "ours": _fmt(ours.get(key)),
                        "reason": str(reasons.get(key) or ("set for this run" if params is not None else ""))})
    return out


def check_departures(study: Any) -> None:
    """Raise :class:`cytoclip.study.StudyConfigError` when a profile departs from the paper without a reason."""
    from cytoclip.study import StudyConfigError

    for profile in study.profiles:
        for exp_id in study.experiments:
            missing = [d["key"] for d in departures(study, exp_id, profile) if not d["reason"]]
            if missing:
                raise StudyConfigError(f"{study.path}: profile '{profile}' departs from the paper in {missing} "
                                       f"(experiment {exp_id}) without a reason; add profiles.{profile}."
                                       f"departures.<key>: <why>")


def departure_note(rows: list[dict[str, str]]) -> str:
    """One line for a table cell: "epochs 10 (paper 50); model tiny (paper hf:...)"."""
    return "; ".join(f"{d['key']} {d['ours']} (paper {d['paper']})" for d in rows)


def departure_summary(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The departures of many pages (:func:`departures` rows, as each page's ``results.json`` holds them), one
    line per key with every value ours took: ["model tiny (paper hf:...)", "epochs 6, 10, 30 (paper 50)"], in
    protocol order."""
    ours: dict[str, list[str]] = {}
    paper: dict[str, list[str]] = {}
    for d in rows:
        for store, value in ((ours, str(d["ours"])), (paper, str(d["paper"]))):
            if value not in store.setdefault(d["key"], []):
                store[d["key"]].append(value)

    def order(v: str) -> tuple:
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)

    known = list(PROTOCOL_KEYS)
    keys = sorted(ours, key=lambda k: known.index(k) if k in known else len(known))
    return [f"{k} {', '.join(sorted(ours[k], key=order))} (paper {', '.join(sorted(paper[k], key=order))})"
            for k in keys]
