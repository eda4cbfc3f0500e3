"""admin/charts.py: well-formed, accessible SVG for pages and PDF, inert hostile labels, bad data drawn not raised."""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET
from datetime import date, datetime, timedelta, timezone

import pytest
from markupsafe import Markup

from admin import charts
from content.experiments import compare

NS = "{http://www.w3.org/2000/svg}"
HOSTILE = ['<script>alert(1)</script>', '" onload="x', "</text><script>alert(2)</script>"]
T0 = datetime(2025, 3, 3, 9, tzinfo=timezone.utc)


def parse(svg: str) -> ET.Element:
    """The chart as XML, after checking what every chart must have."""
    assert isinstance(svg, Markup)
    root = ET.fromstring(str(svg))
    assert root.tag == f"{NS}svg"
    assert root.get("role") == "img"
    assert root.get("aria-label")
    assert root.find(f"{NS}title").text == root.get("aria-label")
    assert len(root.get("viewBox").split()) == 4
    assert root.get("width").endswith("px") and root.get("height").endswith("px")
    return root


def find(root: ET.Element, tag: str, css_class: str | None = None) -> list[ET.Element]:
    return [element for element in root.iter(f"{NS}{tag}") if css_class is None or element.get("class") == css_class]


def texts(root: ET.Element) -> list[str]:
    return [element.text or "" for element in root.iter(f"{NS}text")]


def all_charts(label: str) -> dict[str, Markup]:
    """Every chart, each with `label` wherever data supplies a label."""
    return {
        "line": charts.line_chart({label: [(T0, 10), (T0 + timedelta(days=1), 20)], "other": [(T0, 5)]},
                                  title=label, y_range=(0, 100), threshold=70, threshold_label=label),
        "bar": charts.bar_chart([label, "short"], [3, 1], title=label),
        "stacked": charts.stacked_bars([label, "b"], {label: [1, 2], "other": [0, 1]}, title=label),
        "funnel": charts.funnel([(label, 100), ("opened", 40)], title=label),
        "comparison": charts.comparison([(label, 0.05, 0.04, 0.06), ("B", 0.04, None, None)],
                                        difference=(0.01, -0.002, 0.022), note=label, title=label),
        "roc": charts.roc_curve([(0.1, 0.5), (0.4, 0.9)], 0.8, title=label),
        "calibration": charts.calibration([(0.1, 0.12, 50), (0.6, 0.5, 10)], title=label),
        "sparkline": charts.sparkline([1, 3, 2], title=label),
    }


# ----------------------------------------------------------------------------- every chart

@pytest.mark.parametrize("label", HOSTILE)
def test_hostile_labels_stay_text(label: str) -> None:
    for name, svg in all_charts(label).items():
        root = parse(svg)
        elements = list(root.iter())
        assert not [element for element in elements if element.tag.endswith("script")], name
        assert not [element for element in elements if any(key.startswith("on") for key in element.attrib)], name
        shown = " ".join(texts(root) + [element.text or "" for element in root.iter(f"{NS}title")])
        assert label.strip() in shown, name


def test_characters_xml_forbids_are_dropped() -> None:
    root = parse(charts.bar_chart(["bad\x00 \x1b label\ufffe"], [1]))
    assert "bad label" in texts(root)


def test_charts_are_markup_that_jinja_does_not_escape_again() -> None:
    from jinja2 import Environment

    page = Environment(autoescape=True).from_string("<div>{{ chart }}</div>").render(chart=charts.sparkline([1, 2]))
    assert page.startswith("<div><svg ")


@pytest.mark.parametrize("empty", [
    lambda: charts.line_chart({}),
    lambda: charts.line_chart({"pricing": []}),
    lambda: charts.line_chart({"pricing": [(T0, None), (T0, math.nan), (None, 4)]}),
    lambda: charts.bar_chart([], []),
    lambda: charts.bar_chart(["a", "b"], [None, math.nan]),
    lambda: charts.funnel([]),
    lambda: charts.comparison([]),
    lambda: charts.comparison([("A", None, None, None)], difference=(math.nan, 0, 1)),
    lambda: charts.roc_curve([], None),
    lambda: charts.calibration([(math.nan, 0.1, 3)]),
    lambda: charts.sparkline([None, math.inf]),
])
def test_empty_data_draws_an_empty_state(empty) -> None:
    root = parse(empty())
    assert "chart-empty" in root.get("class")
    assert any("data" in text.lower() for text in texts(root))


