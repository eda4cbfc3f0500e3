"""`leadkiln import-leads`, `train` and `score` as a user runs them, on an SQLite data dir."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_cli import run_cli
from tests.integration.test_scoring import crm_export


def _env(tmp_path: Path) -> dict[str, str]:
    return {"DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'lk.db'}"}


def test_a_misspelt_outcome_is_one_line_listing_the_columns(tmp_path: Path) -> None:
    path = crm_export(tmp_path / "crm.csv", rows=20)
    result = run_cli("import-leads", str(path), "--outcome", "Convertd", env=_env(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line
    assert "--outcome 'Convertd': no such column. Did you mean 'Converted'?" in line and "Email, Visits, Plan" in line


def test_training_with_no_labels_says_so_and_fails(tmp_path: Path) -> None:
    result = run_cli("train", env=_env(tmp_path))
    assert result.returncode == 1
    assert "no model trained" in result.stdout and "scoring stays on rules" in result.stdout


def test_import_train_json_and_score(tmp_path: Path) -> None:
    path = crm_export(tmp_path / "crm.csv", rows=300)
    imported = run_cli("import-leads", str(path), "--outcome", "Converted", "--email", "Email",
                       "--exclude", "Notes after call", "--topic", "Consulting", env=_env(tmp_path))
    assert imported.returncode == 0, imported.stderr
    assert "read 300 rows (utf-8, delimiter ','): 300 leads created" in imported.stdout
    assert "Notes after call: excluded as asked" in imported.stdout

    trained = run_cli("train", "--json", env=_env(tmp_path), timeout=180)
    assert trained.returncode == 0, trained.stderr
    report = json.loads(trained.stdout)
    assert report["trained"] and report["promoted"] and report["labels"] == 300
    assert report["metrics"]["cv"]["lightgbm"]["roc_auc"] > 0.5 and "logistic" in report["metrics"]["cv"]

    scored = run_cli("score", "--top", "3", env=_env(tmp_path), timeout=120)
    assert scored.returncode == 0, scored.stderr
    assert f"model {report['version']}" in scored.stdout
    assert "Consulting:" in scored.stdout
    assert scored.stdout.count("@example.com") == 3, "the top three mailable leads of the topic"


def test_a_1_gb_export_is_streamed_not_loaded_whole(tmp_path: Path) -> None:
    import resource

    # 1,100 rows of 0.95 MB each: a gigabyte on disk, written in a second or two.
    path = tmp_path / "huge.csv"
    notes = "n" * 950_000
    with open(path, "w") as handle:
        handle.write("Email,Notes,Visits,Converted\n")
        for i in range(1100):
            handle.write(f"big{i}@example.com,{notes},{i % 9},{'Yes' if i % 3 == 0 else 'No'}\n")
    assert path.stat().st_size > 1_000_000_000
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = run_cli("import-leads", str(path), "--outcome", "Converted", "--email", "Email", env=_env(tmp_path),
                     timeout=600)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    path.unlink()
    assert result.returncode == 0, result.stderr
    assert "read 1100 rows" in result.stdout and "1100 leads created" in result.stdout
    # The largest child so far, this import included: far below the file's size.
    assert max(before, peak_kib) < 500 * 1024, f"peak RSS {peak_kib} KiB"
