"""What every experiment page does around its own work: read its parameters, say which data it runs on and
where it departs from the paper's protocol, and write ``results.json`` + ``headline.csv`` at the end.

A notebook's first code cell after its parameters is::

    page = Page.open(globals())

which refuses a parameter the notebook does not declare (``papermill -p epoch 1``), builds nothing, and
records the parameters, the data label (set once the atlas is known: :meth:`Page.use_data`) and the departures
from the paper (:func:`cytoclip.protocol.departures`, computed from the values actually used).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["Page", "TRAIN_PARAMS"]

#: the notebook parameters that are :class:`cytoclip.train.TrainConfig` fields of the same name
TRAIN_PARAMS = ("model", "image_size", "targets", "augment", "epochs", "max_steps", "batch_size", "lr",
                "weight_decay", "warmup_steps", "num_workers", "prompt")


@dataclass
class Page:
    params: dict[str, Any]
    output_dir: Path
    experiment: str
    profile: str
    departures: list[dict[str, str]] = field(default_factory=list)
    data: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    headline: list[dict[str, Any]] = field(default_factory=list)
    #: what the page found, in words (markdown lines), for findings no paper table holds; the page's opening
    #: lines show them beside those computed from :attr:`headline` (see cytoclip.study._dress_for_book)
    glance: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, namespace: Mapping[str, Any], study_file: str | os.PathLike = "_config.yml") -> "Page":
        """The page of the notebook whose globals are ``namespace`` (see the module docstring)."""
        from cytoclip.params import declared_in_namespace, reject_undeclared

        reject_undeclared(namespace)
        params = {k: namespace[k] for k in declared_in_namespace(namespace) if k in namespace}
        experiment, profile = str(params.get("experiment", "")), str(params.get("profile", ""))
        page = cls(params=params, output_dir=Path(params.get("output_dir") or f"book/results/{experiment}"),
                   experiment=experiment, profile=profile)
        page.output_dir.mkdir(parents=True, exist_ok=True)
        if Path(study_file).is_file():
            from cytoclip.protocol import departures
            from cytoclip.study import load_study

            page.departures = departures(load_study(study_file), experiment, profile, params)
        page.results.update(experiment=experiment, profile=profile, params=params, departures=page.departures)
        return page

    # ------------------------------------------------------------------------------------------- what ran
    def use_data(self, atlas_or_dataset: str | os.PathLike) -> str:
        """Record the data label ("synthetic atlas" or "DHARANI") of the atlas the page runs on; returns it."""
        from cytoclip.provenance import data_label

        self.data = data_label(atlas_or_dataset)
        self.results["data"] = self.data
        return self.data

    @property
    def device(self) -> str:
        """The parameter ``device``, or cuda when available, else cpu."""
        from cytoclip.workflow import default_device

        return self.params.get("device") or default_device()

    def study_data(self, kinds: list[str], show: bool = True) -> dict[str, Any]:
        """The atlas and the prepared datasets of ``kinds`` from the page's parameters (built when missing), the
        data label recorded, and (``show``) the page's opening lines and departures displayed."""
        from cytoclip.workflow import study_data

        p = self.params
        data = study_data(p.get("source", "synthetic"), p.get("atlas"), p.get("atlas_profile"),
                          p.get("data_dir", "data"), p.get("atlas_seed", 0), kinds=kinds,
                          max_tiles_per_section=p.get("max_tiles_per_section"))
        self.use_data(data["atlas"])
        if show:
            from IPython.display import HTML, Markdown, display

            from cytoclip.report import table_html

            display(Markdown(self.markdown_intro()))
            if self.departures:
                display(HTML(table_html(self.departures_table())))
        return data

    def train(self, dataset: str | os.PathLike, name: str, image_type: str, seed: int | None = None,
              **overrides: Any) -> Path:
        """Train (or reuse) the run ``<runs_dir>/<profile>/<name>-seed<seed>`` of the page's training parameters
        (:data:`TRAIN_PARAMS`, with ``overrides`` of the same names) on ``dataset``; returns its directory."""
        from cytoclip.workflow import ensure_run, run_dir_for

        unknown = sorted(set(overrides) - set(TRAIN_PARAMS))
        if unknown:
            raise ValueError(f"Page.train: unknown training parameter(s) {unknown}; expected some of {TRAIN_PARAMS}")
        p = {**self.params, **overrides}
        seed = int(p.get("seed", 0) if seed is None else seed)
        return ensure_run(dataset=dataset, run_dir=run_dir_for(p.get("runs_dir", "runs"), self.profile, name, seed),
                          image_type=image_type, seed=seed, device=self.device,
                          **{k: p[k] for k in TRAIN_PARAMS if k in p})

    @property
    def synthetic(self) -> bool:
        return self.data == "synthetic atlas"

    @property
    def departure_note(self) -> str:
        from cytoclip.protocol import departure_note

        return departure_note(self.departures)

    def departures_table(self) -> pd.DataFrame:
        """The departures from the paper's protocol, one row per key (empty when the page follows the paper)."""
        return pd.DataFrame(self.departures, columns=["key", "paper", "ours", "reason"])

    def markdown_intro(self) -> str:
        """The opening lines of the page: data, profile and departures in words."""
        lines = [f"**Data: {self.data or 'not yet known'}** · profile `{self.profile}` · experiment "
                 f"`{self.experiment}`."]
        if self.data == "synthetic atlas":
            lines.append("Every number on this page comes from the *synthetic atlas* (a procedural stand-in in the "
                         "DHARANI layout), not from DHARANI; the paper's numbers stand beside ours, never mixed in.")
        lines.append("This page follows the paper's protocol." if not self.departures else
                     f"This page **departs from the paper** in {len(self.departures)} setting(s), listed below.")
        return "\n\n".join(lines)

    # ------------------------------------------------------------------------------------------- output
    def finish(self) -> tuple[Path, Path]:
        """Write ``results.json`` and ``headline.csv`` into the page's output directory."""
        from cytoclip import report

        if self.glance:
            self.results["glance"] = list(self.glance)
        return report.write_results(self.output_dir, self.results, self.headline)
