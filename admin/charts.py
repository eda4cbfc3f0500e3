"""Server-side SVG charts for the admin pages and the weekly PDF report: plain data in, inline SVG out.

One code path serves both: each chart is a `markupsafe.Markup` string to drop into a Jinja2
template (``{{ chart }}``) that a browser shows and WeasyPrint renders, with no JavaScript,
fonts or other resources to fetch. Text that comes from data (topic names, UTM sources,
company names) is XML-escaped, so hostile labels stay text. Bad data never raises: empty
input draws an empty state; None and NaN are skipped.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING

from markupsafe import Markup, escape

from content.experiments import format_p, format_rate

if TYPE_CHECKING:
    from content.experiments import Comparison

__all__ = [
    "CHART_CSS", "DASHES", "PALETTE", "bar_chart", "calibration", "comparison", "funnel", "lift_chart",
    "line_chart", "nice_ticks", "percent", "roc_curve", "sparkline", "stacked_bars",
]

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#332288", "#B07800", "#882255", "#000000")
"""Okabe-Ito hues, the light ones swapped for darker ones: every colour has at least 3:1
contrast on white and stays tellable apart for colour-blind readers."""
DASHES = (None, "7 3", "2 2.5", "9 3 2 3", "4 4", "12 3 2 3 2 3", "1 4", "6 2 1 2")
"""Dash patterns paired with PALETTE, so series stay apart when printed in grey."""

CHART_CSS = "svg.chart{max-width:100%;height:auto}"
"""The rule that lets charts shrink into a narrow column (phone, PDF margin box). It belongs in the
page's stylesheet: on the <svg> itself, as a style attribute, WeasyPrint loses the chart's height."""

_TEXT, _MUTED, _AXIS, _GRID, _TRACK = "#222222", "#555555", "#8a8a8a", "#e4e4e4", "#eeeeee"
_FONT = 11
_SMALL = 9.5
_SVG_NS = "http://www.w3.org/2000/svg"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAY = 86400.0


# ----------------------------------------------------------------------------- text and tags

# Characters XML 1.0 forbids; a lead can type them, and one would break the whole page.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(text: object) -> str:
    """Text for one line of XML: forbidden characters dropped, whitespace collapsed."""
    return " ".join(_NOT_XML.sub("", str(text)).split())


def _esc(text: object) -> str:
    return str(escape(_clean(text)))


def _text_width(text: str, size: float) -> float:
    """A generous estimate of the width of `text` in a sans-serif font (DejaVu Sans metrics).

    Generous because a label that fits on paper must never spill: the estimate errs wide.
    """
    em = 0.0
    for char in text:
        if unicodedata.east_asian_width(char) in "WF":
            em += 1.0
        elif char in " .,:;'|!ijlrtf()[]`":
            em += 0.36
        elif char in "mwMW@%":
            em += 0.92
        elif char.isupper() or char.isdigit():
            em += 0.7
        else:
            em += 0.62
    return em * size


def _fit(text: object, max_width: float, size: float = _FONT) -> tuple[str, bool]:
    """`text` cut to `max_width` with an ellipsis; the flag says whether it was cut."""
    text = _clean(text)
    if _text_width(text, size) <= max_width:
        return text, False
    text = text[: max(int(max_width / (0.3 * size)), 0)]
    while text and _text_width(text + "…", size) > max_width:
        text = text[:-1]
    return text.rstrip() + "…", True


def _num(value: float) -> str:
    """A coordinate with at most two decimals, so the SVG stays small and byte-stable."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _tag(name: str, content: str | None = None, **attrs: object) -> str:
    """An element; `content` must already be markup. `class_` -> class, `stroke_width` -> stroke-width."""
    parts = [name]
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, float):
            value = _num(value)
        parts.append(f'{key.rstrip("_").replace("_", "-")}="{escape(value)}"')
    opening = " ".join(parts)
    return f"<{opening}/>" if content is None else f"<{opening}>{content}</{name}>"


def _text(x: float, y: float, text: object, *, max_width: float | None = None, size: float = _FONT,
          anchor: str = "start", fill: str = _TEXT, bold: bool = False, **attrs: object) -> str:
    """A label; cut with an ellipsis past `max_width`, the full text then in a <title> tooltip."""
    shown, cut = _fit(text, max_width, size) if max_width is not None else (_clean(text), False)
    element = _tag("text", _esc(shown), x=float(x), y=float(y), font_size=size if size != _FONT else None,
                   text_anchor=anchor if anchor != "start" else None, fill=fill,
                   font_weight="bold" if bold else None, **attrs)
    return _tag("g", f"<title>{_esc(_clean(text)[:300])}</title>{element}") if cut else element


def _svg(width: float, height: float, summary: str, body: str, css_class: str = "chart") -> Markup:
    summary = _clean(summary)
    if len(summary) > 400:
        summary = summary[:399] + "…"
    return Markup(_tag(
        "svg", f"<title>{_esc(summary)}</title>{body}",
        xmlns=_SVG_NS, viewBox=f"0 0 {_num(width)} {_num(height)}",
        width=f"{_num(width)}px", height=f"{_num(height)}px",
        role="img", aria_label=summary, class_=css_class,
        font_family="sans-serif", font_size=_FONT,
    ))


def _empty(title: str, width: float, height: float, message: str = "No data yet") -> Markup:
    """The chart's place on the page, kept, with a short message instead of the data."""
    body = (_tag("rect", x=0.5, y=0.5, width=float(width - 1), height=float(height - 1), rx=4.0,
                 fill="#fafafa", stroke="#cccccc", stroke_dasharray="4 3")
            + _text(width / 2, height / 2 + 4, message, anchor="middle", fill=_MUTED,
                    max_width=width - 16))
    return _svg(width, height, f"{title}: {message}", body, css_class="chart chart-empty")


# ----------------------------------------------------------------------------- numbers

