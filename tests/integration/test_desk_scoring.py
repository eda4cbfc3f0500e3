"""The Scoring desk page (model, history, charts, closed loop, rule reach) and the admin's train and render forms."""

from __future__ import annotations

import os
import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from arq import create_pool
from arq.connections import RedisSettings

from content.ebooks import EbookUnavailable, rendered_dir, rendered_ebook
from content.tables import Ebook
from landing.tables import Event, Lead, Topic
from scoring.importer import ImportOptions
from scoring.report import closed_loop, rule_reach
from scoring.service import forget_cached, import_leads, rescore_lead, train
from scoring.tables import ScoringModel, ScoringRule
from tests.integration.conftest import run_worker_burst
from tests.staff import admin_headers, desk_login, make_staff

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
TRAIN_URL = "/admin/api/forms/train-a-model-now/"
RENDER_URL = "/admin/api/forms/render-an-ebook-again/"


def crm_export(path: Path, rows: int = 120, seed: int = 11, extra_column: str = "Score card") -> Path:
    """A labelled CRM export whose outcome follows its columns; `extra_column` is noise the
    model may still use, so its name reaches the importances."""
    rng = random.Random(seed)
    lines = [f"Email,Visits,Plan,{extra_column},Converted"]
    for i in range(rows):
        visits = rng.randint(0, 12)
        plan = rng.choice(["free", "pro", "team"])
        converted = "Yes" if rng.random() < min(0.1 + 0.06 * visits + (0.2 if plan == "team" else 0), 0.95) else "No"
        email = f"crm{i}@example.com" if i % 3 == 0 else ""
        lines.append(f"{email},{visits},{plan},{rng.randint(0, 50) + visits},{converted}")
    path.write_text("\n".join(lines) + "\n")
    return path


async def labelled_leads(tmp_path: Path, **options) -> None:
    await import_leads(ImportOptions(crm_export(tmp_path / "crm.csv", **options), outcome="Converted",
                                     email_column="Email"))


async def login_as(client, role: str) -> dict[str, str]:
    await make_staff(f"{role}-user", role)
    await desk_login(client, f"{role}-user")
    return await admin_headers(client)


async def page(client, query: str = "") -> str:
    response = await client.get(f"/desk/scoring{query}", headers={"accept": "text/html"})
    assert response.status_code == 200, response.text
    return response.text


def section(html: str, ident: str) -> str:
    """The markup of the element with this id, up to the next section's start."""
    start = html.index(f'id="{ident}"')
    end = html.find("<section", start)
    return html[start:end if end != -1 else len(html)]


# ----------------------------------------------------------------------------- access


async def test_anonymous_people_are_sent_to_the_login_and_other_clients_refused(client) -> None:
    response = await client.get("/desk/scoring?topic=all", headers={"accept": "text/html"})
    assert response.status_code == 303
    assert response.headers["location"] == "/desk/login?next=/desk/scoring%3Ftopic%3Dall"
    assert (await client.get("/desk/scoring", headers={"accept": "application/json"})).status_code == 401


@pytest.mark.parametrize("role", ["sales", "content", "admin"])
async def test_every_role_reads_the_page_and_without_a_model_it_says_so(client, role) -> None:
    await login_as(client, role)
    html = await page(client)
    assert "No model yet" in html and "Scoring runs on the rules alone" in html
    assert "No model has been trained yet." in html


async def test_an_unknown_version_is_404(client) -> None:
    await login_as(client, "sales")
    response = await client.get("/desk/scoring?version=m2020-nope", headers={"accept": "text/html"})
    assert response.status_code == 404 and "There is no model version “m2020-nope”" in response.text


# ----------------------------------------------------------------------------- the model


