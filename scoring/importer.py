"""Reading a CRM export: encoding and delimiter detected, columns typed, outcome understood.

Pure and streaming: the file is read twice, row by row (once to learn its columns, once
to hand rows to the writer in `scoring.service.import_leads`), so a file of any size
uses the same memory.
"""

from __future__ import annotations

import csv
import difflib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAMPLE_BYTES = 256 * 1024
DISTINCT_CAP = 1000
"""Distinct values remembered per column while profiling: enough to tell a category from
free text, bounded so a 50,000-value column costs no more than a 10-value one."""
VALUE_MAX = 500
"""Longest text kept in a lead attribute; longer cells are cut."""
CATEGORY_MAX = 200
CELL_MAX = 2000
TRUE_WORDS = ("1", "true", "yes", "y", "won", "converted")
csv.field_size_limit(1024 * 1024)


class ImportProblem(Exception):
    """The file cannot be imported as asked; the message says why and what to do."""


@dataclass
class ImportOptions:
    path: Path
    outcome: str
    positive: str | None = None
    email_column: str | None = None
    id_column: str | None = None
    exclude: tuple[str, ...] = ()
    topic: str | None = None


@dataclass
class Column:
    """What the first pass learnt about a column."""

    name: str
    filled: int = 0
    numeric: int = 0
    not_finite: int = 0
    distinct: set[str] = field(default_factory=set)
    many: bool = False

    def see(self, value: str) -> None:
        if value == "":
            return
        self.filled += 1
        number = _float(value)
        if number is not None:
            self.numeric += 1
            if not math.isfinite(number):
                self.not_finite += 1
        if len(value) > CATEGORY_MAX:
            # Free text, not a category: never remembered (a 1 MB cell would be 1 MB here).
            self.many, self.distinct = True, set()
        if not self.many:
            self.distinct.add(value)
            if len(self.distinct) > DISTINCT_CAP:
                self.many, self.distinct = True, set()

    @property
    def kind(self) -> str:
        return "numeric" if self.filled and self.numeric == self.filled else "categorical"


@dataclass
class Profile:
    """The file's format and columns, and how its outcome column maps to labels."""

    encoding: str
    delimiter: str
    columns: dict[str, Column]
    rows: int
    positive: str | None
    outcome_values: list[str]
    notes: list[str]

    def attribute_columns(self, options: ImportOptions) -> list[Column]:
        skip = {options.outcome, options.email_column, options.id_column, *options.exclude}
        return [c for c in self.columns.values() if c.name not in skip and c.filled]


def _float(value: str) -> float | None:
    try:
        return float(value.replace(",", ".") if value.count(",") == 1 and "." not in value else value)
    except ValueError:
        return None


def detect_format(path: Path) -> tuple[str, str]:
    """The file's encoding and delimiter, from its first 256 KB."""
    with open(path, "rb") as handle:
        sample = handle.read(SAMPLE_BYTES)
    if not sample.strip():
        raise ImportProblem(f"{path.name} is empty")
    if sample.startswith(b"\xef\xbb\xbf"):
        encoding = "utf-8-sig"
    else:
        try:
            sample.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError as exc:
            # A cut in the middle of a character at the sample's end is still UTF-8.
            if exc.start >= len(sample) - 3:
                encoding = "utf-8"
            else:
                encoding = _legacy_encoding(sample)
    text = sample.decode(encoding, errors="ignore")
    first_lines = "\n".join(text.splitlines()[:50])
    try:
        delimiter = csv.Sniffer().sniff(first_lines, delimiters=",;\t|").delimiter
    except csv.Error:
        header = text.splitlines()[0] if text else ""
        delimiter = max(",;\t|", key=header.count)
    return encoding, delimiter


LEGACY_ENCODINGS = ("cp1252", "cp1251", "iso8859_15", "cp1250", "koi8_r")
"""The 8-bit encodings spreadsheets still export in; tried beside charset-normalizer's guess."""


def _legacy_encoding(sample: bytes) -> str:
    """The 8-bit encoding under which the sample reads as plausible words.

    Statistical detectors confuse close code pages on short samples (cp1251 against
    mac-cyrillic or cp1252); words decide better: one alphabet per word, and Latin words
    made mostly of accented letters are what a wrong code page produces.
    """
    from charset_normalizer import from_bytes

    guess = from_bytes(sample).best()
    candidates = list(LEGACY_ENCODINGS[:2]) + ([guess.encoding] if guess is not None else []) + list(LEGACY_ENCODINGS[2:])
    best, best_score = "latin-1", -1.0
    for encoding in candidates:
        try:
            text = sample.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
        score = _plausibility(text)
        if score > best_score + 1e-9:
            best, best_score = encoding, score
    return best