# ----------------------------------------------------------------------------- line chart

def test_line_chart_draws_one_series_per_name_with_a_legend_and_threshold() -> None:
    series = {topic: [(T0 + timedelta(days=day), 10 * day + offset) for day in range(8)]
              for offset, topic in enumerate(["pricing", "data engineering", "security"])}
    root = parse(charts.line_chart(series, y_range=(0, 100), threshold=70))
    groups = find(root, "g", "series")
    assert len(groups) == 3
    assert all(len(find(group, "polyline")) == 1 for group in groups)
    legend = find(root, "g", "legend")[0]
    assert texts(legend) == ["pricing", "data engineering", "security"]
    assert {"0", "20", "40", "60", "80", "100"} <= set(texts(root))
    assert "hot threshold 70" in texts(find(root, "g", "threshold")[0])


def test_line_chart_keeps_values_outside_a_fixed_range_inside_the_plot() -> None:
    root = parse(charts.line_chart({"x": [(0, -50), (1, 150)]}, y_range=(0, 100)))
    ys = [float(point.split(",")[1]) for point in find(root, "polyline")[0].get("points").split()]
    grid = [float(line.get("y1")) for line in find(root, "line") if line.get("x1") != line.get("x2")]
    assert min(grid) <= min(ys) and max(ys) <= max(grid)


def test_line_chart_skips_missing_points_and_draws_a_lone_point_as_a_dot() -> None:
    root = parse(charts.line_chart({"pricing": [(T0, math.nan), (T0 + timedelta(days=1), None), (T0, 42)]}))
    group = find(root, "g", "series")[0]
    assert find(group, "polyline") == []
    assert len(find(group, "circle")) == 1


def test_line_chart_drops_numbers_among_dates() -> None:
    root = parse(charts.line_chart({"pricing": [(T0, 10), (1e12, 20), (T0 + timedelta(days=2), 30)]}))
    assert len(find(root, "polyline")[0].get("points").split()) == 2


def test_line_chart_of_zeros_has_a_usable_axis() -> None:
    root = parse(charts.line_chart({"z": [(day, 0) for day in range(5)]}))
    assert {"0", "1"} <= set(texts(root)), "whole-number ticks for whole numbers"


def test_line_chart_time_axis_ticks_on_mondays() -> None:
    series = {"pricing": [(date(2025, 3, 1) + timedelta(days=day), day) for day in range(28)]}
    labels = texts(parse(charts.line_chart(series)))
    assert {"3 Mar", "10 Mar", "17 Mar", "24 Mar"} <= set(labels)


def test_many_series_get_distinct_colour_and_dash_pairs() -> None:
    series = {f"topic {index}": [(0, index), (1, index + 1)] for index in range(12)}
    lines = [find(group, "polyline")[0] for group in find(parse(charts.line_chart(series)), "g", "series")]
    styles = {(line.get("stroke"), line.get("stroke-dasharray")) for line in lines}
    assert len(lines) == len(styles) == 12


def test_long_labels_are_cut_with_the_full_text_in_a_tooltip() -> None:
    label = "Lead Source_Welingak Website " * 10
    root = parse(charts.bar_chart([label, "short"], [2, 1]))
    cut = [text for text in texts(root) if text.endswith("…")]
    assert len(cut) == 1 and len(cut[0]) < 60
    assert label.strip() in [title.text for title in root.iter(f"{NS}title")]


# ----------------------------------------------------------------------------- bars and funnel

def test_bar_chart_draws_a_bar_per_value_longest_for_the_largest() -> None:
    root = parse(charts.bar_chart(["pricing visits", "email opens", "broken", "form"], [412.5, 120, None, 55.25]))
    bars = find(root, "rect", "bar")
    assert len(bars) == 3
    widths = [float(bar.get("width")) for bar in bars]
    assert widths[0] == max(widths) and widths[2] == min(widths)
    assert {"pricing visits", "email opens", "form"} <= set(texts(root))
    assert "broken" not in texts(root)


