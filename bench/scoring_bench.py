"""Scoring benchmark: training, batch rescoring and single-lead rescoring on synthetic data,
each beside LightGBM's own predict measured in the same run (the ceiling).

    cd /work/main && .venv/bin/python -m bench.scoring_bench                       # 100k leads, 3M events
    cd /work/main && .venv/bin/python -m bench.scoring_bench --leads 5000 --events 150000   # a quick check

It migrates a fresh SQLite database in a temporary DATA_DIR (or --data-dir), writes topics,
leads, events and scoring rules straight into it with the stdlib sqlite3 module, then times
`scoring.service.train`, `rescore_all` and `rescore_lead` and prints the figures. Nothing is
asserted: the numbers are for people to read.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import platform
import pstats
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script (python bench/scoring_bench.py) as well as with -m
    sys.path.insert(0, str(ROOT))

DAY = 86400.0
HISTORY_DAYS = 180
EVENT_TYPES = ("page_view", "download", "email_open", "email_click", "form_submit")
TOPICS = (
    # id, name, slug, description, hot_threshold
    (1, "Solar panels", "solar", "Rooftop solar for homes", 55.0),
    (2, "Heat pumps", "heat-pumps", "Air and ground source heat pumps", 60.0),
    (3, "Insulation", "insulation", "Walls, lofts and windows", 65.0),
)
SINGLE_LEAD_GOAL_MS = 5.0
BATCH_GOAL_S = 60.0
BATCH_GOAL_SIZE = (100_000, 3_000_000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scoring_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=100_000, help="leads to generate (default 100000)")
    parser.add_argument("--events", type=int, default=3_000_000, help="events to generate (default 3000000)")
    parser.add_argument("--single", type=int, default=1000, help="leads rescored one by one after a new event (default 1000)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="DATA_DIR to use (must be empty or missing); default: a temporary directory, removed after")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--profile", action="store_true",
                        help="also run cProfile around train, rescore_all and the single-lead loop and print the top entries")
    return parser.parse_args(argv)


def configure(data_dir: Path) -> Path:
    """The environment leadkiln reads, set before any of its modules is imported."""
    data_dir.mkdir(parents=True, exist_ok=True)
    database = data_dir / "leadkiln.db"
    os.environ["DATA_DIR"] = str(data_dir)
    # The default DATABASE_URL for this DATA_DIR, spelled out: a `.env` in the working
    # directory must not point the benchmark at a real database.
    os.environ["DATABASE_URL"] = f"sqlite:///{database}"
    os.environ["PICCOLO_CONF"] = "server.piccolo_conf"
    os.environ.setdefault("SECRET_KEY", "bench-secret-key-not-for-production")
    return database


# Synthetic data


def _stamps(seconds: np.ndarray) -> list[str]:
    """Epoch seconds as Piccolo writes a Timestamptz on SQLite: '2026-10-12 07:25:16.636732+00:00'."""
    text = np.datetime_as_string((seconds * 1e6).astype(np.int64).astype("datetime64[us]"), unit="us")
    return [s.replace("T", " ") + "+00:00" for s in text.tolist()]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Generated:
    leads: int
    events: int
    won: int
    lost: int
    seconds: float
    breakdown: dict[str, float] = field(default_factory=dict)


def generate(database: Path, n_leads: int, n_events: int, seed: int, now: datetime) -> Generated:
    """Topics, leads, events and rules, written in one transaction with executemany.

    Each lead has a hidden engagement `z`: it raises the lead's number of events, its share
    of downloads, clicks, forms and pricing visits on its own topic, and its chance to be won.
    So the label follows the events, as it should for the model to learn anything.
    """
    started = time.perf_counter()
    breakdown: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    now_s = now.timestamp()

    # Leads
    t = time.perf_counter()
    ids = np.arange(1, n_leads + 1, dtype=np.int64)
    z = rng.standard_normal(n_leads)
    age_days = rng.uniform(0.0, HISTORY_DAYS, n_leads)
    created = now_s - age_days * DAY
    topic = rng.integers(1, len(TOPICS) + 1, n_leads)
    won = rng.random(n_leads) < _sigmoid(1.6 * z - 2.9)
    lost = ~won & (rng.random(n_leads) < 0.22 * _sigmoid(-z))
    labelled = won | lost
    # The outcome comes 3 to 90 days after the lead arrived (never in the future).
    outcome_days = np.minimum(rng.uniform(3.0, 90.0, n_leads), age_days * 0.9)
    outcome = created + outcome_days * DAY
    stage = np.where(won, "won", np.where(lost, "lost", "new"))
    sources = np.array(["landing", "webinar", "referral", "import"])[rng.choice(4, n_leads, p=[0.6, 0.15, 0.15, 0.1])]
    utm_source = np.array(["google", "linkedin", "newsletter", "direct"])[rng.integers(0, 4, n_leads)]
    utm_medium = np.array(["cpc", "social", "email", "organic"])[rng.integers(0, 4, n_leads)]
    industries = np.array(["retail", "manufacturing", "education", "health", "finance", "public", "hospitality", "other"])
    industry = industries[rng.integers(0, len(industries), n_leads)]
    roles = np.array(["owner", "director", "manager", "engineer", "assistant"])
    role = roles[rng.choice(len(roles), n_leads, p=[0.25, 0.15, 0.3, 0.2, 0.1])]
    company_size = np.round(np.exp(rng.normal(3.0 + 0.3 * z, 1.2))).astype(np.int64) + 1
    pages_per_visit = np.round(rng.gamma(2.0, 1.5, n_leads), 2)
    created_text = _stamps(created)
    outcome_text = _stamps(outcome)
    lead_rows = [
        (int(ids[i]), f"lead{ids[i]}@bench.example", str(role[i]), str(sources[i]),
         f'{{"utm_source": "{utm_source[i]}", "utm_medium": "{utm_medium[i]}"}}',
         f'{{"company_size": {company_size[i]}, "pages_per_visit": {pages_per_visit[i]}, '
         f'"industry": "{industry[i]}", "role": "{role[i]}"}}',
         str(stage[i]), int(topic[i]), outcome_text[i] if labelled[i] else None, created_text[i], created_text[i])
        for i in range(n_leads)
    ]
    breakdown["leads: arrays"] = time.perf_counter() - t

    # Events: more for engaged and older leads, between the lead's arrival and now.
    t = time.perf_counter()
    weight = np.exp(0.6 * z) * (age_days + 7.0)
    lead_of = rng.choice(n_leads, n_events, p=weight / weight.sum())
    span = now_s - 1.0 - created[lead_of]
    ts = created[lead_of] + rng.random(n_events) * np.maximum(span, 0.0)
    order = np.argsort(ts, kind="stable")  # ids in time order, as a live server appends them
    ts, lead_of = ts[order], lead_of[order]
    ze = z[lead_of]
    base = np.log(np.array([0.45, 0.07, 0.30, 0.12, 0.06]))
    tilt = np.array([0.0, 0.8, 0.0, 0.6, 0.7])
    logits = base[None, :] + ze[:, None] * tilt[None, :]
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    cumulative = np.cumsum(probabilities, axis=1)
    type_code = (rng.random(n_events)[:, None] > cumulative).sum(axis=1).clip(0, len(EVENT_TYPES) - 1)
    # Topic: none (10%), else the lead's own topic, more often for an engaged lead, else another one.
    r = rng.random(n_events)
    own = topic[lead_of]
    other = (own - 1 + rng.integers(1, len(TOPICS), n_events)) % len(TOPICS) + 1
    on_topic = 0.1 + 0.55 + 0.25 * np.tanh(ze)
    event_topic = np.where(r < 0.1, 0, np.where(r < on_topic, own, other))
    # Properties: page views name their URL, pricing more often for engaged leads.
    page_view = type_code == 0
    u = rng.random(n_events)
    pricing = page_view & (u < 0.05 + 0.15 * _sigmoid(ze))
    blog = page_view & ~pricing & (u < 0.5)
    slugs = np.array([""] + [slug for _, _, slug, _, _ in TOPICS])
    props = np.full(n_events, "{}", dtype=object)
    props[pricing] = '{"url": "/pricing"}'
    props[blog] = np.char.add(np.char.add('{"url": "/blog/', slugs[np.maximum(event_topic[blog], 1)]), '"}').astype(object)
    names = np.array(EVENT_TYPES, dtype=object)[type_code]
    occurred = _stamps(ts)
    topic_values = [None if x == 0 else x for x in event_topic.tolist()]
    event_rows = zip(names.tolist(), topic_values, (lead_of + 1).tolist(), props.tolist(), occurred)
    breakdown["events: arrays"] = time.perf_counter() - t

    t = time.perf_counter()
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous = OFF")  # this connection only: the file is scratch
        connection.execute("PRAGMA cache_size = -1000000")
        index_sql = [row[0] for row in connection.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'event' AND sql IS NOT NULL")]
        index_names = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'event' AND sql IS NOT NULL")]
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO topic (id, name, slug, description, hot_threshold, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            [(i, name, slug, text, threshold, _stamps(np.array([now_s - 200 * DAY]))[0])
             for i, name, slug, text, threshold in TOPICS])
        connection.executemany(
            "INSERT INTO lead (id, email, role, source, first_touch, attributes, stage, topic, outcome_at, created_at, "
            "updated_at, historical, confirmed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 1)", lead_rows)
        breakdown["leads: insert"] = time.perf_counter() - t
        t = time.perf_counter()
        # Indexes are dropped for the bulk insert and rebuilt from their own SQL: same schema, faster.
        for name in index_names:
            connection.execute(f'DROP INDEX "{name}"')
        connection.executemany(
            "INSERT INTO event (type, topic, lead, properties, occurred_at) VALUES (?, ?, ?, ?, ?)", event_rows)
        breakdown["events: insert"] = time.perf_counter() - t
        t = time.perf_counter()
        for sql in index_sql:
            connection.execute(sql)
        breakdown["events: indexes"] = time.perf_counter() - t
        connection.executemany(
            "INSERT INTO scoring_rule (name, kind, event_type, topic, property_match, points, daily_cap, half_life_days, "
            "active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
            [
                ("Downloaded an ebook", "event", "download", None, "{}", 15.0, None, 30.0),
                ("Visited pricing", "event", "page_view", None, '{"url": "*pricing*"}', 10.0, None, 14.0),
                ("Viewed a page", "event", "page_view", None, "{}", 1.0, 10, 14.0),
                ("Opened a letter", "event", "email_open", None, "{}", 2.0, 3, 14.0),
                ("Clicked a letter link", "event", "email_click", None, "{}", 5.0, None, 21.0),
                ("Filled in a form", "event", "form_submit", None, "{}", 8.0, None, 30.0),
                ("Solar guide downloaded", "event", "download", 1, "{}", 5.0, None, 60.0),
                ("Company of 50 or more", "profile", "", None, '{"company_size": ">=50"}', 5.0, None, 30.0),
            ])
        connection.execute("COMMIT")
    finally:
        connection.close()
    return Generated(n_leads, n_events, int(won.sum()), int(lost.sum()), time.perf_counter() - started, breakdown)


# Measuring


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    values = np.array(samples) * 1000.0
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
            "p99": float(np.percentile(values, 99)), "max": float(values.max()), "mean": float(values.mean())}


def line(label: str, value: str) -> None:
    print(f"  {label:<48} {value}")


class Profiler:
    """cProfile around a block when --profile is on; prints the top entries by cumulative time."""

    def __init__(self, enabled: bool, title: str, limit: int = 25) -> None:
        self.enabled, self.title, self.limit = enabled, title, limit
        self.profile = cProfile.Profile() if enabled else None

    def __enter__(self) -> "Profiler":
        if self.profile:
            self.profile.enable()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.profile:
            self.profile.disable()
            out = io.StringIO()
            stats = pstats.Stats(self.profile, stream=out).strip_dirs().sort_stats("cumulative")
            stats.print_stats(self.limit)
            print(f"\n--- profile: {self.title} (cumulative) ---")
            print("\n".join(out.getvalue().splitlines()[4:]))
            out = io.StringIO()
            pstats.Stats(self.profile, stream=out).strip_dirs().sort_stats("tottime").print_stats(self.limit)
            print(f"\n--- profile: {self.title} (own time) ---")
            print("\n".join(out.getvalue().splitlines()[4:]))


async def bench(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from landing.tables import Event, Lead
    from scoring import service
    from scoring import model as model_module
    from scoring.engine import FeatureSpec, feature_matrix, rule_points
    from scoring.model import ALGORITHMS, LightGBMModel

    rng = np.random.default_rng(args.seed + 1)

    async def training_breakdown() -> None:
        """train()'s parts timed apart: loading, the matrix, and one fit of each algorithm on all
        labels (train() does 7 of each: 5 CV folds at 80%, the time holdout at 80%, the final fit)."""
        t = time.perf_counter()
        data = await service.training_set(service.utcnow())
        t_set = time.perf_counter() - t
        spec, _ = FeatureSpec.fit(data.leads, set(), len(data.events) > 0)
        t = time.perf_counter()
        matrix = service.training_matrix(spec, data)
        t_matrix = time.perf_counter() - t
        fits = {}
        for name, algorithm in ALGORITHMS.items():
            t = time.perf_counter()
            await asyncio.to_thread(algorithm.fit, matrix, data.labels, spec)
            fits[name] = time.perf_counter() - t
        # The same LightGBM fit with one thread: OpenMP threads that wait on a busy core spin.
        original = model_module.lightgbm_params
        model_module.lightgbm_params = lambda rows: original(rows) | {"num_threads": 1}
        try:
            t = time.perf_counter()
            await asyncio.to_thread(LightGBMModel.fit, matrix, data.labels, spec)
            fits["lightgbm, num_threads=1"] = time.perf_counter() - t
        finally:
            model_module.lightgbm_params = original
        line("  its parts: training_set (load)", f"{t_set:.1f} s ({len(data.labels):,} leads, {len(data.events):,} events)")
        line("  its parts: training_matrix", f"{t_matrix:.1f} s ({matrix.shape[0]:,} x {matrix.shape[1]})")
        line("  its parts: one fit on all labels", ", ".join(f"{k} {v:.1f} s" for k, v in fits.items()))
        results["train_one_fit"] = fits["lightgbm"]

    # 3. Training
    print("\n[3] training: scoring.service.train()")
    with Profiler(args.profile, "train"):
        started = time.perf_counter()
        report = await service.train()
        train_seconds = time.perf_counter() - started
    results["train_seconds"] = train_seconds
    line("wall time", f"{train_seconds:.1f} s (report: {report.seconds:.1f} s)")
    line("labelled leads / positives", f"{report.labels} / {report.positives}")
    if not report.trained:
        line("not trained", "; ".join(report.notes))
    else:
        cv = report.metrics["cv"]
        holdout = report.metrics.get("holdout") or {}
        for name in ("lightgbm", "logistic"):
            m = cv[name]
            line(f"CV {name}", f"ROC-AUC {m['roc_auc']:.4f}  PR-AUC {m['pr_auc']:.4f}  log loss {m['log_loss']:.4f}  "
                 f"lift@10% {m['lift_top_decile']}")
            if name in holdout:
                line(f"time holdout {name}", f"ROC-AUC {holdout[name]['roc_auc']:.4f}")
        line("CV scheme", report.metrics["cv_scheme"])
        line("chosen / version / promoted", f"{report.algorithm} / {report.version} / {report.promoted}")
        importances = report.metrics.get("importances") or {}
        top = list(importances.items())[:6]
        if top:
            total = sum(importances.values()) or 1.0
            line("top features (share of gain)", ", ".join(f"{k} {v / total:.0%}" for k, v in top))
        for note in report.notes:
            line("note", note)
    results["cv"] = report.metrics.get("cv", {}) if report.trained else {}
    results["promoted"] = report.promoted
    if report.trained:
        await training_breakdown()
    line("load average (1 min) after training", f"{os.getloadavg()[0]:.2f}")

    # 4. Batch rescoring
    print("\n[4] batch rescoring: scoring.service.rescore_all()")
    with Profiler(args.profile, "rescore_all"):
        batch = await service.rescore_all()
    results["batch_seconds"] = batch.seconds
    line("first run (every score inserted)",
         f"{batch.seconds:.1f} s, {batch.leads} leads, {batch.scores} scores, {batch.became_hot} became hot, "
         f"{batch.leads / batch.seconds:,.0f} leads/s, model {batch.model_version}")
    batch2 = await service.rescore_all()
    results["batch2_seconds"] = batch2.seconds
    line("second run (every score updated)",
         f"{batch2.seconds:.1f} s, {batch2.leads / batch2.seconds:,.0f} leads/s, {batch2.became_hot} became hot")

    # The ceiling: the same feature matrices, and only LightGBM's predict over them.
    active = await service.active_model(fresh=True)
    rules = await service.load_rules()
    topics = await service.load_topics()
    property_types = {r.event_type for r in rules if r.property_match and r.kind == "event"}
    bounds = await Lead.raw("SELECT MIN(id) AS low, MAX(id) AS high FROM lead WHERE historical = {}", False)
    low, high = bounds[0]["low"], bounds[0]["high"]
    now = service.utcnow()
    t_load = t_features = t_rules = t_compute = 0.0
    n_events_loaded = 0
    matrices: dict[int, list[np.ndarray]] = {t.id: [] for t in topics}
    for start in range(low, high + 1, service.CHUNK):
        t = time.perf_counter()
        leads, events, _ = await service.load_batch("id >= {} AND id < {} AND historical = {}",
                                                    [start, start + service.CHUNK, False], now, property_types)
        t_load += time.perf_counter() - t
        if not len(leads):
            continue
        n_events_loaded += len(events)
        t = time.perf_counter()
        rule_points(rules, leads, events, [tp.id for tp in topics])
        t_rules += time.perf_counter() - t
        if active is not None:
            t = time.perf_counter()
            for tp in topics:
                matrices[tp.id].append(feature_matrix(active.model.spec, leads, events, tp.id))
            t_features += time.perf_counter() - t
        t = time.perf_counter()
        service.compute_scores(leads, events, rules, topics, active)
        t_compute += time.perf_counter() - t
    line("load_batch alone (SQL + arrays)", f"{t_load:.1f} s ({n_events_loaded:,} events)")
    line("rule_points alone", f"{t_rules:.1f} s")
    line("feature_matrix alone (all topics)", f"{t_features:.1f} s")
    line("compute_scores (rules+features+predict+explain)", f"{t_compute:.1f} s")
    line("writing scores (rescore_all - load - compute)", f"{batch.seconds - t_load - t_compute:.1f} s first run, "
         f"{batch2.seconds - t_load - t_compute:.1f} s second run")
    results.update(batch_load=t_load, batch_compute=t_compute)
    ceiling = None
    one_row = None
    booster = active.model.booster if active is not None and isinstance(active.model, LightGBMModel) else None
    if active is None:
        line("ceiling", "no active model: nothing to predict")
    else:
        full = {tid: np.vstack(parts) for tid, parts in matrices.items() if parts}
        predict = (lambda x: booster.predict(x, num_threads=1)) if booster is not None else active.model.predict
        kind = "Booster.predict, num_threads=1" if booster is not None else f"{active.model.algorithm} predict (not LightGBM)"
        predict(next(iter(full.values()))[:100])
        t = time.perf_counter()
        for matrix in full.values():
            predict(matrix)
        ceiling = time.perf_counter() - t
        rows = sum(len(m) for m in full.values())
        line(f"ceiling: {kind}", f"{ceiling:.2f} s for {rows:,} rows x {next(iter(full.values())).shape[1]} features "
             f"({rows / ceiling:,.0f} rows/s)")
        if booster is not None:
            t = time.perf_counter()
            for matrix in full.values():
                booster.predict(matrix)
            line("  (same, all threads)", f"{time.perf_counter() - t:.2f} s")
        line("rescore_all / ceiling", f"{batch.seconds / ceiling:.0f}x first run, {batch2.seconds / ceiling:.0f}x second run")
        one_row = next(iter(full.values()))[:1].copy()
        del full
    results["batch_ceiling"] = ceiling
    del matrices

    # 5. Single-lead rescoring after a new event
    n_single = min(args.single, high - low + 1)
    print(f"\n[5] single-lead rescoring after a new event: {n_single} leads")
    topic_ids = [tp.id for tp in topics]

    async def new_event(lead_id: int) -> float:
        kind = str(rng.choice(["download", "email_click", "page_view", "email_open"]))
        properties = {"url": "/pricing"} if kind == "page_view" and rng.random() < 0.5 else {}
        t = time.perf_counter()
        await Event.insert(Event(type=kind, lead=lead_id, topic=int(rng.choice(topic_ids)), properties=properties,
                                 occurred_at=service.utcnow()))
        return time.perf_counter() - t

    async def single_run(explain: str, count: int) -> tuple[list[float], list[float]]:
        chosen = rng.choice(np.arange(low, high + 1), size=count, replace=False).tolist()
        for lead_id in chosen[:10]:  # warm-up: model cache, imports, statement caches
            await service.rescore_lead(int(lead_id), explain_model=explain)
        inserts, rescores = [], []
        for lead_id in chosen:
            inserts.append(await new_event(int(lead_id)))
            t = time.perf_counter()
            await service.rescore_lead(int(lead_id), explain_model=explain)
            rescores.append(time.perf_counter() - t)
        return inserts, rescores

    with Profiler(args.profile, "rescore_lead x N (explain none)"):
        inserts, none_times = await single_run("none", n_single)
    p_none = percentiles_ms(none_times)
    p_insert = percentiles_ms(inserts)
    results["single"] = p_none
    line('rescore_lead(explain_model="none")',
         f"median {p_none['median']:.2f} ms, p90 {p_none['p90']:.2f} ms, p99 {p_none['p99']:.2f} ms, "
         f"max {p_none['max']:.2f} ms")
    line("  (the Event.insert before it, not counted)", f"median {p_insert['median']:.2f} ms, p99 {p_insert['p99']:.2f} ms")
    _, all_times = await single_run("all", n_single)
    p_all = percentiles_ms(all_times)
    results["single_all"] = p_all
    line('rescore_lead(explain_model="all")', f"median {p_all['median']:.2f} ms, p99 {p_all['p99']:.2f} ms")

    # Where one rescore_lead's time goes: its own steps, timed apart, on other leads.
    steps: dict[str, list[float]] = {k: [] for k in ("load_rules", "load_topics", "active_model", "load_batch",
                                                      "compute_scores", "_write_scores")}
    for lead_id in rng.choice(np.arange(low, high + 1), size=min(200, n_single), replace=False).tolist():
        await new_event(int(lead_id))
        stamp = service.utcnow()
        t = time.perf_counter()
        step_rules = await service.load_rules()
        t1 = time.perf_counter()
        step_topics = await service.load_topics()
        t2 = time.perf_counter()
        step_active = await service.active_model()
        t3 = time.perf_counter()
        types = {r.event_type for r in step_rules if r.property_match and r.kind == "event"}
        leads, events, _ = await service.load_batch("id = {}", [int(lead_id)], stamp, types)
        t4 = time.perf_counter()
        rows = service.compute_scores(leads, events, step_rules, step_topics, step_active, "none")
        t5 = time.perf_counter()
        await service._write_scores(rows, stamp)
        t6 = time.perf_counter()
        for key, value in zip(steps, (t1 - t, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            steps[key].append(value)
    # What one query costs on this engine (Piccolo on SQLite opens a connection per query).
    samples = []
    for _ in range(200):
        t = time.perf_counter()
        await Lead.raw("SELECT 1")
        samples.append(time.perf_counter() - t)
    line("one Piccolo query (SELECT 1), for scale", f"median {np.median(samples) * 1000:.2f} ms, "
         f"p99 {np.percentile(samples, 99) * 1000:.2f} ms")
    line("its steps, median (p99) ms", ", ".join(f"{k} {np.median(v) * 1000:.2f} ({np.percentile(v, 99) * 1000:.2f})"
                                                 for k, v in steps.items()))

    # The ceiling: a bare Booster.predict of one numpy row.
    if one_row is not None:
        predict_one = (lambda: booster.predict(one_row, num_threads=1)) if booster is not None else (
            lambda: active.model.predict(one_row))
        for _ in range(50):
            predict_one()
        samples = []
        for _ in range(1000):
            t = time.perf_counter()
            predict_one()
            samples.append(time.perf_counter() - t)
        us = np.array(samples) * 1e6
        results["single_ceiling_us"] = {"median": float(np.median(us)), "p99": float(np.percentile(us, 99))}
        line("ceiling: Booster.predict of one row" if booster is not None else "ceiling: predict of one row",
             f"median {np.median(us):.0f} us, p99 {np.percentile(us, 99):.0f} us")
        line("rescore_lead(none) / ceiling", f"median {p_none['median'] * 1000 / np.median(us):.0f}x, "
             f"p99 {p_none['p99'] * 1000 / np.percentile(us, 99):.0f}x")
        if booster is not None:
            samples = []
            for _ in range(300):
                t = time.perf_counter()
                booster.predict(one_row, pred_contrib=True, num_threads=1)
                samples.append(time.perf_counter() - t)
            line("  (pred_contrib of one row, for the explanation)", f"median {np.median(samples) * 1e6:.0f} us")


def summary(args: argparse.Namespace, generated: Generated, results: dict[str, Any]) -> None:
    full_size = (args.leads, args.events) == BATCH_GOAL_SIZE
    print("\n[6] summary" + ("" if full_size else
                             f"  (batch goal is for {BATCH_GOAL_SIZE[0]:,} leads / {BATCH_GOAL_SIZE[1]:,} events; "
                             f"this run has {args.leads:,} / {args.events:,})"))
    rows = [("measure", "goal", "measured", "ceiling (same run)", "ratio", "meets goal")]
    single = results.get("single")
    ceiling_us = results.get("single_ceiling_us")
    if single:
        rows.append(("single lead p99, no explanation", f"<= {SINGLE_LEAD_GOAL_MS:g} ms", f"{single['p99']:.2f} ms",
                     f"{ceiling_us['p99']:.0f} us" if ceiling_us else "-",
                     f"{single['p99'] * 1000 / ceiling_us['p99']:.0f}x" if ceiling_us else "-",
                     "yes" if single["p99"] <= SINGLE_LEAD_GOAL_MS else "NO"))
        rows.append(("single lead median, no explanation", "-", f"{single['median']:.2f} ms",
                     f"{ceiling_us['median']:.0f} us" if ceiling_us else "-",
                     f"{single['median'] * 1000 / ceiling_us['median']:.0f}x" if ceiling_us else "-", ""))
    all_ = results.get("single_all")
    if all_:
        rows.append(('single lead p99, explain "all"', "(info)", f"{all_['p99']:.2f} ms", "-", "-", ""))
    if "batch_seconds" in results:
        ceiling = results.get("batch_ceiling")
        goal = f"<= {BATCH_GOAL_S:g} s" + ("" if full_size else " at 100k/3M")
        rows.append(("batch rescore_all, all leads (first run)", goal, f"{results['batch_seconds']:.1f} s",
                     f"{ceiling:.2f} s" if ceiling else "-", f"{results['batch_seconds'] / ceiling:.0f}x" if ceiling else "-",
                     ("yes" if results["batch_seconds"] <= BATCH_GOAL_S else "NO") if full_size else "n/a"))
        rows.append(("batch rescore_all, all leads (second run)", goal, f"{results['batch2_seconds']:.1f} s",
                     f"{ceiling:.2f} s" if ceiling else "-", f"{results['batch2_seconds'] / ceiling:.0f}x" if ceiling else "-",
                     ("yes" if results["batch2_seconds"] <= BATCH_GOAL_S else "NO") if full_size else "n/a"))
        rows.append(("  of which load_batch", "-", f"{results['batch_load']:.1f} s", "-", "-", ""))
    if "train_seconds" in results:
        cv = results.get("cv") or {}
        auc = (f"AUC lgbm {cv['lightgbm']['roc_auc']:.3f} / logit {cv['logistic']['roc_auc']:.3f}"
               if cv else "not trained")
        one_fit = results.get("train_one_fit")
        rows.append(("training (train(): load, CV, holdout, fit)", "(reported)", f"{results['train_seconds']:.1f} s",
                     f"one LightGBM fit {one_fit:.1f} s" if one_fit else "-",
                     f"{results['train_seconds'] / one_fit:.0f}x" if one_fit else "-",
                     ("promoted; " if results.get("promoted") else "not promoted; ") + auc))
    rows.append(("data generation (sqlite3)", "-", f"{generated.seconds:.1f} s", "", "", ""))
    rows.append(("load average (1 min) at the end", "-", f"{os.getloadavg()[0]:.2f}", f"{os.cpu_count()} cores", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="leadkiln-bench-")) if temporary else args.data_dir.resolve()
    if not temporary and data_dir.exists() and any(data_dir.iterdir()):
        sys.exit(f"scoring_bench: --data-dir {data_dir} is not empty: give a new or empty directory")
    database = configure(data_dir)

    import lightgbm

    from server.cli import run_migrations  # reads settings: only now that the environment is set

    print("leadkiln scoring benchmark")
    line("python / numpy / lightgbm / sqlite", f"{platform.python_version()} / {np.__version__} / {lightgbm.__version__} / "
         f"{sqlite3.sqlite_version}")
    line("cores / load average (1 min)", f"{os.cpu_count()} / {os.getloadavg()[0]:.2f}")
    line("data dir", str(data_dir))
    line("size", f"{args.leads:,} leads, {args.events:,} events, {args.single} single-lead rescorings")

    print("\n[1] migrations")
    t = time.perf_counter()
    run_migrations()
    line("run_migrations()", f"{time.perf_counter() - t:.1f} s")

    print("\n[2] synthetic data (stdlib sqlite3, executemany, one transaction)")
    now = datetime.now(timezone.utc)
    generated = generate(database, args.leads, args.events, args.seed, now)
    line("generation", f"{generated.seconds:.1f} s ({generated.leads:,} leads: {generated.won:,} won, "
         f"{generated.lost:,} lost; {generated.events:,} events)")
    line("  breakdown", ", ".join(f"{k} {v:.1f} s" for k, v in generated.breakdown.items()))
    line("database file", f"{database.stat().st_size / 1e6:,.0f} MB")

    results: dict[str, Any] = {}
    try:
        asyncio.run(bench(args, results))
    finally:
        summary(args, generated, results)
        if temporary and not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        elif temporary:
            print(f"\nkept {data_dir}")


if __name__ == "__main__":
    main()
