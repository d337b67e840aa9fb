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