def _finite(value: object) -> float | None:
    """`value` as a float, or None for None, NaN, infinities and things that are not numbers."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0


def _number(value: float, decimals: int | None = None) -> str:
    """1,234 / 12.5 / 0.034: as many decimals as the magnitude needs, or `decimals`."""
    if decimals is None:
        decimals = _decimals_for([value])
    return f"{value:,.{decimals}f}".replace("-", "−")


def _decimals_for(values: Sequence[float]) -> int:
    """Decimals that suit the largest of `values` (none for whole numbers), to share across a chart."""
    if all(value == int(value) for value in values):
        return 0
    magnitude = max(abs(value) for value in values)
    return 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2 if magnitude >= 0.1 else 3


def percent(value: float) -> str:
    """A fraction as a percentage with two significant figures, as the desk pages write rates."""
    return format_rate(value)


def _percent(part: float, whole: float) -> str:
    return percent(part / whole) if whole > 0 else "–"


_rate = percent


def _signed_points(value: float, decimals: int = 1) -> str:
    """A difference of two rates in percentage points: 0.013 -> +1.3 pp."""
    text = f"{100 * value:+.{decimals}f}"
    if float(text) == 0:
        text = f"{0:.{decimals}f}"
    return text.replace("-", "−") + " pp"


def _nice(value: float, round_: bool) -> float:
    """The 1, 2, 5 x 10^n number near `value` (Heckbert, "Nice numbers for graph labels")."""
    exponent = math.floor(math.log10(value))
    fraction = value / 10 ** exponent
    if round_:
        nice = 1 if fraction < 1.5 else 2 if fraction < 3 else 5 if fraction < 7 else 10
    else:
        nice = 1 if fraction <= 1 else 2 if fraction <= 2 else 5 if fraction <= 5 else 10
    return nice * 10 ** exponent


def nice_ticks(low: float, high: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 x 10^n) from at or below `low` to at or above `high`.

    >>> nice_ticks(0, 100)
    [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    >>> nice_ticks(0, 3, integer=True)
    [0.0, 1.0, 2.0, 3.0]

    `integer` keeps the step whole, for counts: no 0.5 lead. Equal bounds are widened (0..0
    becomes 0..1); non-finite bounds give no ticks.
    """
    if _finite(low) is None or _finite(high) is None:
        return []
    low, high = min(low, high), max(low, high)
    if low == high:
        low, high = (0.0, 1.0) if low == 0 else (low - abs(low) / 10, high + abs(high) / 10)
    step = _nice(_nice(high - low, round_=False) / max(count - 1, 1), round_=True)
    if integer:
        step = max(step, 1.0)
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    decimals = _decimals(step) + 1
    return [round(index * step, decimals) + 0.0 for index in range(first, last + 1)]


def _whole(values: Sequence[float]) -> bool:
    """Whether every value is a whole number: counts, which get whole-number ticks."""
    return all(float(value).is_integer() for value in values)


def _tick_labels(ticks: Sequence[float], format_: Callable[[float], str] | None = None) -> list[str]:
    if format_ is not None:
        return [format_(tick) for tick in ticks]
    decimals = _decimals(ticks[1] - ticks[0]) if len(ticks) > 1 else 0
    return [_number(tick, decimals) for tick in ticks]


@dataclass(frozen=True)
class _Scale:
    """A linear map from data values (`d0`..`d1`) to SVG coordinates (`r0`..`r1`)."""

    d0: float
    d1: float
    r0: float
    r1: float

    def __call__(self, value: float) -> float:
        if self.d1 == self.d0:
            return (self.r0 + self.r1) / 2
        return self.r0 + (value - self.d0) * (self.r1 - self.r0) / (self.d1 - self.d0)


# ----------------------------------------------------------------------------- time axis

_TIME_STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, _DAY, 2 * _DAY, 7 * _DAY, 14 * _DAY)
_MONTH_STEPS = (1, 2, 3, 6, 12, 24, 60, 120, 240, 600)


def _timestamp(value: object) -> float | None:
    """Datetimes and dates as POSIX seconds (naive ones taken as UTC), other values as numbers."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp()
    return _finite(value)


def _time_ticks(start: float, end: float, zone: tzinfo, count: int = 5) -> tuple[list[float], list[str]]:
    """Ticks on whole minutes, hours, days, Mondays or months between `start` and `end`, with labels."""
    span = end - start
    step = next((step for step in _TIME_STEPS if span / step <= count), None)
    if step is None:
        months = next((k for k in _MONTH_STEPS if span / (30.44 * _DAY) / k <= count), _MONTH_STEPS[-1])
        ticks, unit = _month_ticks(start, end, months, zone), "year" if months % 12 == 0 else "month"
    else:
        ticks = _aligned_ticks(start, end, step, zone)
        unit = "day" if step >= _DAY else "day-time" if span > _DAY else "time"
    if len(ticks) < 2:
        ticks = [start, end]
    return ticks, [_time_label(datetime.fromtimestamp(tick, zone), unit) for tick in ticks]


def _time_label(moment: datetime, unit: str) -> str:
    """A tick label in English whatever the server's locale: 2025, Mar 2025, 3 Mar, 3 Mar 14:00, 14:00."""
    month = _MONTHS[moment.month - 1]
    return {
        "year": f"{moment.year}", "month": f"{month} {moment.year}", "day": f"{moment.day} {month}",
        "day-time": f"{moment.day} {month} {moment:%H:%M}", "time": f"{moment:%H:%M}",
    }[unit]


def _aligned_ticks(start: float, end: float, step: float, zone: tzinfo) -> list[float]:
    offset = (datetime.fromtimestamp(start, zone).utcoffset() or timedelta()).total_seconds()
    if step >= 7 * _DAY:
        offset -= 4 * _DAY  # 1970-01-01 was a Thursday; weeks start on Monday
    tick = math.ceil((start + offset) / step) * step - offset
    ticks = []
    while tick <= end + 1e-6:
        ticks.append(tick)
        tick += step
    return ticks