def test_bar_chart_of_zeros_and_negatives() -> None:
    assert [float(bar.get("width")) for bar in find(parse(charts.bar_chart(["a", "b"], [0, 0])), "rect", "bar")] == [0, 0]
    root = parse(charts.bar_chart(["up", "down"], [0.1, -0.1], value_format=lambda value: f"{value:+.0%}"))
    up, down = find(root, "rect", "bar")
    assert float(down.get("x")) < float(up.get("x"))
    assert {"+10%", "-10%"} <= set(texts(root))


def test_bar_chart_refuses_labels_and_values_of_different_lengths() -> None:
    with pytest.raises(ValueError):
        charts.bar_chart(["a", "b"], [1])


def test_funnel_labels_each_stage_with_its_count_and_shares() -> None:
    root = parse(charts.funnel([("Sent", 1000), ("Opened", 400), ("Clicked", 100), ("Converted", 1)]))
    assert len(find(root, "rect", "bar")) == 4
    labels = texts(root)
    assert {"Sent", "1,000", "400", "1"} <= set(labels)
    assert "40% of sent" in labels, "the share of the stage before is the share of the first: said once"
    assert "10% of sent · 25% of opened" in labels
    assert "0.1% of sent · 1.0% of clicked" in labels


def test_funnel_survives_a_zero_first_stage() -> None:
    root = parse(charts.funnel([("Visitors", 0), ("Leads", 0), ("Won", None)]))
    assert "– of visitors" in texts(root)


def test_funnel_shares_start_at_the_base_and_context_stages_get_none() -> None:
    # Leads outnumber tracked visitors (imports): the shares start at Leads, Visitors is context.
    root = parse(charts.funnel([("Visitors", 6), ("Leads", 19), ("Confirmed", 14), ("Won", 0)], base=1,
                               nested=False, notes={"Visitors": "counted apart"}))
    labels = texts(root)
    assert "74% of leads" in labels and "0% of leads" in labels
    assert "counted apart" in labels
    assert not any("%" in label and "visitors" in label for label in labels)
    assert len(find(root, "rect", "bar context")) == 1 and len(find(root, "rect", "bar")) == 3


def test_funnel_never_writes_a_share_over_100_percent() -> None:
    labels = texts(parse(charts.funnel([("Visitors", 6), ("Leads", 19), ("Confirmed", 14)])))
    assert "3.2× visitors" in labels and "2.3× visitors · 74% of leads" in labels
    assert not any(label.endswith("%") and int(label.split("%")[0].split(".")[0]) > 100
                   for label in labels if label[:1].isdigit() and "%" in label)


def test_funnel_shares_of_a_non_nested_funnel_are_all_of_the_base() -> None:
    # Converted is not a subset of clicked: with nested=False it is a share of delivered only.
    labels = texts(parse(charts.funnel([("Sent", 50), ("Delivered", 40), ("Opened", 20), ("Clicked", 4),
                                        ("Converted", 6)], base=1, nested=False, width=360)))
    assert {"50% of delivered", "10% of delivered", "15% of delivered"} <= set(labels)
    assert not any("of clicked" in label or "of opened" in label for label in labels)
    assert not any(label.endswith("…") for label in labels), "the shares fit a phone-width funnel uncut"


# ----------------------------------------------------------------------------- stacked bars

def test_stacked_bars_stack_each_categorys_series_with_its_total_on_top() -> None:
    weeks = [date(2026, 11, 2), date(2026, 11, 9), date(2026, 11, 16)]
    root = parse(charts.stacked_bars(weeks, {"landing": [2, 0, 1], "google": [1, 3, 0], "none": [0, 0, 0]},
                                     title="New leads", width=360))
    segments = find(root, "rect", "segment")
    assert len(segments) == 4, "no segment for a zero"
    assert [element.text for element in find(root, "text", "total")] == ["3", "3", "1"]
    labels = texts(root)
    assert {"2 Nov", "9 Nov", "16 Nov", "landing", "google"} <= set(labels)
    assert "none" not in labels, "a series of zeros is left out of the legend"
    assert "0.5" not in labels and "1.5" not in labels, "counts get whole-number ticks"
    tooltips = [segment.find(f"{NS}title").text for segment in segments]
    assert "9 Nov, google: 3" in tooltips
    # The first week's stack: google sits on landing.
    first = [s for s in segments if s.find(f"{NS}title").text.startswith("2 Nov")]
    landing, google = sorted(first, key=lambda s: -float(s.get("y")))
    assert float(google.get("y")) + float(google.get("height")) == pytest.approx(float(landing.get("y")))
    assert "landing 3; google 4" in root.get("aria-label")


