"""Progress of every long step, for a person watching: one bar implementation, and a status line for the study.

- :func:`tqdm` is the bar of every long step (synthesis, preparation, training, embedding). It is always a *text*
  bar (``tqdm.std``): a widget bar (``tqdm.auto`` in a Jupyter kernel) is stored in an executed notebook as a
  widget frozen at its first state, which is what a bare ``papermill`` run left behind. ``TQDM_DISABLE`` hides
  every bar (the study runner sets it so the book carries no bar); callers say ``enabled=...`` instead of
  ``disable=...`` because tqdm reads the variable only once, at import.
- When ``CYTOCLIP_PROGRESS_FILE`` names a file, every bar, shown or hidden, also publishes its state there (JSON,
  replaced atomically, at most once a second): the study runner executes a notebook in a kernel it cannot see
  into, and reads this file to show what the experiment is doing (:class:`StudyMonitor`).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from tqdm.std import tqdm as _std_tqdm

PROGRESS_FILE_ENV = "CYTOCLIP_PROGRESS_FILE"
_PUBLISH_EVERY_S = 1.0
_devnull = None


def _sink():
    global _devnull
    if _devnull is None:
        _devnull = open(os.devnull, "w")  # noqa: SIM115 (one handle for the process, closed with it)
    return _devnull


def _env_disabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")


def visible() -> bool:
    """Whether bars (and the lines a long step prints beside them) are shown: ``TQDM_DISABLE`` is not set.
    Under the study runner they are not: the page shows figures, the terminal shows the runner's status line."""
    return not _env_disabled()


def _progress_file() -> Path | None:
    value = os.environ.get(PROGRESS_FILE_ENV, "").strip()
    return Path(value) if value else None


def publish(state: dict[str, Any], path: Path | None = None) -> None:
    """Write ``state`` (a JSON object) to the progress file, atomically; nothing when no file is set."""
    path = path or _progress_file()
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({**state, "time": time.time(), "pid": os.getpid()}))
        os.replace(tmp, path)
    except OSError:  # progress is a courtesy: never fail the work because the status file cannot be written
        pass


class _PublishingBar(_std_tqdm):
    """A text bar that also publishes its state (desc, n, total, rate, postfix) to the progress file."""

    def __init__(self, *args: Any, progress_file: Path | None = None, **kwargs: Any):
        self._progress_file = progress_file
        self._published = 0.0
        super().__init__(*args, **kwargs)

    def _publish(self, force: bool = False) -> None:
        if self._progress_file is None or (not force and time.time() - self._published < _PUBLISH_EVERY_S):
            return
        self._published = time.time()
        d = self.format_dict
        publish({"desc": d.get("prefix") or "", "n": d.get("n"), "total": d.get("total"),
                 "elapsed": d.get("elapsed"), "rate": d.get("rate"), "unit": d.get("unit"),
                 "postfix": d.get("postfix") or ""}, self._progress_file)

    def display(self, msg: str | None = None, pos: int | None = None) -> None:  # called at every refresh
        super().display(msg, pos)
        self._publish()

    def update(self, n: float = 1) -> bool | None:  # a hidden bar never refreshes: publish from here too
        shown = super().update(n)
        self._publish()
        return shown

    def close(self) -> None:
        if not getattr(self, "disable", True):
            self._publish(force=True)
        super().close()


def tqdm(*args: Any, enabled: bool = True, **kwargs: Any):
    """A text tqdm bar (same arguments); ``enabled=False`` hides it, ``TQDM_DISABLE`` hides every bar.

    With ``CYTOCLIP_PROGRESS_FILE`` set, the bar counts and publishes even when hidden (its text goes nowhere).
    """
    hidden = _env_disabled() or not enabled
    target = _progress_file()
    if target is None:
        return _std_tqdm(*args, **{**kwargs, "disable": True} if hidden else kwargs)
    if hidden:
        kwargs = {**kwargs, "file": _sink(), "disable": False}
    return _PublishingBar(*args, progress_file=target, **kwargs)