def _month_ticks(start: float, end: float, months: int, zone: tzinfo) -> list[float]:
    first = datetime.fromtimestamp(start, zone)
    index = first.year * 12 + first.month - 1
    index = -(-index // months) * months
    ticks = []
    while index // 12 <= 9999:
        tick = datetime(index // 12, index % 12 + 1, 1, tzinfo=zone).timestamp()
        if tick > end:
            return ticks
        if tick >= start:
            ticks.append(tick)
        index += months
    return ticks


# ----------------------------------------------------------------------------- shared pieces

def _y_axis(ticks: Sequence[float], labels: Sequence[str], y: _Scale, left: float, right: float) -> str:
    """Horizontal grid lines with their values to the left of the plot."""
    parts = []
    for tick, label in zip(ticks, labels):
        position = y(tick)
        parts.append(_tag("line", x1=float(left), x2=float(right), y1=position, y2=position,
                          stroke=_AXIS if tick == 0 else _GRID, stroke_width=1.0))
        parts.append(_text(left - 6, position + 3.5, label, anchor="end", fill=_MUTED, size=10))
    return "".join(parts)


def _x_axis(ticks: Sequence[float], labels: Sequence[str], x: _Scale, top: float, bottom: float,
            grid: bool = True) -> str:
    """Tick marks (and, with `grid`, vertical grid lines) with their values under the plot."""
    parts = [_tag("line", x1=x.r0, x2=x.r1, y1=float(bottom), y2=float(bottom), stroke=_AXIS)]
    for tick, label in zip(ticks, labels):
        position = x(tick)
        if grid:
            parts.append(_tag("line", x1=position, x2=position, y1=float(top), y2=float(bottom), stroke=_GRID))
        parts.append(_tag("line", x1=position, x2=position, y1=float(bottom), y2=bottom + 4.0, stroke=_AXIS))
        parts.append(_text(position, bottom + 15, label, anchor="middle", fill=_MUTED, size=10))
    return "".join(parts)


def _style(index: int) -> tuple[str, str | None]:
    """Colour and dash pattern of the index-th series; 64 series before a pair repeats."""
    return PALETTE[index % len(PALETTE)], DASHES[(index + index // len(PALETTE)) % len(DASHES)]


def _legend(names: Sequence[str], left: float, top: float, width: float,
            swatch: bool = False) -> tuple[str, float]:
    """Legend entries (line sample, or a colour `swatch` for bars, and name) flowed into rows;
    returns the markup and its height."""
    parts, x, y, row_height = [], left, top, 16.0
    sample = 14.0 if swatch else 30.0
    for index, name in enumerate(names):
        shown, _ = _fit(name, 170)
        entry_width = sample + _text_width(shown, _FONT) + 16
        if x > left and x + entry_width > left + width:
            x, y = left, y + row_height
        colour, dash = _style(index)
        if swatch:
            parts.append(_tag("rect", x=float(x), y=y + 1.0, width=10.0, height=10.0, fill=PALETTE[index % len(PALETTE)]))
        else:
            parts.append(_tag("line", x1=float(x), x2=x + 24.0, y1=y + 6.0, y2=y + 6.0, stroke=colour,
                              stroke_width=2.5, stroke_dasharray=dash))
        parts.append(_text(x + sample, y + 10, name, max_width=170))
        x += entry_width
    return _tag("g", "".join(parts), class_="legend"), (y - top + row_height) if names else 0.0


def _label_column(labels: Sequence[str], width: float) -> float:
    """Width of a column of row labels: the widest label, at most a third of the chart."""
    return min(max((_text_width(label, _FONT) for label in labels), default=0.0), width / 3)


def _summary(title: str, items: Sequence[str], limit: int = 8) -> str:
    shown = list(items[:limit]) + ([f"and {len(items) - limit} more"] if len(items) > limit else [])
    return f"{title}: " + "; ".join(shown)


# ----------------------------------------------------------------------------- line chart

Point = tuple["datetime | date | float", "float | None"]


def _clean_series(series: Mapping[str, Sequence[Point]]) -> tuple[list[tuple[str, list[tuple[float, float]]]], bool, tzinfo]:
    """Series with unusable points dropped and the rest sorted by x; whether x is time, and its zone.

    When any x is a date or datetime, x values that are not are unusable: a number among
    dates is no moment in time.
    """
    moments = [x for points in series.values() for x, _ in points or () if isinstance(x, date)]
    zone = next((x.tzinfo for x in moments if isinstance(x, datetime) and x.tzinfo is not None), timezone.utc)
    cleaned = []
    for name, points in series.items():
        kept = [(x, y) for x_value, y_value in points or ()
                if (not moments or isinstance(x_value, date))
                and (x := _timestamp(x_value)) is not None and (y := _finite(y_value)) is not None]
        if kept:
            cleaned.append((_clean(name), sorted(kept)))
    return cleaned, bool(moments), zone


def line_chart(
    series: Mapping[str, Sequence[Point]],
    *,
    title: str = "Line chart",
    y_range: tuple[float, float] | None = None,
    threshold: float | None = None,
    threshold_label: str = "hot threshold",
    y_format: Callable[[float], str] | None = None,
    width: int = 600,
    height: int = 240,
) -> Markup:
    """Lines over time (or any numeric x), one per series, with a legend: e.g. a lead's score per topic.

    `series` maps a name to (x, y) points; x is a datetime, date or number (naive datetimes
    are UTC). Points with a None or NaN part are skipped, and series left empty are left out.
    `y_range=(0, 100)` fixes the y axis (values outside are drawn at its edge); otherwise it
    is fitted to round numbers, from 0 when no value is negative. `threshold` draws a dashed
    horizontal line with `threshold_label`, e.g. the chain's hot threshold. `height` is the
    plot with its axes; the legend adds rows below it.
    """
    cleaned, is_time, zone = _clean_series(series)
    if not cleaned:
        return _empty(title, width, 90)
    xs = [x for _, points in cleaned for x, _ in points]
    ys = [y for _, points in cleaned for _, y in points] + ([threshold] if _finite(threshold) is not None else [])
    x_ticks, x_labels, x_low, x_high = _line_x_ticks(min(xs), max(xs), is_time, zone)
    if y_range is not None:
        y_low, y_high = sorted(y_range)
        y_ticks = [tick for tick in nice_ticks(y_low, y_high) if y_low <= tick <= y_high]
    else:
        integer = y_format is None and _whole(ys)
        y_ticks = nice_ticks(min(0.0, min(ys)) if min(ys) >= 0 else min(ys), max(ys), integer=integer)
        y_low, y_high = y_ticks[0], y_ticks[-1]
    y_labels = _tick_labels(y_ticks, y_format)

    left = max((_text_width(label, 10) for label in y_labels), default=0) + 10
    left = max(left, _text_width(x_labels[0], 10) / 2 + 2) if x_labels else left
    right = width - max(12.0, _text_width(x_labels[-1], 10) / 2 + 2 if x_labels else 0)
    top, bottom = 8.0, height - 24.0
    x = _Scale(x_low, x_high, left, right)
    y = _Scale(y_low, y_high, bottom, top)

    parts = [_y_axis(y_ticks, y_labels, y, left, right), _x_axis(x_ticks, x_labels, x, top, bottom, grid=False)]
    if _finite(threshold) is not None:
        parts.append(_threshold(y(min(max(threshold, y_low), y_high)), left, right, threshold_label, threshold, y_format))
    for index, (name, points) in enumerate(cleaned):
        parts.append(_line(name, [(x(px), y(min(max(py, y_low), y_high))) for px, py in points], index))
    legend, legend_height = _legend([name for name, _ in cleaned], left, height - 2.0, width - left)
    parts.append(legend)

    span = f"{x_labels[0]} to {x_labels[-1]}" if x_labels else ""
    summary = _summary(title, [f"{name}, last {_number(points[-1][1])}" for name, points in cleaned])
    return _svg(width, height + legend_height, f"{summary} ({span})" if span else summary, "".join(parts))


def _line_x_ticks(low: float, high: float, is_time: bool, zone: tzinfo) -> tuple[list[float], list[str], float, float]:
    """Ticks, their labels and the domain of a line chart's x axis; one point gets room around it."""
    if is_time:
        if low == high:
            low, high = low - _DAY, high + _DAY
        ticks, labels = _time_ticks(low, high, zone, count=6)
        return ticks, labels, low, high
    ticks = nice_ticks(low, high, count=6)
    return ticks, _tick_labels(ticks), ticks[0], ticks[-1]


def _threshold(position: float, left: float, right: float, label: str, value: float,
               y_format: Callable[[float], str] | None) -> str:
    """The dashed hot-threshold line, labelled at its right end."""
    text = _esc(f"{_clean(label)} {y_format(value) if y_format else _number(value)}")
    above = position - 4 if position > 20 else position + 12
    label_at = {"x": right - 2.0, "y": above, "text_anchor": "end", "font_size": _SMALL}
    return _tag("g", "".join((
        _tag("line", x1=float(left), x2=float(right), y1=position, y2=position, stroke="#444444",
             stroke_width=1.25, stroke_dasharray="6 3"),
        # A white outline drawn first keeps the label readable where series cross it.
        _tag("text", text, fill="#ffffff", stroke="#ffffff", stroke_width=3.0, **label_at),
        _tag("text", text, fill="#444444", **label_at),
    )), class_="threshold")


def _line(name: str, points: Sequence[tuple[float, float]], index: int) -> str:
    """One series: a polyline, with dots where there are few points (one point is only a dot)."""
    colour, dash = _style(index)
    parts = [f"<title>{_esc(name)}</title>"]
    if len(points) > 1:
        parts.append(_tag("polyline", points=" ".join(f"{_num(px)},{_num(py)}" for px, py in points),
                          fill="none", stroke=colour, stroke_width=2.0, stroke_dasharray=dash,
                          stroke_linejoin="round", stroke_linecap="round"))
    if len(points) <= 24:
        parts.extend(_tag("circle", cx=px, cy=py, r=3.0 if len(points) > 1 else 4.0, fill=colour)
                     for px, py in points)
    return _tag("g", "".join(parts), class_="series")


# ----------------------------------------------------------------------------- bars

def _rows(labels: Sequence[object], values: Sequence[object]) -> list[tuple[str, float]]:
    """(label, value) pairs with None / NaN values dropped; lengths must match."""
    rows = []
    for label, value in zip(labels, values, strict=True):
        number = _finite(value)
        if number is not None:
            rows.append((_clean(label), number))
    return rows


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    title: str = "Bar chart",
    value_format: Callable[[float], str] | None = None,
    width: int = 600,
    bar_height: int = 16,
    zero_message: str | None = None,
) -> Markup:
    """Horizontal bars, one per label, with the value at the end: feature importances, rules
    touched per week, leads per source, won rate per score band.

    Rows with a None or NaN value are dropped; negative values grow left from a zero line.
    `value_format` formats values and axis ticks (e.g. ``lambda v: f"{v:.0%}"``); without it,
    whole numbers (counts) get whole-number ticks. `zero_message` (e.g. "No lead won yet") is
    shown instead of a chart whose every value is zero. Raises ValueError when `labels` and
    `values` differ in length (a caller's bug, not bad data).
    """
    rows = _rows(labels, values)
    if not rows:
        return _empty(title, width, 60)
    numbers = [value for _, value in rows]
    if zero_message is not None and not any(numbers):
        return _empty(title, width, 60, zero_message)
    decimals = _decimals_for(numbers)
    format_ = value_format or (lambda value: _number(value, decimals))
    ticks = nice_ticks(min(0.0, *numbers), max(0.0, *numbers), integer=value_format is None and _whole(numbers))
    tick_labels = _tick_labels(ticks, value_format)
    value_width = max(_text_width(format_(value), 10) for value in numbers) + 8

    label_width = _label_column([label for label, _ in rows], width)
    left = label_width + 14 + (value_width if min(numbers) < 0 else 0)
    right = width - max(value_width, _text_width(tick_labels[-1], 10) / 2) - 4
    row_height = bar_height + 8
    top, bottom = 4.0, 4.0 + row_height * len(rows)
    x = _Scale(ticks[0], ticks[-1], left, right)

    parts = [_x_axis(ticks, tick_labels, x, top, bottom)]
    for index, (label, value) in enumerate(rows):
        row_top = top + index * row_height
        middle = row_top + row_height / 2
        start, end = sorted((x(0), x(value)))
        parts.append(_text(label_width + 6, middle + 4, label, max_width=label_width, anchor="end"))
        parts.append(_tag("rect", f"<title>{_esc(label)}: {_esc(format_(value))}</title>",
                          x=start, y=row_top + 4.0, width=max(end - start, 0.0), height=float(bar_height),
                          fill=PALETTE[0], class_="bar"))
        after, anchor = (end + 4, "start") if value >= 0 else (start - 4, "end")
        parts.append(_text(after, middle + 3.5, format_(value), size=10, anchor=anchor, fill=_TEXT))
    parts.append(_tag("line", x1=x(0), x2=x(0), y1=top, y2=bottom, stroke=_AXIS))
    summary = _summary(title, [f"{label} {format_(value)}" for label, value in rows])
    return _svg(width, bottom + 22, summary, "".join(parts))


def funnel(stages: Sequence[tuple[str, int | None]], *, title: str = "Funnel", width: int = 600, base: int = 0,
           nested: bool = True, notes: Mapping[str, str] | None = None) -> Markup:
    """A funnel as horizontal bars on a grey track, each with its count and, under the bar, its
    share of the `base` stage ("40% of sent") and, when the stages are `nested` (each a subset of
    the one before), of the stage before it ("25% of opened").

    Stages before `base` are context, drawn with their count and no share: visitors before leads,
    when leads also come from imports without a tracked visit. A share over 100% (a stage larger
    than the one it is measured against, which a subset cannot be) is written as a ratio ("3.2×
    visitors"), never as a percentage of a whole it exceeds. `notes` adds a line to stages, by
    label. Stages with a None or NaN count are dropped; negative counts show as 0.
    """
    rows = [(label, max(count, 0.0)) for label, count in _rows(*_unzip(stages))]
    if not rows:
        return _empty(title, width, 60)
    base = min(max(base, 0), len(rows) - 1)
    base_label, base_count = rows[base]
    notes_by_stage = []
    for index, (label, count) in enumerate(rows):
        parts = []
        if index > base:
            parts.append(_share(count, base_count, base_label))
            if nested and index - 1 > base:
                parts.append(_share(count, rows[index - 1][1], rows[index - 1][0]))
        extra = _clean((notes or {}).get(label, ""))
        notes_by_stage.append(" · ".join(parts + ([extra] if extra else [])))
    largest = max(count for _, count in rows)
    count_width = max(_text_width(_number(count), _FONT) for _, count in rows) + 8
    label_width = _label_column([label for label, _ in rows], width)
    left, right = label_width + 14, width - count_width - 4
    x = _Scale(0, largest or 1, left, right)
    has_notes = any(notes_by_stage)
    row_height, bar_height = (38.0 if has_notes else 28.0), 20.0

    parts = []
    for index, ((label, count), note) in enumerate(zip(rows, notes_by_stage)):
        bar_top = 4 + index * row_height
        middle = bar_top + bar_height / 2
        title_text = f"{label}: {_number(count)}" + (f" ({note})" if note else "")
        context = index < base
        parts.append(_text(label_width + 6, middle + 4, label, max_width=label_width, anchor="end",
                           fill=_MUTED if context else _TEXT))
        parts.append(_tag("rect", x=float(left), y=bar_top, width=float(right - left), height=bar_height, fill=_TRACK))
        parts.append(_tag("rect", f"<title>{_esc(title_text)}</title>", x=float(left), y=bar_top,
                          width=max(x(count) - left, 1.0 if count else 0.0), height=bar_height,
                          fill=_AXIS if context else PALETTE[0], class_="bar context" if context else "bar"))
        parts.append(_text(right + 6, middle + 4, _number(count), bold=True))
        if note:
            parts.append(_text(left, bar_top + bar_height + 11, note, size=_SMALL, fill=_MUTED,
                               max_width=width - left - 4, class_="share"))
    summary = _summary(title, [f"{label} {_number(count)}" + (f" ({note})" if note else "")
                               for (label, count), note in zip(rows, notes_by_stage)])
    return _svg(width, 4 + row_height * len(rows) + (0 if has_notes else 4), summary, "".join(parts))


def _share(count: float, whole: float, whole_label: str) -> str:
    """`count` as a share of the stage `whole_label`: "40% of sent"; "3.2× visitors" past 100%."""
    name = _clean(whole_label).lower()
    if whole <= 0:
        return f"– of {name}"
    if count > whole:
        return f"{count / whole:.1f}× {name}"
    return f"{_percent(count, whole)} of {name}"


def _unzip(pairs: Sequence[tuple[object, object]]) -> tuple[list[object], list[object]]:
    return [pair[0] for pair in pairs], [pair[1] for pair in pairs]


def _category_label(value: object) -> str:
    """A category on the x axis: a date as "9 Nov", anything else as text."""
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        return f"{value.day} {_MONTHS[value.month - 1]}"
    return _clean(value)


def stacked_bars(
    categories: Sequence[object],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str = "Stacked bars",
    value_format: Callable[[float], str] | None = None,
    width: int = 600,
    height: int = 200,
) -> Markup:
    """Vertical bars, one per category (dates are written "9 Nov"), each stacked from its series'
    values in order, with its total on top and a colour legend: e.g. new leads per week by source.

    `series` maps a name to one value per category; None, NaN and negative values count as 0,
    series that are zero throughout are left out. Whole numbers (counts) get whole-number ticks.
    Every segment has a tooltip with its category, series and value. `height` is the plot with
    its axes; the legend adds rows below it. Raises ValueError when a series has not one value
    per category (a caller's bug).
    """
    labels = [_category_label(category) for category in categories]
    kept: list[tuple[str, list[float]]] = []
    for name, values in series.items():
        if len(values) != len(labels):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(labels)} categories")
        numbers = [max(_finite(value) or 0.0, 0.0) for value in values]
        if any(numbers):
            kept.append((_clean(name), numbers))
    if not labels or not kept:
        return _empty(title, width, 60)
    totals = [sum(numbers[index] for _, numbers in kept) for index in range(len(labels))]
    all_values = [value for _, numbers in kept for value in numbers] + totals
    integer = value_format is None and _whole(all_values)
    format_ = value_format or (lambda value: _number(value, 0 if integer else _decimals_for(all_values)))
    ticks = nice_ticks(0.0, max(totals), integer=integer)
    tick_labels = _tick_labels(ticks, value_format)

    left = max(_text_width(label, 10) for label in tick_labels) + 10
    right = width - 6.0
    top, bottom = 16.0, height - 24.0
    y = _Scale(ticks[0], ticks[-1], bottom, top)
    slot = (right - left) / len(labels)
    bar_width = max(min(slot * 0.7, 48.0), 1.0)
    # Every k-th category is labelled, so that labels never overlap.
    widest = max(_text_width(label, 10) for label in labels) + 6
    every = max(1, math.ceil(widest / slot))

    parts = [_y_axis(ticks, tick_labels, y, left, right),
             _tag("line", x1=float(left), x2=float(right), y1=bottom, y2=bottom, stroke=_AXIS)]
    for index, (label, total) in enumerate(zip(labels, totals)):
        centre = left + slot * (index + 0.5)
        x0 = centre - bar_width / 2
        base = 0.0
        for series_index, (name, numbers) in enumerate(kept):
            value = numbers[index]
            if value <= 0:
                continue
            y_top, y_bottom = y(base + value), y(base)
            parts.append(_tag("rect", f"<title>{_esc(f'{label}, {name}: {format_(value)}')}</title>",
                              x=x0, y=y_top, width=bar_width, height=max(y_bottom - y_top, 0.5),
                              fill=PALETTE[series_index % len(PALETTE)], stroke="#ffffff", stroke_width=0.75,
                              class_="segment"))
            base += value
        if total > 0 and _text_width(format_(total), 10) <= slot:
            parts.append(_text(centre, y(total) - 3, format_(total), anchor="middle", size=10, class_="total"))
        if (len(labels) - 1 - index) % every == 0:  # counted from the newest, which is always labelled
            parts.append(_text(centre, bottom + 15, label, anchor="middle", fill=_MUTED, size=10))
    legend, legend_height = _legend([name for name, _ in kept], left, height - 2.0, width - left, swatch=True)
    parts.append(legend)
    span = f" ({labels[0]} to {labels[-1]})" if len(labels) > 1 else ""
    summary = _summary(title, [f"{name} {format_(sum(numbers))}" for name, numbers in kept]) + span
    return _svg(width, height + legend_height, summary, "".join(parts))


# ----------------------------------------------------------------------------- comparison

Group = tuple[str, "float | None", "float | None", "float | None"]


def comparison(
    groups: Sequence[Group],
    *,
    difference: tuple[float, float, float] | None = None,
    difference_label: str | None = None,
    confidence: float = 0.95,
    note: str | None = None,
    title: str = "Comparison",
    width: int = 600,
) -> Markup:
    """Rates of two or more groups as bars, and the difference with its confidence interval.

    `groups` are (label, rate, low, high) with rates as fractions (0.042 is 4.2%); low and
    high, when given, are that group's own interval, drawn as an error bar (e.g. per A/B
    variant). The interval of a two-group test belongs to the *difference*, not to either
    rate (content.experiments.Comparison), so `difference=(difference, low, high)` is drawn
    apart, under the bars, as a point with whiskers on a percentage-point axis with a zero
    line: when the whiskers cross zero the data cannot tell the groups apart. The line under
    it spells the numbers out, followed by `note` (e.g. the p-value). Groups without a rate
    are dropped.
    """
    rows = []
    for group in groups:
        label, rate, low, high = (*group, None, None)[:4]  # (label, rate) alone is fine too
        if _finite(rate) is not None:
            rows.append((_clean(label), _finite(rate), _finite(low), _finite(high)))
    delta = [_finite(value) for value in difference] if difference is not None else None
    delta = delta if delta and all(value is not None for value in delta) else None
    if not rows and delta is None:
        return _empty(title, width, 60)
    if difference_label is None:
        difference_label = f"{rows[0][0]} − {rows[1][0]}" if len(rows) == 2 else "Difference"

    texts = [_rate(rate) + (f" ({_rate(low)} to {_rate(high)})" if low is not None and high is not None else "")
             for _, rate, low, high in rows]
    label_width = _label_column([label for label, *_ in rows] + [difference_label], width)
    value_width = max((_text_width(text, 10) for text in texts), default=0) + 10
    value_width = max(value_width, 30.0)  # room for half the last axis label
    left, right = label_width + 14, width - value_width - 4
    parts, bottom = _rate_bars(rows, texts, label_width, left, right)
    summary = [f"{label} {text}" for (label, *_), text in zip(rows, texts)]
    height = bottom + 22 if rows else 0.0
    if delta is not None:
        strip, height, spelled = _difference_strip(delta, difference_label, confidence, note, label_width,
                                                   left, right, height + 10 if rows else 4.0, width)
        parts.append(strip)
        summary.append(spelled)
    return _svg(width, height, _summary(title, summary), "".join(parts))


def _rate_bars(rows: Sequence[tuple[str, float, float | None, float | None]], texts: Sequence[str],
               label_width: float, left: float, right: float) -> tuple[list[str], float]:
    if not rows:
        return [], 0.0
    highest = max(max(rate, high or 0.0) for _, rate, _, high in rows)
    ticks = nice_ticks(0.0, highest) if highest > 0 else [0.0, 0.5, 1.0]
    x = _Scale(ticks[0], ticks[-1], left, right)
    row_height, bar_height, top = 30.0, 20.0, 4.0
    bottom = top + row_height * len(rows)
    parts = [_x_axis(ticks, [_rate(tick).replace(".0%", "%") for tick in ticks], x, top, bottom)]
    for index, ((label, rate, low, high), text) in enumerate(zip(rows, texts)):
        middle = top + index * row_height + row_height / 2
        parts.append(_text(label_width + 6, middle + 4, label, max_width=label_width, anchor="end"))
        parts.append(_tag("rect", f"<title>{_esc(label)}: {_esc(text)}</title>", x=float(left),
                          y=middle - bar_height / 2, width=max(x(max(rate, 0.0)) - left, 0.0),
                          height=bar_height, fill=PALETTE[index % len(PALETTE)], class_="bar"))
        end = x(max(rate, 0.0))
        if low is not None and high is not None:
            parts.append(_whisker(x(max(low, 0.0)), x(min(high, ticks[-1])), middle, 5.0))
            end = max(end, x(min(high, ticks[-1])))
        parts.append(_text(end + 5, middle + 3.5, text, size=10))
    return parts, bottom


def _whisker(start: float, end: float, middle: float, cap: float) -> str:
    path = (f"M{_num(start)} {_num(middle)}H{_num(end)}M{_num(start)} {_num(middle - cap)}V{_num(middle + cap)}"
            f"M{_num(end)} {_num(middle - cap)}V{_num(middle + cap)}")
    return _tag("path", d=path, stroke=_TEXT, stroke_width=1.5, fill="none", class_="interval")


def _difference_strip(delta: Sequence[float], label: str, confidence: float, note: str | None,
                      label_width: float, left: float, right: float, top: float, width: float) -> tuple[str, float, str]:
    """The difference as a point with its interval on a percentage-point axis; returns the markup,
    the new chart height and the sentence that spells it out."""
    value, low, high = delta
    low, high = min(low, high), max(low, high)
    ticks = nice_ticks(100 * min(low, value, 0.0), 100 * max(high, value, 0.0))
    x = _Scale(ticks[0], ticks[-1], left, right)
    middle, bottom = top + 14, top + 28
    verdict = "excludes 0" if low > 0 or high < 0 else "includes 0"
    spelled = (f"{_signed_points(value)}, {confidence:.0%} interval {_signed_points(low)} to "
               f"{_signed_points(high)} ({verdict})" + (f"; {_clean(note)}" if note else ""))
    labels = [_signed_points(tick / 100, _decimals(ticks[1] - ticks[0])) for tick in ticks]
    parts = [
        _text(label_width + 6, middle + 4, label, max_width=label_width, anchor="end"),
        _x_axis(ticks, labels, x, top, bottom),
        _tag("line", x1=x(0), x2=x(0), y1=float(top), y2=float(bottom), stroke=_TEXT, stroke_width=1.0,
             stroke_dasharray="3 2"),
        _whisker(x(100 * low), x(100 * high), middle, 6.0),
        _tag("circle", f"<title>{_esc(spelled)}</title>", cx=x(100 * value), cy=float(middle), r=5.0,
             fill=_TEXT, class_="difference"),
    ]
    # The sentence wraps rather than being cut: on a narrow chart it is most of what a reader needs.
    lines = _wrap(spelled, width - 8, 10)
    for index, line in enumerate(lines):
        parts.append(_text(4, bottom + 32 + 13 * index, line, size=10, fill=_TEXT, max_width=width - 8,
                           class_="spelled"))
    return (_tag("g", "".join(parts), class_="difference-strip"), bottom + 27 + 13 * len(lines),
            f"{label} {spelled}")


def _wrap(text: str, max_width: float, size: float, max_lines: int = 3) -> list[str]:
    """`text` broken at spaces into lines that fit `max_width`; the last line cut if more are needed."""
    lines: list[str] = []
    for word in _clean(text).split(" "):
        if lines and _text_width(f"{lines[-1]} {word}", size) <= max_width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [" ".join(lines[max_lines - 1:])]
    return lines


def lift_chart(result: Comparison, *, treatment: str = "Treatment", control: str = "Control",
               title: str = "Treatment vs control", width: int = 600,
               difference_label: str | None = None) -> Markup:
    """`comparison` for a content.experiments.Comparison: both rates, then the lift with its interval
    (labelled `difference_label`, "treatment − control" unless given), the p-value written as the
    verdicts write it."""

    relative = f"relative lift {result.relative_lift:+.0%}; ".replace("-", "−") if result.relative_lift is not None else ""
    return comparison(
        [(treatment, result.treatment_rate, None, None), (control, result.control_rate, None, None)],
        difference=(result.difference, result.low, result.high), confidence=result.confidence,
        difference_label=difference_label, note=relative + format_p(result.p_value), title=title, width=width,
    )


# ----------------------------------------------------------------------------- model charts

def _unit_frame(size: int, x_label: str, y_label: str) -> tuple[list[str], _Scale, _Scale, float]:
    """A square 0..1 by 0..1 plot with grid, ticks, axis titles and the y = x diagonal."""
    left, top, plot = 48.0, 8.0, size - 60.0
    x, y = _Scale(0, 1, left, left + plot), _Scale(0, 1, top + plot, top)
    ticks = nice_ticks(0, 1)
    labels = _tick_labels(ticks)
    parts = [
        _y_axis(ticks, labels, y, left, left + plot),
        _x_axis(ticks, labels, x, top, top + plot),
        _tag("line", x1=x(0), y1=y(0), x2=x(1), y2=y(1), stroke=_AXIS, stroke_dasharray="4 4"),
        _text(left + plot / 2, top + plot + 32, x_label, anchor="middle", fill=_MUTED, size=10),
        _text(12, top + plot / 2, y_label, anchor="middle", fill=_MUTED, size=10,
              transform=f"rotate(-90 12 {_num(top + plot / 2)})"),
    ]
    return parts, x, y, top + plot + 40


def _unit_points(points: Sequence[Sequence[object]]) -> list[tuple[float, ...]]:
    """Points whose parts are all finite, x and y clamped to 0..1, sorted by x."""
    kept = []
    for point in points:
        values = [_finite(part) for part in point]
        if values and all(value is not None for value in values):
            kept.append((min(max(values[0], 0.0), 1.0), min(max(values[1], 0.0), 1.0), *values[2:]))
    return sorted(kept)


def roc_curve(points: Sequence[tuple[float, float]], auc: float | None = None, *,
              title: str = "ROC curve", size: int = 320) -> Markup:
    """The ROC curve from (false positive rate, true positive rate) points, with the chance
    diagonal and the AUC written in the corner. (0, 0) and (1, 1) are added when missing."""
    kept = _unit_points(points)
    if not kept:
        return _empty(title, size, 80)
    curve = [(0.0, 0.0), *[(fpr, tpr) for fpr, tpr in kept], (1.0, 1.0)]
    parts, x, y, height = _unit_frame(size, "False positive rate", "True positive rate")
    line = " ".join(f"{_num(x(fpr))},{_num(y(tpr))}" for fpr, tpr in curve)
    parts.append(_tag("polygon", points=f"{line} {_num(x(1))},{_num(y(0))}", fill=PALETTE[0], fill_opacity=0.08))
    parts.append(_tag("polyline", points=line, fill="none", stroke=PALETTE[0], stroke_width=2.0,
                      stroke_linejoin="round", class_="series"))
    auc_value = _finite(auc)
    summary = f"{title}: AUC {auc_value:.3f}" if auc_value is not None else title
    if auc_value is not None:
        parts.append(_text(x(1) - 8, y(0) - 10, f"AUC {auc_value:.3f}", anchor="end", bold=True))
    return _svg(size, height, summary, "".join(parts))


def calibration(points: Sequence[tuple[float, float, int]], *, title: str = "Calibration",
                size: int = 320) -> Markup:
    """Predicted probability against the observed rate per bin, (predicted, observed, count),
    with the perfect-calibration diagonal; a marker's area grows with its bin's count, which is
    also written next to it (up to 12 bins)."""
    kept = [(predicted, observed, max(count, 0.0)) for predicted, observed, count in _unit_points(points)]
    if not kept:
        return _empty(title, size, 80)
    parts, x, y, height = _unit_frame(size, "Predicted probability", "Observed rate")
    largest = max(count for _, _, count in kept) or 1.0
    if len(kept) > 1:
        parts.append(_tag("polyline", points=" ".join(f"{_num(x(p))},{_num(y(o))}" for p, o, _ in kept),
                          fill="none", stroke=PALETTE[1], stroke_width=1.5, class_="series"))
    for predicted, observed, count in kept:
        tooltip = f"predicted {predicted:.2f}, observed {observed:.2f}, {_number(count)} leads"
        radius = 3 + 6 * math.sqrt(count / largest)
        parts.append(_tag("circle", f"<title>{_esc(tooltip)}</title>", cx=x(predicted), cy=y(observed),
                          r=radius, fill=PALETTE[1], fill_opacity=0.75,
                          stroke="#ffffff", stroke_width=1.0, class_="bin"))
        if len(kept) <= 12:
            parts.append(_count_label(x(predicted), y(observed), radius, f"n={_number(count)}", x, y))
    parts.append(_text(x(0) + 6, y(1) + 14, "marker area ∝ leads in bin", size=_SMALL, fill=_MUTED))
    return _svg(size, height, f"{title}: {len(kept)} bins", "".join(parts))


def _count_label(cx: float, cy: float, radius: float, text: str, x: _Scale, y: _Scale) -> str:
    """A bin's count beside its marker, across the curve rather than on it: below right, else
    above left, else above right, whichever stays inside the plot."""
    offset, text_width = radius * 0.7 + 3, _text_width(text, 8.5)
    if cx + offset + text_width < x.r1 and cy + offset + 7 < y.r0 - 2:
        return _text(cx + offset, cy + offset + 7, text, size=8.5, fill=_MUTED)
    if cx - offset - text_width > x.r0 and cy - offset - 7 > y.r1:
        return _text(cx - offset, cy - offset, text, size=8.5, fill=_MUTED, anchor="end")
    return _text(min(cx + offset, x.r1 - text_width), cy - offset, text, size=8.5, fill=_MUTED)


def sparkline(values: Sequence[float | None], *, title: str = "Trend", width: int = 120, height: int = 24) -> Markup:
    """A small line without axes for a table cell, with a dot on the last value; None / NaN skipped."""
    kept = [(index, value) for index, raw in enumerate(values) if (value := _finite(raw)) is not None]
    if not kept:
        body = _text(width / 2, height / 2 + 3.5, "no data", anchor="middle", fill=_MUTED, size=_SMALL)
        return _svg(width, height, f"{title}: no data", body, css_class="chart chart-empty")
    low, high = min(value for _, value in kept), max(value for _, value in kept)
    x = _Scale(kept[0][0], kept[-1][0], 3, width - 3)
    y = _Scale(low, high, height - 3, 3)
    line = " ".join(f"{_num(x(index))},{_num(y(value))}" for index, value in kept)
    body = ""
    if len(kept) > 1:
        body += _tag("polyline", points=line, fill="none", stroke=PALETTE[0], stroke_width=1.5,
                     stroke_linejoin="round", class_="series")
    body += _tag("circle", cx=x(kept[-1][0]), cy=y(kept[-1][1]), r=2.0, fill=PALETTE[0])
    summary = f"{title}: {len(kept)} values from {_number(kept[0][1])} to {_number(kept[-1][1])}"
    return _svg(width, height, summary, body, css_class="chart sparkline")