def _plausibility(text: str) -> float:
    """Share of the words with non-ASCII characters that look like real words."""
    import unicodedata

    words = [w for w in text.split() if any(ord(ch) > 127 for ch in w)]
    if not words:
        return 1.0
    good = 0
    for word in words:
        letters = [ch for ch in word if ch.isalpha()]
        if not letters:
            continue
        scripts = {unicodedata.name(ch, "?").split()[0] for ch in letters}
        if len(scripts) != 1:
            continue
        if scripts == {"LATIN"} and sum(ord(ch) > 127 for ch in letters) * 2 >= len(letters):
            continue
        good += 1
    return good / len(words)


def read_rows(path: Path, encoding: str, delimiter: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs, values stripped; the header's blank names dropped."""
    with open(path, encoding=encoding, errors="replace", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ImportProblem(f"{path.name} has no header row") from None
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                # A broken quote or a cell over the size limit: say where, rather than guess.
                raise ImportProblem(f"{path.name}, line {reader.line_num}: {exc}") from None
            if not any(v.strip() for v in values):
                continue
            # Cells are cut to what any use of them needs, so a batch of rows held for the
            # writer stays small however large the cells in the file are.
            yield reader.line_num, {name: (values[i][:CELL_MAX].strip() if i < len(values) else "")
                                    for i, name in enumerate(header) if name}


def header_of(path: Path, encoding: str, delimiter: str) -> list[str]:
    with open(path, encoding=encoding, errors="replace", newline="") as handle:
        try:
            return [h.strip() for h in next(csv.reader(handle, delimiter=delimiter)) if h.strip()]
        except StopIteration:
            raise ImportProblem(f"{path.name} has no header row") from None


def _require(column: str | None, flag: str, header: list[str]) -> None:
    if column is None or column in header:
        return
    close = difflib.get_close_matches(column, header, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ImportProblem(f"{flag} {column!r}: no such column.{hint} The columns are: {', '.join(header)}")


def profile(options: ImportOptions) -> Profile:
    """Read the file once: its format, its columns' types, and the outcome's values."""
    if not options.path.is_file():
        raise ImportProblem(f"{options.path}: no such file")
    encoding, delimiter = detect_format(options.path)
    header = header_of(options.path, encoding, delimiter)
    _require(options.outcome, "--outcome", header)
    _require(options.email_column, "--email", header)
    _require(options.id_column, "--id", header)
    for name in options.exclude:
        _require(name, "--exclude", header)
    columns = {name: Column(name) for name in header}
    outcome_values: dict[str, int] = {}
    rows = 0
    for _, row in read_rows(options.path, encoding, delimiter):
        rows += 1
        for name, value in row.items():
            columns[name].see(value)
        value = row.get(options.outcome, "")
        if value and (value in outcome_values or len(outcome_values) < 50):
            outcome_values[value] = outcome_values.get(value, 0) + 1
    if rows == 0:
        raise ImportProblem(f"{options.path.name} has a header but no rows")
    notes = []
    for column in columns.values():
        if column.name in options.exclude:
            notes.append(f"{column.name}: excluded as asked (never stored, never a feature)")
        elif not column.filled:
            notes.append(f"{column.name}: always empty, skipped")
        elif column.kind == "numeric" and column.not_finite:
            notes.append(f"{column.name}: {column.not_finite} NaN or infinite values stored as missing")
    positive = outcome_label(options.outcome, outcome_values, options.positive)
    return Profile(encoding, delimiter, columns, rows, positive, sorted(outcome_values), notes)


def outcome_label(column: str, values: dict[str, int], positive: str | None) -> str:
    """Which outcome value means success, from --positive or from an unmistakable pair."""
    shown = ", ".join(repr(v) for v in sorted(values)[:10]) + (" …" if len(values) > 10 else "")
    if not values:
        raise ImportProblem(f"--outcome {column!r} is empty on every row: there is nothing to learn from")
    if positive is not None:
        for value in values:
            if value.lower() == positive.lower():
                return value
        raise ImportProblem(f"--positive {positive!r} never occurs in {column!r}; its values are {shown}")
    if len(values) > 2:
        raise ImportProblem(f"{column!r} has {len(values)} values ({shown}): say which one is the positive "
                            f"outcome with --positive VALUE")
    if len(values) == 1:
        only = next(iter(values))
        raise ImportProblem(f"{column!r} has the single value {only!r} on every row: a model needs both outcomes. "
                            f"Pass --positive VALUE to import the rows anyway")
    for value in values:
        if value.strip().lower() in TRUE_WORDS:
            return value
    raise ImportProblem(f"{column!r} has the values {shown}: say which one is the positive outcome with --positive VALUE")


def typed_value(column: Column, value: str) -> Any:
    """A cell as it is stored in the lead's attributes: a finite number, text, or None."""
    if value == "":
        return None
    if column.kind == "numeric":
        number = _float(value)
        return number if number is not None and math.isfinite(number) else None
    return value[:VALUE_MAX]
