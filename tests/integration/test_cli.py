"""The `nominal` command line as a user drives it: a persistent embedded store across commands,
`--json` for scripts, one-line errors (exit 1) for a user's mistakes and no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.cli.main import main

pytestmark = pytest.mark.slow


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "nominal-data"


def run(capsys: pytest.CaptureFixture[str], data_dir: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--data", str(data_dir), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys, data_dir: Path, *args: str):
    code, out, err = run(capsys, data_dir, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_index_calibrate_inspect_across_separate_commands(capsys, data_dir: Path, hazelnut: Path) -> None:
    indexed = run_json(capsys, data_dir, "index", "line-3", str(hazelnut / "train" / "good"))
    assert indexed["indexed"] == 28 and indexed["count"] == 28 and indexed["skipped"] == []

    uncalibrated = run_json(capsys, data_dir, "inspect", "line-3", str(hazelnut / "test" / "colour" / "00.jpg"))
    assert uncalibrated["results"][0]["verdict"] == "UNCALIBRATED"

    calibration = run_json(
        capsys, data_dir, "calibrate", "line-3",
        "--pass", str(hazelnut / "test" / "good"), "--fail", str(hazelnut / "test" / "colour"),
    )
    assert calibration["policy"] == "f1" and calibration["roc_auc"] > 0.9 and calibration["n_fail"] == 17
    assert calibration["active"] is True

    results = run_json(
        capsys, data_dir, "inspect", "line-3", str(hazelnut / "test" / "good" / "04.jpg"),
        str(hazelnut / "test" / "colour" / "00.jpg"),
    )["results"]
    assert [r["verdict"] for r in results] == ["PASS", "FAIL"]
    assert all(r["threshold"] == calibration["threshold"] for r in results)
    assert results[1]["score"] > results[0]["score"]
    assert len(results[0]["neighbors"]) == 1 and results[0]["neighbors"][0]["payload"]["source"].endswith(".jpg")

    listed = run_json(capsys, data_dir, "settings")["settings"]
    assert [(s["name"], s["images"], s["calibration"]["id"]) for s in listed] == [
        ("line-3", 28, calibration["id"])
    ]

    compared = run_json(
        capsys, data_dir, "calibrate", "line-3", "--compare",
        "--pass", str(hazelnut / "test" / "good"), "--fail", str(hazelnut / "test" / "colour"),
    )
    found = compared["comparison"]
    # A setting made by `index` scores fused, the default: its candidates are its parts' scorers and itself.
    assert found["current"] == "fused" and found["n_pass"] == 6 and found["n_fail"] == 17 and found["folds"] == 5
    assert {r["name"] for r in found["results"]} == {
        "fused", "global k=1", "global k=3", "global k=5", "patch", "patch top-3 mean", "patch top-10 mean"}
    assert found["winner"] == found["results"][0]["name"]
    # The threshold stays the current scorer's: the same as the plain calibration's.
    assert compared["threshold"] == calibration["threshold"]


def test_settings_set_configures_a_patch_setting_and_says_when_a_re_index_is_needed(
    capsys, data_dir: Path, hazelnut: Path
) -> None:
    made = run_json(capsys, data_dir, "settings", "set", "line-4", "--scoring", "patch", "--description", "line 4")
    assert (made["scoring"], made["tiling"], made["description"], made["images"]) == ("patch", "auto", "line 4", 0)
    run_json(capsys, data_dir, "index", "line-4", str(hazelnut / "train" / "good"))
    shown = run_json(capsys, data_dir, "settings", "show", "line-4")
    assert shown["reindex_note"] is None and shown["images"] == 28
    # The bank was cut by `auto`; asking for tiles everywhere takes a re-index, and the setting says so.
    changed = run_json(capsys, data_dir, "settings", "set", "line-4", "--tiling", "on")
    assert changed["tiling"] == "on" and "re-index to apply it" in changed["reindex_note"]
    code, out, _ = run(capsys, data_dir, "settings", "show", "line-4")
    assert code == 0 and "re-index needed:" in out and "nominal reindex line-4" in out
    code, _, err = run(capsys, data_dir, "settings", "set", "line-4", "--k", "0")
    assert code == 1 and err.strip() == "error: k must be at least 1, got 0"
    # A setting indexed while it scored globally has no patch bank to score by patches with.
    run_json(capsys, data_dir, "settings", "set", "line-5", "--scoring", "global")
    run_json(capsys, data_dir, "index", "line-5", str(hazelnut / "train" / "good"))
    switched = run_json(capsys, data_dir, "settings", "set", "line-5", "--scoring", "patch")
    assert "no patch bank" in switched["reindex_note"]


def test_the_cli_speaks_the_apis_json(capsys, data_dir: Path, hazelnut: Path, tmp_path: Path) -> None:
    """Scripts move between `--json` and HTTP without renaming a field."""
    from fastapi.testclient import TestClient

    from app.api.main import create_app
    from app.config import Config

    run_json(capsys, data_dir, "index", "line-3", str(hazelnut / "train" / "good"))
    run_json(capsys, data_dir, "calibrate", "line-3", "--fail", str(hazelnut / "test" / "colour"))
    image = hazelnut / "test" / "colour" / "00.jpg"
    cli_setting = run_json(capsys, data_dir, "settings")["settings"][0]
    cli_verdict = run_json(capsys, data_dir, "inspect", "line-3", str(image))["results"][0]
    with TestClient(create_app(Config(NOMINAL_DATA=data_dir))) as client:
        api_setting = client.get("/v1/settings/line-3").json()
        api_verdict = client.post("/v1/settings/line-3/inspect", files=[("files", (str(image), image.read_bytes()))]).json()
    assert cli_setting == api_setting
    assert set(cli_verdict) == set(api_verdict["results"][0])
    assert {k: v for k, v in cli_verdict.items() if k != "elapsed_ms"} == {
        k: v for k, v in api_verdict["results"][0].items() if k != "elapsed_ms"}


def test_a_calibration_that_cannot_be_made_or_should_not_go_live_says_so(capsys, data_dir: Path, hazelnut: Path) -> None:
    run_json(capsys, data_dir, "index", "line-3", str(hazelnut / "train" / "good"))
    code, out, err = run(capsys, data_dir, "calibrate", "line-3", "--policy", "recall>=2")
    assert code == 1 and err.startswith("error: --policy:") and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, data_dir, "calibrate", "line-3", "--policy", "precision>=0.99")
    assert code == 1 and "quantile:ALPHA" in err and "--policy" in err
    assert run_json(capsys, data_dir, "settings")["settings"][0]["calibration"] is None

    live = run_json(capsys, data_dir, "calibrate", "line-3", "--policy", "quantile:0.05")
    swapped = run_json(capsys, data_dir, "calibrate", "line-3", "--pass", str(hazelnut / "test" / "colour"),
                       "--fail", str(hazelnut / "test" / "good"))
    assert swapped["active"] is False and "PASS images" in swapped["held_back"]
    listed = run_json(capsys, data_dir, "calibrations", "line-3")["calibrations"]
    assert [(c["id"], c["active"]) for c in listed] == [(swapped["id"], False), (live["id"], True)]
    activated = run_json(capsys, data_dir, "calibrations", "line-3", swapped["id"], "--activate")
    assert activated["replaced"]["id"] == live["id"]
    assert run_json(capsys, data_dir, "settings")["settings"][0]["calibration"]["id"] == swapped["id"]


def test_inspect_judges_every_readable_file_and_exits_1_for_the_rest(
    capsys, data_dir: Path, hazelnut: Path, bad_images: dict[str, Path]
) -> None:
    run_json(capsys, data_dir, "index", "line-3", str(hazelnut / "train" / "good"))
    good = hazelnut / "test" / "good"
    code, out, err = run(capsys, data_dir, "inspect", "line-3", str(good / "04.jpg"), str(bad_images["truncated"]),
                         str(good / "05.jpg"), "--json")
    assert code == 1
    assert [Path(r["source"]).name for r in json.loads(out)["results"]] == ["04.jpg", "05.jpg"]
    assert "truncated.jpg" in err and "not judged" in err


def test_tables_do_not_wrap_when_piped(capsys, data_dir: Path, hazelnut: Path) -> None:
    run_json(capsys, data_dir, "index", "a-rather-long-machine-setting-name", str(hazelnut / "train" / "good"))
    code, out, _ = run(capsys, data_dir, "settings")
    row = next(line for line in out.splitlines() if "a-rather-long-machine-setting-name" in line)
    assert "efficientnet_lite0" in row and len(row) > 80


def test_human_output_is_a_table_and_help_teaches(capsys, data_dir: Path, hazelnut: Path) -> None:
    code, out, _ = run(capsys, data_dir, "index", "line-3", str(hazelnut / "train" / "good"))
    assert code == 0 and "28 of 28 images indexed into 'line-3'" in out
    code, out, _ = run(capsys, data_dir, "inspect", "line-3", str(hazelnut / "test" / "good" / "04.jpg"))
    assert code == 0 and "UNCALIBRATED" in out and "04.jpg" in out
    for command in ("index", "calibrate", "inspect", "evaluate"):
        assert main([command, "--help"]) == 0
        assert "Example" in capsys.readouterr().out


def test_a_bad_image_is_one_line_on_stderr_and_nothing_is_written(
    capsys, data_dir: Path, hazelnut: Path, bad_images: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(hazelnut / "train" / "good", folder)
    shutil.copy(bad_images["truncated"], folder / "zz-truncated.jpg")
    code, out, err = run(capsys, data_dir, "index", "line-3", str(folder))
    assert code == 1 and out == ""
    assert "zz-truncated.jpg" in err and "nothing was indexed" in err and "Traceback" not in err
    assert err.count("zz-truncated.jpg") == 1 and "--skip-bad" in err
    code, out, err = run(capsys, data_dir, "settings", "--json")
    assert code == 0 and json.loads(out) == {"settings": []}

    code, _, err = run(capsys, data_dir, "index", "line-3", str(folder), "--skip-bad", "--json")
    assert code == 0 and "skipped" in err and "zz-truncated.jpg" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "nowhere", "{hazelnut}/test/good/04.jpg"], "unknown machine setting 'nowhere'"),
        (["index", "line-3", "{empty}"], "no image files"),
        (["index", "line-3", "{hazelnut}/does-not-exist"], "does not exist"),
        (["--backbone", "resnet5000", "index", "line-3", "{hazelnut}/train/good"], "unknown backbone 'resnet5000'"),
        (["index", "bad name!", "{hazelnut}/train/good"], "machine setting name 'bad name!' is not valid"),
        (["calibrate", "nowhere", "--policy", "quantile"], "unknown machine setting"),
        (["settings", "delete", "nowhere"], "unknown machine setting 'nowhere'"),
        (["rollback", "nowhere"], "unknown machine setting 'nowhere'"),
    ],
)
def test_user_mistakes_name_what_to_fix(capsys, data_dir: Path, hazelnut: Path, tmp_path: Path, args, message) -> None:
    (tmp_path / "empty").mkdir()
    argv = [a.format(hazelnut=hazelnut, empty=tmp_path / "empty") for a in args]
    code, out, err = run(capsys, data_dir, *argv)
    assert code == 1 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_evaluate_writes_a_report_without_touching_the_store(capsys, data_dir: Path, hazelnut: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    result = run_json(capsys, data_dir, "evaluate", str(hazelnut), "--layout", "mvtec", "--out", str(report))
    metrics = result["metrics"]
    assert metrics["n_pass"] == 6 and metrics["n_fail"] == 17 and metrics["roc_auc"] > 0.95
    written = {p.name for p in report.iterdir()}
    assert {"metrics.json", "report.md", "pr_curve.png", "roc_curve.png", "confusion_matrix.png"} <= written
    assert json.loads((report / "metrics.json").read_text())["metrics"]["roc_auc"] == metrics["roc_auc"]
    assert not data_dir.exists() or run_json(capsys, data_dir, "settings") == {"settings": []}
    markdown = (report / "report.md").read_text()
    assert "In-sample threshold" in markdown
    thumbnails = sorted((report / "thumbnails").glob("*.png"))
    assert thumbnails and all(f"thumbnails/{p.name}" in markdown for p in thumbnails)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{file}"], "--out:"),
        (["--out", "{report}", "--policy", "recall>=2"], "--policy:"),
        (["--out", "{report}", "--subset", "poly"], "--subset is for --layout elpv only"),
    ],
)
def test_evaluate_refuses_bad_arguments_before_any_work(capsys, data_dir: Path, hazelnut: Path, tmp_path: Path,
                                                        args, message) -> None:
    file = tmp_path / "README.md"
    file.write_text("mine")
    argv = [a.format(file=file, report=tmp_path / "report") for a in args]
    code, _, err = run(capsys, data_dir, "evaluate", str(hazelnut), "--layout", "mvtec", *argv)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert file.read_text() == "mine" and not (tmp_path / "report").exists()


def test_usage_errors_exit_2_with_usage_and_no_traceback(capsys) -> None:
    for argv in (["no-such-command"], ["index"], ["inspect", "line-3", "x.png", "--k", "0"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Usage:" in err and "Traceback" not in err


def test_serve_and_demo_stop_before_any_work_when_their_port_is_taken(capsys, data_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for command in (["serve", "--port", port], ["demo", "--port", port]):
            code, out, err = run(capsys, data_dir, *command)
            assert code == 1 and f"port {port} on 127.0.0.1 is already in use" in err, (command, err)
            assert "Traceback" not in err and "Web page" not in out
    assert not data_dir.exists(), "the demo built nothing: it stopped before making its setting"
