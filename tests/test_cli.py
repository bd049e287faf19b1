"""The ssl4eos12 command where users make mistakes: one line saying what to do, a non-zero exit, no traceback
(unless --debug); names checked up front; summaries; help for every argument; --on-bad-file skip."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest

from ssl4eos12 import SSL4EOS12BadFileWarning, cli
from ssl4eos12.publish.manifest import MANIFEST_FILE
from ssl4eos12.synth import synthesize

FIRST = "ssl4eos12_train_seasonal_data_000001.zarr.zip"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("small"), files=2, samples=2, size=8, modalities=("S2RGB", "S1GRD"))


def run(argv, capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``ssl4eos12 ARGV``."""
    try:
        cli.main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(err: str, *parts: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert ";" in lines[0], "the line says what to do"
    return lines[0]


def test_missing_data_dir(tmp_path, capsys):
    code, _, err = run(["convert", tmp_path / "nowhere", tmp_path / "out"], capsys)
    assert code == 1
    assert_one_line_error(err, "DATA_DIR", "nowhere", "no such folder")
    code, _, err = run(["verify", tmp_path / "nowhere", tmp_path / "out"], capsys)
    assert code == 1
    assert_one_line_error(err, "OUT_DIR", "not a converted folder", "convert")


def test_unknown_config_split_and_modality_listed_up_front(small, tmp_path, capsys):
    code, _, err = run(["convert", small, tmp_path / "out", "--configs", "S2L2A"], capsys)
    assert code == 1
    assert_one_line_error(err, "--configs", "S2L2A", "choose from S1GRD, S2RGB, default")
    assert not (tmp_path / "out").exists(), "checked before anything is written"
    only_train = synthesize(tmp_path / "train-only", splits=("train",), files=1, samples=2, size=8,
                            modalities=("S2RGB",))
    code, _, err = run(["convert", only_train, tmp_path / "out", "--splits", "validation"], capsys)
    assert code == 1
    assert_one_line_error(err, "--splits", "validation", "choose from train")
    code, _, err = run(["synth", tmp_path / "x", "--modalities", "S3OLCI"], capsys)
    assert code == 1
    assert_one_line_error(err, "--modalities", "S3OLCI", "S2L2A")
    code, _, err = run(["convert", small, tmp_path / "out", "--workers", "0"], capsys)
    assert code == 1
    assert_one_line_error(err, "--workers")


def test_truncated_file_one_line_then_debug_traceback(small, tmp_path, capsys):
    data = Path(shutil.copytree(small, tmp_path / "data"))
    bad = data / "train" / "S1GRD" / FIRST
    bad.write_bytes(bad.read_bytes()[:3000])
    code, _, err = run(["convert", data, tmp_path / "out", "--configs", "S1GRD", "--workers", "1"], capsys)
    assert code == 1
    assert_one_line_error(err, str(bad), "truncated or corrupt", "--on-bad-file skip")
    with pytest.raises(Exception, match="truncated or corrupt"):
        cli.main(["convert", str(data), str(tmp_path / "out"), "--configs", "S1GRD", "--workers", "1", "--debug"])


def test_convert_summary_rerun_and_verify_both_orders(small, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(["convert", small, out, "--workers", "1"], capsys)
    assert code == 0, err
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    shards = len(manifest["shards"])
    rows = sum(s["rows"] for s in manifest["shards"])
    assert f"{shards} shard(s) written, 0 already done; {shards} shard(s), {rows:,} rows" in stdout
    code, stdout, err = run(["convert", small, out, "--workers", "1"], capsys)
    assert code == 0 and f"0 shard(s) written, {shards} already done" in stdout
    assert "0shard" not in err and "already converted" in err

    code, stdout, err = run(["verify", small, out, "--workers", "1"], capsys)
    assert code == 0 and f"verified {shards} shard(s), {rows:,} rows" in stdout and "deprecated" not in err
    code, stdout, err = run(["verify", out, small, "--workers", "1"], capsys)  # the old order
    assert code == 0 and "all shards match" in stdout
    assert "deprecated" in err and f"verify {small} {out}" in err


def test_on_bad_file_skip_is_counted_listed_and_verified(small, tmp_path, capsys):
    data = Path(shutil.copytree(small, tmp_path / "data"))
    bad = data / "train" / "S1GRD" / FIRST
    bad.write_bytes(bad.read_bytes()[:3000])
    out = tmp_path / "out"
    with pytest.warns(SSL4EOS12BadFileWarning) as warned:
        code, stdout, err = run(["convert", data, out, "--configs", "S1GRD", "S2RGB", "--workers", "1",
                                 "--on-bad-file", "skip"], capsys)
    assert code == 0, err
    assert [str(w.message) for w in warned] == [(f"skipping {bad}: not a readable zip file, truncated or corrupt "
                                                 "(File is not a zip file)")]
    assert "left out 1 unreadable source file(s)" in err and FIRST in err
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    skipped = [(s["path"], entry["name"]) for s in manifest["shards"] for entry in s.get("skipped", ())]
    assert skipped == [("S1GRD/train-00000-of-00001.arrow", FIRST)]
    rows = {(s["config"], s["split"]): s["rows"] for s in manifest["shards"]}
    assert rows[("S1GRD", "train")] == 2 and rows[("S2RGB", "train")] == 4  # 2 samples per file
    card = (out / "README.md").read_text()
    assert "**Left out:** 1 source file(s)" in card and f"`{FIRST}`" in card and str(data) not in card
    code, stdout, err = run(["verify", data, out, "--workers", "1"], capsys)
    assert code == 0, err
    assert "1 source file(s) were left out at conversion" in stdout


def test_synth_shows_progress_and_summary(tmp_path, capsys):
    code, stdout, err = run(["synth", tmp_path / "d", "--files", "1", "--samples", "1", "--size", "4",
                             "--modalities", "S2RGB", "--splits", "train"], capsys)
    assert code == 0
    assert "Writing" in err and "1/1" in err
    assert "wrote 1 file(s) x 1 modalities x 1 split(s)" in stdout


def test_help_for_every_argument_and_no_markup(capsys):
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help and action.help is not argparse.SUPPRESS, f"{name} {action.dest}: no help"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text and "verify DATA_DIR OUT_DIR" in text


def test_convert_converts_by_default_what_its_help_says(tmp_path, capsys):
    """The tar release's NDVI, LULC and DEM are converted when named, not by default: the help says so."""
    from ssl4eos12.synth.webdataset import synthesize_webdataset

    root = synthesize_webdataset(tmp_path / "wds", splits=("validation",), files=1, samples=2, size=8,
                                 modalities=("S2RGB", "NDVI", "DEM"))
    help_text = next(a.help for a in cli.build_parser()._subparsers._group_actions[0].choices["convert"]._actions
                     if a.dest == "configs")
    assert "S1GRD, S2L1C, S2L2A and S2RGB" in help_text and "NDVI, LULC and DEM" in help_text
    code, _, err = run(["convert", root, tmp_path / "out", "--workers", "1"], capsys)
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert written == ["S2RGB", "default", "index"]
    code, _, err = run(["convert", root, tmp_path / "named", "--workers", "1", "--configs", "NDVI", "DEM"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "named").iterdir() if p.is_dir() and p.name[0] != ".") == ["DEM", "NDVI"]
