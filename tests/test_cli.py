"""The command line reports bad input as one line ``cytoclip <verb>: error: ...`` (exit 2); --debug shows the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from cytoclip import cli


def _cytoclip(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "cytoclip", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------ real verbs


def test_bad_training_parameter_is_one_line_without_traceback(tmp_path):
    res = _cytoclip("train", "--dataset", str(tmp_path), "--batch-size", "0", "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert _lines(res.stderr) == [
        "cytoclip train: error: TrainConfig.batch_size: expected an integer >= 2 (a contrastive batch needs "
        "negatives), got 0"]


def test_debug_flag_and_environment_show_the_traceback(tmp_path):
    args = ("train", "--dataset", str(tmp_path), "--batch-size", "0", "--run-dir", str(tmp_path / "run"))
    for res in (_cytoclip("--debug", *args), _cytoclip(*args, "--debug"), _cytoclip(*args, env={cli.DEBUG_ENV: "1"})):
        assert res.returncode == 2, res.stderr
        assert "Traceback (most recent call last)" in res.stderr
        assert "ValueError: TrainConfig.batch_size" in res.stderr
        assert _lines(res.stderr)[-1].startswith("cytoclip train: error: TrainConfig.batch_size")


def test_unknown_field_in_a_config_file_names_the_file_and_field(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("epoch: 3\n")
    res = _cytoclip("train", "--config", str(config), "--dataset", str(tmp_path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = _lines(res.stderr)
    assert line.startswith(f"cytoclip train: error: {config}: unknown training option(s) ['epoch']")
    assert "'epochs'" in line


def test_prepare_with_a_missing_atlas_root_is_one_line(tmp_path):
    missing = tmp_path / "no-atlas"
    res = _cytoclip("prepare", "regions", "--atlas", str(missing), "--output-dir", str(tmp_path / "out"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert _lines(res.stderr) == [f"cytoclip prepare regions: error: {missing}: atlas root not found (expected a "
                                  "directory with ontology/ and data2d/)"]


# ------------------------------------------------------------------------------------------ the handler


@pytest.fixture()
def fake_verb(monkeypatch):
    """A verb ``fake KIND`` whose function raises the exception named by KIND."""
    from cytoclip.atlas import AtlasError
    from cytoclip.models import ModelSpecError

    raising = {
        "value": lambda: (_ for _ in ()).throw(ValueError("config.yaml: field 'lr': expected a number")),
        "key": lambda: {}["label"],
        "atlas": lambda: (_ for _ in ()).throw(AtlasError("/a: atlas root not found")),
        "spec": lambda: (_ for _ in ()).throw(ModelSpecError("unknown model spec 'x'")),
        "missing": lambda: open("/nonexistent/cytoclip-file.yaml"),
        "bug": lambda: (_ for _ in ()).throw(RuntimeError("internal invariant broken")),
    }

    def configure_parser(parser):
        parser.add_argument("kind", choices=sorted(raising))
        parser.set_defaults(func=lambda args: raising[args.kind]())

    module = types.ModuleType("cytoclip_fake_verb")
    module.configure_parser = configure_parser
    monkeypatch.setitem(sys.modules, "cytoclip_fake_verb", module)
    monkeypatch.setitem(cli.VERBS, "fake", ("cytoclip_fake_verb", "raises"))
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)


@pytest.mark.parametrize("kind, message", [
    ("value", "config.yaml: field 'lr': expected a number"),
    ("key", "label"),  # unquoted, unlike str(KeyError)
    ("atlas", "/a: atlas root not found"),
    ("spec", "unknown model spec 'x'"),
    ("missing", "[Errno 2] No such file or directory: '/nonexistent/cytoclip-file.yaml'"),
])
def test_input_errors_exit_2_with_the_message(fake_verb, capsys, kind, message):
    assert cli.main(["fake", kind]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert _lines(err)[0] == f"cytoclip fake: error: {message}"


def test_errors_raised_outside_cytoclip_point_to_debug(fake_verb, capsys):
    # the fake verb is not cytoclip's code: a library's message may need the traceback, so say how to get it
    assert cli.main(["fake", "value"]) == 2
    hint = _lines(capsys.readouterr().err)[1]
    assert "ValueError raised in" in hint and "--debug" in hint


def test_debug_prints_the_traceback_before_the_line(fake_verb, capsys):
    assert cli.main(["--debug", "fake", "atlas"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)")
    assert _lines(err)[-1] == "cytoclip fake: error: /a: atlas root not found"


def test_a_bug_keeps_its_traceback(fake_verb):
    with pytest.raises(RuntimeError, match="internal invariant broken"):
        cli.main(["fake", "bug"])


def test_split_debug_stops_at_double_dash():
    assert cli._split_debug(["train", "--debug", "--lr", "1"]) == (["train", "--lr", "1"], True)
    assert cli._split_debug(["study", "--", "--debug"]) == (["study", "--", "--debug"], False)
