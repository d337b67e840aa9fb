"""Progress bars: silent under the study runner's TQDM_DISABLE, also where tqdm.auto would pick the widget."""

from __future__ import annotations

import os
import subprocess
import sys


def _run(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    if env_value is not None:
        env["TQDM_DISABLE"] = env_value
    code = ("from cytoclip.progress import tqdm; b = tqdm(total=3); "
            "print(type(b).__module__, b.disable)")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_tqdm_disable_is_honoured():
    assert _run("1") == "tqdm.std True"
    module, disabled = _run(None).split()
    assert module.startswith("tqdm") and disabled == "False"


def test_enabled_false_hides_a_bar_and_env_is_read_per_call(monkeypatch):
    from cytoclip.progress import tqdm

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert tqdm(total=1, enabled=False).disable
    monkeypatch.setenv("TQDM_DISABLE", "1")
    bar = tqdm(total=1)
    assert type(bar).__module__ == "tqdm.std" and bar.disable



def test_a_bar_in_an_executed_notebook_leaves_text_not_a_frozen_widget(tmp_path):
    """A bare papermill/nbclient run stores a widget bar frozen at 0 %; the bar is text, its final state."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os; os.environ.pop('TQDM_DISABLE', None)\n"
        "from cytoclip.progress import tqdm\n"
        "for _ in tqdm(range(5), desc='work', mininterval=0): pass")]
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    mimes = {m for o in outputs for m in o.get("data", {})}
    assert not any("widget" in m for m in mimes), mimes
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "work: 100%" in text and "5/5" in text


def test_hidden_bars_publish_their_state_to_the_progress_file(tmp_path, monkeypatch):
    """Under the study runner (TQDM_DISABLE=1) a bar still counts and publishes what it does."""
    from cytoclip import progress

    target = tmp_path / "progress.json"
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv(progress.PROGRESS_FILE_ENV, str(target))
    bar = progress.tqdm(total=10, desc="training run-a", unit="step")
    for _ in range(4):
        bar.update(1)
    bar.set_postfix(loss="3.210", epoch="2/10", refresh=False)
    bar.close()
    state = progress.read_progress(target)
    assert state["n"] == 4 and state["total"] == 10 and state["unit"] == "step"
    assert state["desc"] == "training run-a" and "loss=3.210" in state["postfix"]
    monkeypatch.delenv(progress.PROGRESS_FILE_ENV)
    assert progress.tqdm(total=1).disable  # without the file a hidden bar is a plain disabled bar


def test_status_line_says_cells_step_loss_and_time_left():
    import time as _time

    from cytoclip.progress import format_duration, status_line

    bar = {"desc": "training run-a", "n": 30, "total": 90, "unit": "step", "rate": 2.0,
           "postfix": "loss=3.210, epoch=2/10", "time": _time.time()}
    line = status_line("[4/13] train_clip224", 65.0, (7, 18), bar, expected=300.0)
    assert line.startswith("[4/13] train_clip224 · 1:05 · cell 7/18 · training run-a 30/90 step")
    assert "loss=3.210" in line and "~0:30 left of it" in line and "~3:55 left (last run 5:00)" in line
    stale = dict(bar, time=_time.time() - 600)
    assert "training" not in status_line("x", 1.0, None, stale, None)
    assert format_duration(3700) == "1:01:40" and format_duration(None) == "?"


def test_study_monitor_logs_status_lines_off_a_terminal(tmp_path):
    """Not a tty (a CI log, `make book > log`): a line when the status changed, no carriage returns."""
    import io
    import json

    from cytoclip.progress import StudyMonitor, publish

    nb = tmp_path / "running.ipynb"
    cells = [{"cell_type": "code", "metadata": {"papermill": {"status": s}}} for s in ("completed", "running")]
    nb.write_text(json.dumps({"cells": cells}))
    prog = tmp_path / "p.json"
    publish({"desc": "embedding", "n": 3, "total": 9, "unit": "batch", "postfix": "", "rate": None}, prog)
    out = io.StringIO()
    mon = StudyMonitor("[2/5] zero_shot", nb, prog, expected=None, every=0.05, log_every=0.0, stream=out)
    with mon:
        import time as _time

        _time.sleep(0.3)
        publish({"desc": "embedding", "n": 6, "total": 9, "unit": "batch", "postfix": "", "rate": None}, prog)
        _time.sleep(0.3)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines and all(ln.startswith("[2/5] zero_shot · ") for ln in lines)
    assert any("cell 1/2 · embedding 3/9 batch" in ln for ln in lines)
    assert any("embedding 6/9 batch" in ln for ln in lines)


def test_an_epoch_is_one_readable_line_not_a_dict():
    from cytoclip.train import epoch_line

    rec = {"kind": "epoch", "epoch": 3, "step": 21, "train_loss": 3.4369, "lr": 5e-4, "images_per_s": 33.2,
           "model_images_per_s": 34.0, "epoch_time_s": 13.88, "nonfinite_steps": 0, "data": "synthetic atlas",
           "val_accuracy": 0.25, "val_f1_weighted": 0.2131, "val_n": 480}
    line = epoch_line(rec, 10)
    assert line == "epoch 3/10 · loss 3.437 · val F1 0.213 (acc 0.250, 480 images) · 33 img/s · 13.9 s"
    assert "{" not in epoch_line({**rec, "nonfinite_steps": 2}, 10)