def test_stacked_bars_label_every_other_category_when_crowded_and_always_the_newest() -> None:
    weeks = [date(2026, 9, 7) + timedelta(weeks=n) for n in range(12)]
    labels = texts(parse(charts.stacked_bars(weeks, {"a": list(range(12))}, width=300)))
    shown = [label for label in labels if label.endswith(("Sep", "Oct", "Nov"))]
    assert "23 Nov" in shown and 3 <= len(shown) < 12


def test_stacked_bars_of_nothing_and_of_mismatched_lengths() -> None:
    assert "chart-empty" in parse(charts.stacked_bars([], {})).get("class")
    assert "chart-empty" in parse(charts.stacked_bars(["a"], {"x": [0]})).get("class")
    with pytest.raises(ValueError):
        charts.stacked_bars(["a", "b"], {"x": [1]})


# ----------------------------------------------------------------------------- comparison

def test_lift_chart_draws_both_rates_and_the_difference_with_its_interval() -> None:
    result = compare(120, 1000, 80, 1000)
    root = parse(charts.lift_chart(result, treatment="Men's email", control="No email"))
    assert len(find(root, "rect", "bar")) == 2
    assert len(find(root, "circle", "difference")) == 1
    assert len(find(root, "path", "interval")) == 1
    spelled = [text for text in texts(root) if "interval" in text][0]
    assert spelled.startswith("+4.0 pp, 95% interval +1.4 pp to +6.6 pp (excludes 0)")
    assert "p = 0.003" in spelled
    assert "Men's email − No email" in texts(root)


def test_lift_chart_writes_the_p_value_as_the_verdicts_do_and_wraps_the_sentence() -> None:
    from content.experiments import format_p

    result = compare(2, 6, 1, 4)
    assert result.p_value > 0.1
    root = parse(charts.lift_chart(result, width=360, difference_label="Lift"))
    lines = [element.text for element in find(root, "text", "spelled")]
    assert len(lines) >= 2, "a narrow chart wraps the sentence instead of cutting it"
    assert not any(line.endswith("…") for line in lines)
    spelled = " ".join(lines)
    assert format_p(result.p_value) == "p = 0.78" and "p = 0.78" in spelled
    assert f"p = {result.p_value:.3f}" not in spelled
    assert "Lift" in texts(root)


def test_the_difference_axis_stays_within_100_points() -> None:
    # 5 of 5 against 1 of 5: the Wald interval reached +155 pp and the axis ran to +150 pp.
    root = parse(charts.lift_chart(compare(5, 5, 1, 5)))
    ticks = [text for text in texts(root) if text.endswith(" pp") and "," not in text]
    assert ticks and all(abs(float(tick.removesuffix(" pp").replace("−", "-"))) <= 100 for tick in ticks), ticks


def test_charts_write_percentages_as_the_desk_pages_do() -> None:
    from content.dashboard import format_rate

    for value in (0.0, 0.0004, 0.001, 0.003, 0.042, 0.0999, 0.0996, 0.1, 0.173, 0.5, 1.0, 1.5):
        assert charts.percent(value) == format_rate(value), value
    assert [charts.percent(v) for v in (0, 0.091, 0.17)] == ["0%", "9.1%", "17%"]


def test_comparison_draws_per_group_intervals_and_a_difference_alone() -> None:
    root = parse(charts.comparison([("A", 0.05, 0.04, 0.06), ("B", 0.06, 0.05, 0.07), ("C", 0.03)]))
    assert len(find(root, "rect", "bar")) == 3
    assert len(find(root, "path", "interval")) == 2
    alone = parse(charts.comparison([], difference=(-0.004, -0.012, 0.004)))
    assert any("(includes 0)" in text for text in texts(alone))


# ----------------------------------------------------------------------------- model charts

def test_roc_curve_runs_from_corner_to_corner_with_auc_and_diagonal() -> None:
    root = parse(charts.roc_curve([(0.4, 0.9), (0.1, 0.6), (math.nan, 0.2)], 0.87))
    points = find(root, "polyline", "series")[0].get("points").split()
    assert len(points) == 4
    diagonal = [line for line in find(root, "line") if line.get("stroke-dasharray") == "4 4"][0]
    assert points[0] == f"{diagonal.get('x1')},{diagonal.get('y1')}"
    assert points[-1] == f"{diagonal.get('x2')},{diagonal.get('y2')}"
    assert "AUC 0.870" in texts(root)


def test_calibration_sizes_markers_by_count() -> None:
    root = parse(charts.calibration([(0.1, 0.08, 400), (0.5, 0.55, 100), (0.9, 0.85, None), (0.8, 0.7, 25)]))
    bins = find(root, "circle", "bin")
    assert len(bins) == 3
    radii = [float(circle.get("r")) for circle in bins]
    assert radii == sorted(radii, reverse=True)
    assert {"n=400", "n=100", "n=25"} <= set(texts(root))


def test_sparkline_skips_gaps() -> None:
    root = parse(charts.sparkline([3, None, 5, math.nan, 4]))
    assert len(find(root, "polyline")[0].get("points").split()) == 3
    assert len(find(parse(charts.sparkline([7])), "circle")) == 1


# ----------------------------------------------------------------------------- ticks

@pytest.mark.parametrize(("low", "high", "ticks"), [
    (0, 100, [0, 20, 40, 60, 80, 100]),
    (0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1]),
    (0, 7, [0, 2, 4, 6, 8]),
    (3, 97, [0, 20, 40, 60, 80, 100]),
    (-0.013, 0.021, [-0.02, -0.01, 0, 0.01, 0.02, 0.03]),
    (1200, 48000, [0, 10000, 20000, 30000, 40000, 50000]),
    (0, 0, [0, 0.2, 0.4, 0.6, 0.8, 1]),
    (100, 0, [0, 20, 40, 60, 80, 100]),
])
def test_nice_ticks(low: float, high: float, ticks: list[float]) -> None:
    assert charts.nice_ticks(low, high) == ticks


@pytest.mark.parametrize(("low", "high", "ticks"), [
    (0, 3, [0, 1, 2, 3]),
    (0, 1, [0, 1]),
    (0, 0, [0, 1]),
    (0, 7, [0, 2, 4, 6, 8]),
    (0, 140, [0, 50, 100, 150]),
])
def test_nice_ticks_for_counts_are_whole_numbers(low: float, high: float, ticks: list[float]) -> None:
    assert charts.nice_ticks(low, high, integer=True) == ticks


def test_count_charts_have_no_fractional_ticks() -> None:
    bar = texts(parse(charts.bar_chart(["a", "b"], [1, 2])))
    assert "0.5" not in bar and "1.5" not in bar and {"0", "1", "2"} <= set(bar)
    line = texts(parse(charts.line_chart({"a": [(0, 1), (1, 2)]})))
    assert "0.5" not in line and "1.5" not in line


def test_bar_chart_of_all_zeros_can_say_so() -> None:
    root = parse(charts.bar_chart(["a", "b"], [0, 0], zero_message="No lead won yet"))
    assert "No lead won yet" in texts(root) and not find(root, "rect", "bar")
    assert "chart-empty" in root.get("class")


def test_nice_ticks_of_nonsense_is_empty() -> None:
    assert charts.nice_ticks(math.nan, 1) == []
    assert charts.nice_ticks(0, math.inf) == []


# ----------------------------------------------------------------------------- the PDF

def test_every_chart_renders_through_weasyprint_without_fetching_anything() -> None:
    from pypdf import PdfReader
    from weasyprint import HTML

    fetched: list[str] = []

    def refuse(url: str, *args: object, **kwargs: object) -> dict:
        fetched.append(url)
        raise ValueError(f"charts must not fetch {url}")

    body = "".join(f"<h3>{name}</h3>{svg}" for name, svg in all_charts(HOSTILE[0]).items())
    html = f"<html><head><style>{charts.CHART_CSS}</style></head><body>{body}</body></html>"
    pdf = HTML(string=html, url_fetcher=refuse).write_pdf()
    assert fetched == []
    assert pdf.startswith(b"%PDF")
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert "alert(1)" in text