async def test_the_active_model_its_metrics_history_charts_and_importances(client, tmp_path) -> None:
    await labelled_leads(tmp_path)
    first = await train()
    second = await train(now=datetime.now(timezone.utc) + timedelta(seconds=2))
    assert first.trained and second.trained and second.promoted
    await login_as(client, "content")
    html = await page(client)

    assert f"Active model {second.version}" in html
    cv = second.metrics["cv"][second.algorithm]
    table = section(html, "model-heading")
    for key in ("roc_auc", "pr_auc", "log_loss", "brier"):
        assert f">{cv[key]:.3f}<" in table, key
    assert f">{cv['lift_top_decile']:.2f}<" in table
    other = "logistic" if second.algorithm == "lightgbm" else "lightgbm"
    assert f">{second.metrics['cv'][other]['roc_auc']:.3f}<" in table, "the baseline is shown beside the chosen one"

    history = section(html, "history-heading")
    assert history.index(second.version) < history.index(first.version), "newest first"
    assert history.count('class="badge hot">active<') == 1
    assert "promoted, since replaced" in history

    roc, calibration = section(html, "roc"), section(html, "calibration")
    assert "<svg" in roc and "ROC curve" in roc and f"AUC {cv['roc_auc']:.3f}" in roc
    assert "<svg" in calibration and 'class="bin"' in calibration and "10 bins" in calibration
    importances = section(html, "importances")
    assert "<svg" in importances and "num:Visits" in importances

    # An older version on request; one trained before ROC points were stored says so.
    older = await page(client, f"?version={first.version}")
    assert f"Model version {first.version}" in older and "an older version" in older
    row = await ScoringModel.objects().output(load_json=True).get(ScoringModel.version == first.version)
    for algorithm in row.metrics["cv"]:
        if isinstance(row.metrics["cv"][algorithm], dict):
            row.metrics["cv"][algorithm].pop("roc", None)
    await ScoringModel.update({ScoringModel.metrics: row.metrics}).where(ScoringModel.id == row.id)
    older = await page(client, f"?version={first.version}")
    assert "ROC points not recorded for this version (trained before" in older
    assert "<svg" in section(older, "calibration"), "the calibration table was always stored"


async def test_hostile_feature_rule_and_topic_names_render_inert(client, tmp_path) -> None:
    await Topic.insert(Topic(name=HOSTILE, slug="hostile"))
    await ScoringRule.insert(ScoringRule(name=HOSTILE, event_type="page_view", points=5.0,
                                         property_match={"url": HOSTILE}))
    await labelled_leads(tmp_path, extra_column=HOSTILE)
    report = await train()
    assert report.trained
    await login_as(client, "sales")
    html = await page(client)
    assert HOSTILE not in html
    assert f"num:{ESCAPED}" in section(html, "importances"), "the imported column's name is a feature, shown as text"
    rules = section(html, "rules")
    assert ESCAPED in rules and f"url: {ESCAPED}" in rules
    assert f">{ESCAPED}</option>" in html


# ----------------------------------------------------------------------------- the closed loop


async def test_score_bands_count_each_leads_last_score_before_its_outcome(client) -> None:
    audits = (await Topic.insert(Topic(name="Audits", slug="audits")).returning(Topic.id))[0]["id"]
    ads = (await Topic.insert(Topic(name="Ads", slug="ads")).returning(Topic.id))[0]["id"]
    # Ten points per page view, no decay: a lead's score is ten times its page views.
    await ScoringRule.insert(ScoringRule(name="Viewed a page", event_type="page_view", points=10.0, half_life_days=0.0))
    forget_cached()
    now = datetime.now(timezone.utc)
    scored, closed, later = now - timedelta(days=3), now - timedelta(days=2), now - timedelta(days=1)

    async def lead(name: str, views: int, stage: str, scored_at: datetime | None = scored) -> int:
        lead_id = (await Lead.insert(Lead(email=f"{name}@example.com", topic=audits, created_at=scored - timedelta(days=1)))
                   .returning(Lead.id))[0]["id"]
        await Event.insert(*[Event(type="page_view", lead=lead_id, topic=audits, properties={"url": f"/a/{i}"},
                                   occurred_at=scored - timedelta(hours=1, minutes=i)) for i in range(views)])
        if scored_at is not None:
            await rescore_lead(lead_id, now=scored_at)
        if stage != "new":
            await Lead.update({Lead.stage: stage, Lead.outcome_at: closed}).where(Lead.id == lead_id)
        return lead_id

    await lead("a", 1, "won")
    await lead("b", 3, "lost")
    await lead("c", 5, "won")
    await lead("d", 5, "qualified")
    await lead("e", 9, "won")
    late_riser = await lead("f", 1, "won")
    await lead("g", 5, "new")  # no outcome: in no band
    closed_unscored = await lead("h", 3, "won", scored_at=None)
    # After the outcome the late riser keeps reading: its score now is 80, but sales closed it at 10.
    await Event.insert(*[Event(type="page_view", lead=late_riser, topic=audits, occurred_at=closed + timedelta(hours=i + 1))
                         for i in range(7)])
    assert (await rescore_lead(late_riser, now=later))[audits] == 80
    await rescore_lead(closed_unscored, now=later)

    loop = await closed_loop()
    assert [(b.label, b.leads, b.won, b.qualified, b.lost) for b in loop.bands] == [
        ("0–20", 2, 2, 0, 0), ("20–40", 1, 0, 0, 1), ("40–60", 2, 1, 1, 0), ("60–80", 0, 0, 0, 0), ("80–100", 1, 1, 0, 0)]
    assert (loop.with_outcome, loop.unscored) == (7, 1)
    assert [b.win_rate for b in loop.bands] == [1.0, 0.0, 0.5, None, 1.0]
    # On a topic nobody read about, everyone's score was 0.
    on_ads = await closed_loop(ads)
    assert [b.leads for b in on_ads.bands] == [6, 0, 0, 0, 0] and on_ads.bands[0].won == 4

    await login_as(client, "sales")
    html = await page(client)
    bands = section(html, "closed-loop")
    assert re.search(r"<td>0–20</td><td class=\"num\">2</td><td class=\"num\">2</td>", bands)
    assert re.search(r"<td>40–60</td><td class=\"num\">2</td><td class=\"num\">1</td>", bands)
    assert "last combined score before its outcome" in bands and "not its score now" in bands
    assert "7 leads have a recorded outcome; 1 of them had no score" in bands
    assert "<svg" in bands and "Won share per score band" in bands
    assert "@example.com" not in html, "no personal data on this page"
    ads_page = await page(client, f"?topic={ads}")
    assert re.search(r"<td>0–20</td><td class=\"num\">6</td><td class=\"num\">4</td>", section(ads_page, "closed-loop"))
    assert (await client.get("/desk/scoring?topic=999999", headers={"accept": "text/html"})).status_code == 400


# ----------------------------------------------------------------------------- rule reach


async def test_rule_reach_counts_distinct_leads_with_matching_events_in_the_last_week(client) -> None:
    topic = (await Topic.insert(Topic(name="Audits", slug="audits")).returning(Topic.id))[0]["id"]
    rules = {
        "pricing": ScoringRule(name="Viewed pricing", event_type="page_view", points=5.0, property_match={"url": "*/pricing*"}),
        "any": ScoringRule(name="Any page view", event_type="page_view", points=1.0),
        "directors": ScoringRule(name="Directors", kind="profile", property_match={"role": "*director*"}, points=10.0),
        "downloads": ScoringRule(name="Downloads", event_type="download", points=10.0),
        "inactive": ScoringRule(name="Old rule", event_type="page_view", points=1.0, active=False),
    }
    await ScoringRule.insert(*rules.values())
    now = datetime.now(timezone.utc)
    ids = {}
    for name, role in (("x", "IT director"), ("y", "engineer"), ("z", "engineer")):
        ids[name] = (await Lead.insert(Lead(email=f"{name}@example.com", attributes={"role": role}))
                     .returning(Lead.id))[0]["id"]
    await Event.insert(
        Event(type="page_view", lead=ids["x"], topic=topic, properties={"url": "https://a.example/pricing"},
              occurred_at=now - timedelta(days=3)),
        Event(type="page_view", lead=ids["x"], topic=topic, properties={"url": "https://a.example/pricing/team"},
              occurred_at=now - timedelta(days=2)),
        Event(type="page_view", lead=ids["y"], topic=None, properties={"url": "https://a.example/blog"},
              occurred_at=now - timedelta(days=2)),
        # Eight days old: outside the week.
        Event(type="page_view", lead=ids["z"], topic=topic, properties={"url": "https://a.example/pricing"},
              occurred_at=now - timedelta(days=8)),
        # An anonymous visitor's view touches no lead.
        Event(type="page_view", lead=None, topic=topic, properties={"url": "https://a.example/pricing"},
              occurred_at=now - timedelta(days=1)),
    )
    reach = {item.rule.name: item.leads for item in await rule_reach(now)}
    assert reach == {"Viewed pricing": 1, "Any page view": 2, "Directors": 1, "Downloads": 0, "Old rule": 2}

    await login_as(client, "content")
    rules_html = section(await page(client), "rules")
    assert re.search(r"Viewed pricing</td>.*?<td class=\"num\">1</td></tr>", rules_html, re.S)
    assert re.search(r"Any page view</td>.*?<td class=\"num\">2</td></tr>", rules_html, re.S)
    assert "url: */pricing*" in rules_html and 'class="badge">inactive<' in rules_html
    assert "Leads touched per rule" in rules_html


