"""Tests for the `jann` command line (jann/cli.py), run in-process except one subprocess."""

import re
import subprocess
import sys

import numpy as np

from jann.cli import main


def _value(out: str, key: str) -> str:
    match = re.search(rf"^{re.escape(key)}:\s+(.*)$", out, re.MULTILINE)
    assert match, f"no {key!r} line in:\n{out}"
    return match.group(1)


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "info" in out


def test_version(capsys):
    import jann

    assert main(["--version"]) == 0
    assert jann.__version__ in capsys.readouterr().out


def test_demo_embedded_flat_is_exact(capsys):
    assert main(["demo", "--queries", "200"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist" in _value(out, "dataset")
    assert _value(out, "queries").startswith("200 of 1000 x 196")
    assert float(_value(out, "recall@10")) == 1.0
    assert "results equal exact search: yes" in out
    for key in ("build time", "compile time", "search time", "QPS"):
        _value(out, key)


def test_demo_npy_file_without_queries_holds_out_base_rows(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "vectors.npy"
    np.save(path, rng.integers(0, 256, (1500, 12)).astype(np.uint8))
    assert main(["demo", "--dataset", str(path), "--k", "5", "--metric", "ip"]) == 0
    out = capsys.readouterr().out
    assert _value(out, "base").startswith("750 x 12")
    assert _value(out, "queries").startswith("750 of 750 x 12")
    assert float(_value(out, "recall@5")) == 1.0
    assert "results equal exact search: yes" in out


def test_unknown_factory_string_is_a_clean_error(capsys):
    assert main(["demo", "--index", "NoSuchIndex", "--queries", "10"]) == 2
    captured = capsys.readouterr()
    assert "NoSuchIndex" in captured.err
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_missing_dataset_is_a_clean_error(capsys):
    assert main(["demo", "--dataset", "/nonexistent"]) == 2
    captured = capsys.readouterr()
    assert "/nonexistent" in captured.err
    assert "Traceback" not in captured.err


def test_bad_search_param_is_a_clean_error(capsys):
    assert main(["demo", "--param", "nprobe"]) == 2
    assert "name=value" in capsys.readouterr().err


def test_info(capsys):
    import jax

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert _value(out, "jax") == jax.__version__
    assert _value(out, "backend") == jax.default_backend()
    assert _value(out, "x64 enabled") in ("yes", "no")


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "jann", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout
