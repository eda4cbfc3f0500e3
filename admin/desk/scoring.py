"""Desk page: the scoring model and its history, its charts, score bands against outcomes, and rule reach."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from arq.connections import ArqRedis
from litestar import Controller, Request, get
from litestar.response import Template
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_404_NOT_FOUND

from admin import charts
from admin.desk.auth import page_context, requires
from admin.roles import EVERYONE
from scoring.report import (
    BANDS,
    METRICS,
    REACH_DAYS,
    ClosedLoop,
    ModelVersion,
    calibration_points,
    closed_loop,
    importances,
    last_training,
    model_history,
    model_version,
    roc_points,
    rule_reach,
    validation_rows,
)
from scoring.service import load_topics

METRIC_NAMES = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "log_loss": "Log loss", "brier": "Brier",
                "lift_top_decile": "Top-decile lift"}


def number(value: Any, digits: int = 3) -> str:
    """A metric for a table cell: fixed decimals, a dash when missing."""
    if value is None or isinstance(value, bool):
        return "–"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def when(moment: datetime | None) -> str:
    if moment is None:
        return "–"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def model_charts(model: ModelVersion) -> dict[str, Any]:
    """ROC and calibration charts of the chosen algorithm's cross-validation, and the importances."""
    cv = model.validation("cv")
    points = roc_points(model)
    found = importances(model)
    return {
        "roc": charts.roc_curve(points, cv.get("roc_auc"), title=f"ROC curve, {model.version} (cross-validated)")
        if points else None,
        "calibration": charts.calibration(calibration_points(model), title=f"Calibration, {model.version} (cross-validated)"),
        "importances": found,
        "importance_chart": charts.bar_chart([name for name, _ in found.rows], [value for _, value in found.rows],
                                             title=f"Feature importances, {model.version}") if found.rows else None,
    }


def loop_chart(loop: ClosedLoop, topic_name: str) -> Any:
    return charts.bar_chart([f"{band.label} (n={band.leads})" for band in loop.bands],
                            [band.win_rate for band in loop.bands],
                            title=f"Won share per score band, {topic_name}",
                            value_format=lambda value: f"{100 * value:.0f}%")


def reach_chart(reach: list) -> Any:
    return charts.bar_chart([item.rule.name for item in reach], [item.leads for item in reach],
                            title=f"Leads touched per rule, last {REACH_DAYS} days")


class ScoringController(Controller):
    """The Scoring page: counts and model metrics only, no personal data, so every role may read it."""

    path = "/desk"
    guards = [requires(EVERYONE)]

    @get("/scoring")
    async def scoring(self, request: Request, arq: ArqRedis | None, version: str | None = None,
                      topic: str | None = None) -> Template:
        """The active (or a chosen) model with its metrics and charts, the history, the closed loop and rule reach."""
        topic_rows = await load_topics()
        topic_names = {t.id: t.name for t in topic_rows}
        problems: list[str] = []
        topic_id: int | None = None
        if topic and topic != "all":
            if topic.isdigit() and int(topic) in topic_names:
                topic_id = int(topic)
            else:
                problems.append("There is no such topic: the closed loop shows all topics.")
        model = await model_version(version or None)
        if version and model is None:
            return Template("desk/scoring/missing.html", status_code=HTTP_404_NOT_FOUND,
                            context=page_context(request, version=version))
        history = await model_history()
        loop = await closed_loop(topic_id)
        reach = await rule_reach()
        loop_topic = topic_names.get(topic_id, "all topics") if topic_id is not None else "all topics"
        return Template("desk/scoring/page.html", status_code=HTTP_400_BAD_REQUEST if problems else 200,
                        context=page_context(
            request, model=model, viewing_active=model is not None and model.active,
            rows=validation_rows(model.metrics, model.chosen) if model else [],
            charts=model_charts(model) if model else {}, history=history, metrics=METRICS, metric_names=METRIC_NAMES,
            loop=loop, loop_chart=loop_chart(loop, loop_topic), loop_topic=loop_topic, topics=topic_rows,
            topic_id=topic_id, topic_names=topic_names, bands=BANDS, reach=reach, reach_chart=reach_chart(reach),
            reach_days=REACH_DAYS, last_run=await last_training(arq), problems=problems, number=number,
            percent=percent, when=when, chart_css=charts.CHART_CSS))


HANDLERS = [ScoringController]