# ----------------------------------------------------------------------------- train a model now


async def test_train_form_is_the_admins_queues_once_and_the_worker_trains(client, tmp_path, sink) -> None:
    for role in ("sales", "content"):
        headers = await login_as(client, role)
        refused = await client.post(TRAIN_URL, headers=headers, json={})
        assert refused.status_code == 403, role
    pool = await create_pool(RedisSettings.from_dsn(os.environ["REDIS_URL"]))
    try:
        assert await pool.queued_jobs() == []

        # Too few labels: the worker's run says why on the Scoring page, and writes no model.
        headers = await login_as(client, "admin")
        queued = await client.post(TRAIN_URL, headers=headers, json={})
        assert queued.status_code == 200 and "Queued: the Scoring page shows the new version" in queued.text
        await run_worker_burst(sink.url)
        assert await ScoringModel.count() == 0
        note = section(await page(client), "last-training")
        assert "no model trained" in note and "no labelled leads yet" in note

        await labelled_leads(tmp_path)
        first = await client.post(TRAIN_URL, headers=headers, json={})
        again = await client.post(TRAIN_URL, headers=headers, json={})
        assert first.status_code == again.status_code == 200
        assert "already queued or running" in again.text
        assert [job.function for job in await pool.queued_jobs()] == ["train_model"], "a double click trains once"
    finally:
        await pool.aclose()
    await run_worker_burst(sink.url)
    [model] = await ScoringModel.select(ScoringModel.version, ScoringModel.active, ScoringModel.labels)
    assert model["active"] and model["labels"] == 120
    html = await page(client)
    assert f"Active model {model['version']}" in html
    assert f"version <a href=\"/desk/scoring?version={model['version']}\">{model['version']}</a>" in section(html, "last-training")


# ----------------------------------------------------------------------------- render an ebook again


async def test_render_form_renders_a_broken_ebook_again_or_says_why(client, catalog, monkeypatch) -> None:
    import content.ebooks

    ebook = await Ebook.objects().get(Ebook.slug == "seo-ebook")

    def broken(document: str) -> bytes:
        raise RuntimeError("the font cache is gone")

    # A rendering that failed is kept until the text is edited...
    monkeypatch.setattr(content.ebooks, "render_pdf", broken)
    with pytest.raises(EbookUnavailable, match="font cache"):
        await rendered_ebook(ebook.id)
    monkeypatch.undo()
    with pytest.raises(EbookUnavailable, match="font cache"):
        await rendered_ebook(ebook.id)

    headers = await login_as(client, "sales")
    assert (await client.post(RENDER_URL, headers=headers, json={"ebook": "seo-ebook"})).status_code == 403

    # ...or until the content team renders it again.
    headers = await login_as(client, "content")
    unknown = await client.post(RENDER_URL, headers=headers, json={"ebook": "no-such-book"})
    assert unknown.status_code == 422 and "No ebook has the slug or title 'no-such-book'" in unknown.text
    still = await Ebook.objects().get(Ebook.id == ebook.id)
    assert "font cache" in still.render_error and still.rendered_at is None, "nothing changed"

    done = await client.post(RENDER_URL, headers=headers, json={"ebook": ebook.title})
    assert done.status_code == 200 and "is rendered again" in done.text, done.text
    fresh = await Ebook.objects().get(Ebook.id == ebook.id)
    assert fresh.render_error == "" and fresh.rendered_at is not None
    assert (rendered_dir() / f"{fresh.content_hash}.pdf").is_file()

    # A rendering that fails again answers with the error; the PDF rendered before is kept for downloads.
    monkeypatch.setattr(content.ebooks, "render_pdf", broken)
    failed = await client.post(RENDER_URL, headers=headers, json={"ebook": "seo-ebook"})
    assert failed.status_code == 422
    assert "could not be rendered: RuntimeError: the font cache is gone" in failed.json()["custom_form_error"]
    assert "font cache" in (await Ebook.objects().get(Ebook.id == ebook.id)).render_error
    assert (rendered_dir() / f"{fresh.content_hash}.pdf").is_file()
