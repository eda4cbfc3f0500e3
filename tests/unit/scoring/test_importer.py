"""scoring/importer.py: encodings, delimiters, outcome columns and column types of CRM exports."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from scoring.importer import ImportOptions, ImportProblem, profile, read_rows, typed_value


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_cp1251_with_semicolons_is_read_as_written(tmp_path: Path) -> None:
    text = "Имя;Город;Итог;Визиты\n" + "".join(f"Иван {i};Москва;{'да' if i % 3 else 'нет'};{i}\n" for i in range(40))
    path = _write(tmp_path / "crm.csv", text, "cp1251")
    result = profile(ImportOptions(path, outcome="Итог", positive="да"))
    assert result.encoding.replace("_", "").lower() in ("cp1251", "windows1251")
    assert result.delimiter == ";"
    assert result.columns["Город"].kind == "categorical" and result.columns["Визиты"].kind == "numeric"
    rows = [row for _, row in read_rows(path, result.encoding, result.delimiter)]
    assert rows[0]["Город"] == "Москва" and result.positive == "да"


def test_a_misspelt_outcome_column_names_the_columns_and_a_guess(tmp_path: Path) -> None:
    path = _write(tmp_path / "crm.csv", "email,Converted,Visits\na@x.org,1,3\n")
    with pytest.raises(ImportProblem) as info:
        profile(ImportOptions(path, outcome="Convertd"))
    message = str(info.value)
    assert "--outcome 'Convertd': no such column" in message
    assert "Did you mean 'Converted'?" in message and "email, Converted, Visits" in message


def test_an_outcome_with_many_values_needs_positive(tmp_path: Path) -> None:
    path = _write(tmp_path / "crm.csv", "Stage\nwon\nlost\nopen\nwon\n")
    with pytest.raises(ImportProblem, match=r"'Stage' has 3 values \('lost', 'open', 'won'\): say which one is the positive"):
        profile(ImportOptions(path, outcome="Stage"))
    assert profile(ImportOptions(path, outcome="Stage", positive="WON")).positive == "won"


def test_a_positive_value_that_never_occurs_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "crm.csv", "Stage\nwon\nlost\n")
    with pytest.raises(ImportProblem, match="--positive 'yes' never occurs in 'Stage'; its values are 'lost', 'won'"):
        profile(ImportOptions(path, outcome="Stage", positive="yes"))


@pytest.mark.parametrize("values, positive", [(("0", "1"), "1"), (("FALSE", "TRUE"), "TRUE"), (("No", "Yes"), "Yes")])
def test_yes_no_outcomes_need_no_help(tmp_path: Path, values: tuple[str, str], positive: str) -> None:
    path = _write(tmp_path / "crm.csv", "Outcome\n" + "\n".join(values * 3) + "\n")
    assert profile(ImportOptions(path, outcome="Outcome")).positive == positive


def test_one_class_only_is_a_clear_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "crm.csv", "Converted,x\n1,a\n1,b\n")
    with pytest.raises(ImportProblem, match="single value '1' on every row: a model needs both outcomes"):
        profile(ImportOptions(path, outcome="Converted"))


def test_empty_columns_and_non_finite_numbers_are_noted(tmp_path: Path) -> None:
    path = _write(tmp_path / "crm.csv", "y,blank,score\n1,,1.5\n0,,NaN\n1,,inf\n0,,-2\n")
    result = profile(ImportOptions(path, outcome="y"))
    assert "blank: always empty, skipped" in result.notes
    assert "score: 2 NaN or infinite values stored as missing" in result.notes
    score = result.columns["score"]
    assert score.kind == "numeric"
    assert [typed_value(score, v) for v in ("1.5", "NaN", "inf", "", "-2")] == [1.5, None, None, None, -2.0]
    assert [c.name for c in result.attribute_columns(ImportOptions(path, outcome="y"))] == ["score"]


def test_a_column_with_50000_distinct_values_costs_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with open(path, "w") as handle:
        handle.write("id,city,y\n")
        for i in range(50_000):
            handle.write(f"{i},city-{i},{i % 2}\n")
    result = profile(ImportOptions(path, outcome="y"))
    assert result.columns["city"].many and result.columns["city"].distinct == set()
    assert result.rows == 50_000


def test_the_file_is_streamed_not_loaded_whole(tmp_path: Path) -> None:
    # About 40 MB on disk; reading it must not hold it in memory.
    path = tmp_path / "large.csv"
    line = "a@example.org," + "x" * 380 + ",1\n"
    with open(path, "w") as handle:
        handle.write("email,notes,y\n")
        handle.write(line * 50_000)
        handle.write("b@example.org,short,0\n" * 1000)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        result = profile(ImportOptions(path, outcome="y", email_column="email"))
        rows = sum(1 for _ in read_rows(path, result.encoding, result.delimiter))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == 51_000
    assert peak < size / 10, f"peak {peak} bytes for a {size}-byte file"


def test_unknown_flags_columns_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "crm.csv", "mail,y\na@x.org,1\n")
    with pytest.raises(ImportProblem, match="--email 'email': no such column. Did you mean 'mail'"):
        profile(ImportOptions(path, outcome="y", email_column="email"))
    with pytest.raises(ImportProblem, match="--exclude 'Tags': no such column"):
        profile(ImportOptions(path, outcome="y", exclude=("Tags",)))


@pytest.mark.parametrize("content, problem", [(b"", "is empty"), (b"a,b,y\n", "has a header but no rows")])
def test_empty_files_are_refused(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "crm.csv"
    path.write_bytes(content)
    with pytest.raises(ImportProblem, match=problem):
        profile(ImportOptions(path, outcome="y"))


def test_a_cell_over_the_size_limit_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "crm.csv", "notes,y\nshort,1\n" + "x" * (2 * 1024 * 1024) + ",0\n")
    with pytest.raises(ImportProblem, match=r"crm.csv, line 3: field larger than field limit"):
        profile(ImportOptions(path, outcome="y"))