def read_progress(path: str | os.PathLike) -> dict[str, Any] | None:
    """The last state a bar published to ``path``, or None (no file yet, or being replaced)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def format_duration(seconds: float | None) -> str:
    """``75`` -> ``1:15``, ``3700`` -> ``1:01:40``; None -> ``?``."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _cells_done(notebook: Path) -> tuple[int, int] | None:
    """(completed, total) code cells of a notebook papermill is executing (it saves after every cell)."""
    try:
        nb = json.loads(notebook.read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write: the next poll reads it
        return None
    cells = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    done = sum(c.get("metadata", {}).get("papermill", {}).get("status") == "completed" for c in cells)
    return done, len(cells)


def status_line(prefix: str, elapsed: float, cells: tuple[int, int] | None, bar: dict[str, Any] | None,
                expected: float | None) -> str:
    """One line: what the experiment is doing and how long it has left.

    ``expected`` is the experiment's wall time in the last run of the same profile (the estimate of the time
    left); without it, the current bar's own rate estimates the time left of that step.
    """
    parts = [prefix, format_duration(elapsed)]
    if cells:
        parts.append(f"cell {cells[0]}/{cells[1]}")
    if bar and bar.get("time", 0) > time.time() - 120:  # a bar that stopped publishing has finished
        n, total, unit = bar.get("n") or 0, bar.get("total"), bar.get("unit") or "it"
        text = f"{bar.get('desc') or 'working'} {int(n)}" + (f"/{int(total)}" if total else "") + f" {unit}"
        if bar.get("postfix"):
            text += f" ({bar['postfix']})"
        if total and bar.get("rate"):
            text += f", ~{format_duration((total - n) / bar['rate'])} left of it"
        parts.append(text)
    if expected:
        left = expected - elapsed
        parts.append(f"~{format_duration(left)} left (last run {format_duration(expected)})" if left > 0
                     else f"past the last run's {format_duration(expected)}")
    return " · ".join(parts)


class StudyMonitor:
    """While one experiment executes, print what it is doing, from the notebook papermill saves after each cell
    and the progress file the kernel's bars publish to.

    On a terminal the line is rewritten in place every ``every`` seconds; in a log (not a tty) a new line is
    printed when the status changed and at least ``log_every`` seconds passed.
    """

    def __init__(self, prefix: str, notebook: Path, progress_file: Path, expected: float | None = None,
                 every: float = 2.0, log_every: float = 60.0, stream=None,
                 clock: Callable[[], float] = time.perf_counter, enabled: bool = True):
        self.enabled = enabled
        self.prefix, self.notebook, self.progress_file, self.expected = prefix, notebook, progress_file, expected
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every, self.log_every, self.clock = every, log_every, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = clock()
        self._last_line, self._last_print = "", 0.0

    def line(self) -> str:
        return status_line(self.prefix, self.clock() - self._t0, _cells_done(self.notebook),
                           read_progress(self.progress_file), self.expected)

    def _tick(self) -> None:
        text = self.line()
        now = self.clock()
        if self.tty:
            width = 160
            self.stream.write("\r" + text[:width].ljust(min(width, max(len(self._last_line), len(text)))))
            self.stream.flush()
        elif text.split(" · ", 2)[2:] != self._last_line.split(" · ", 2)[2:] and now - self._last_print >= self.log_every:
            print(text, file=self.stream, flush=True)
            self._last_print = now
        self._last_line = text

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._tick()

    def __enter__(self) -> "StudyMonitor":
        self._t0 = self._last_print = self.clock()
        if not self.enabled:
            return self
        self._thread = threading.Thread(target=self._run, name="study-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.tty and self._last_line:
            self.stream.write("\r" + " " * min(160, len(self._last_line)) + "\r")
            self.stream.flush()


__all__ = ["tqdm", "visible", "publish", "read_progress", "format_duration", "status_line", "StudyMonitor",
           "PROGRESS_FILE_ENV"]
