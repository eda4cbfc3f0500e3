"""Scoring against the database: CRM import, training and promotion, rescoring, hot crossings."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from landing.tables import Event, Lead
from scoring.importer import ImportOptions, ImportProblem
from scoring.service import BECAME_HOT, import_leads, rescore_all, rescore_lead, train
from scoring.tables import LeadAttribute, Score, ScoreHistory, ScoringModel
from tests.integration.test_capture_loop import submit


def crm_export(path: Path, rows: int = 300, seed: int = 5, bad_emails: int = 0) -> Path:
    """A CRM export whose outcome depends on its columns; every third row has an email."""
    rng = random.Random(seed)
    lines = ["Email,Visits,Plan,Region,Converted,Notes after call"]
    for i in range(rows):
        visits = rng.randint(0, 12)
        plan = rng.choice(["free", "pro", "team"])
        chance = 0.1 + 0.06 * visits + (0.2 if plan == "team" else 0)
        converted = "Yes" if rng.random() < min(chance, 0.95) else "No"
        email = f"lead{i}@example.com" if i % 3 == 0 else ""
        if i < bad_emails:
            email = f"broken{i}@"
        lines.append(f"{email},{visits},{plan},{rng.choice(['north', 'south'])},{converted},{'called' if converted == 'Yes' else ''}")
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_import_types_columns_labels_rows_and_keeps_history_leads_unmailed(tmp_path: Path) -> None:
    path = crm_export(tmp_path / "crm.csv", rows=90)
    report = await import_leads(ImportOptions(path, outcome="Converted", email_column="Email",
                                              exclude=("Notes after call",), topic="Consulting"))
    assert (report.rows, report.created, report.historical) == (90, 90, 60)
    assert report.labelled == 90 and report.skipped == []
    lead = await Lead.objects().output(load_json=True).get(Lead.email == "lead3@example.com")
    assert lead.historical is False and lead.stage in ("won", "lost")
    assert isinstance(lead.attributes["Visits"], float) and lead.attributes["Plan"] in ("free", "pro", "team")
    assert "Notes after call" not in lead.attributes, "an excluded column is never stored"
    assert await Lead.count().where(Lead.historical == True) == 60  # noqa: E712
    kinds = {r["name"]: (r["kind"], r["excluded"]) for r in await LeadAttribute.select()}
    assert kinds["Visits"] == ("numeric", False) and kinds["Plan"] == ("categorical", False)
    assert kinds["Notes after call"][1] is True

    # Importing again updates the leads that have an email, and adds the anonymous rows again.
    again = await import_leads(ImportOptions(path, outcome="Converted", email_column="Email"))
    assert (again.updated, again.created) == (30, 60)


async def test_rows_that_cannot_be_imported_are_reported_and_the_rest_land(tmp_path: Path) -> None:
    path = crm_export(tmp_path / "crm.csv", rows=30, bad_emails=2)
    report = await import_leads(ImportOptions(path, outcome="Converted", email_column="Email"))
    assert len(report.skipped) == 2
    assert report.skipped[0].startswith("line 2: This address is not valid")
    assert await Lead.count() == 28


async def test_a_refused_import_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    path = crm_export(tmp_path / "crm.csv", rows=40)
    with pytest.raises(ImportProblem, match="--positive 'Maybe' never occurs"):
        await import_leads(ImportOptions(path, outcome="Converted", positive="Maybe"))
    assert await Lead.count() == 0

    # A failure half way through (the database, a crash) leaves no half-imported file.
    import scoring.service

    real_insert = Lead.insert
    calls = {"n": 0}

    def failing_insert(*rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real_insert(*rows)

    monkeypatch.setattr(scoring.service.Lead, "insert", failing_insert)
    with pytest.raises(RuntimeError, match="disk full"):
        await import_leads(ImportOptions(path, outcome="Converted"), batch=10)
    monkeypatch.undo()
    assert await Lead.count() == 0


async def test_training_with_no_labels_stays_on_rules_and_says_so(client, catalog) -> None:
    await submit(client, "seo", email="nolabel@example.com", consent="on")
    report = await train()
    assert report.trained is False and report.labels == 0
    assert "no labelled leads yet" in report.notes[0] and "scoring stays on rules" in report.notes[0]
    assert await ScoringModel.count() == 0


async def test_training_validates_both_algorithms_and_promotes_only_a_better_model(tmp_path: Path) -> None:
    await import_leads(ImportOptions(crm_export(tmp_path / "crm.csv", rows=400), outcome="Converted",
                                     email_column="Email", exclude=("Notes after call",)))
    first = await train()
    assert first.trained and first.promoted and first.labels == 400
    cv = first.metrics["cv"]
    for algorithm in ("lightgbm", "logistic"):
        assert set(cv[algorithm]) >= {"roc_auc", "pr_auc", "log_loss", "brier", "calibration", "lift_top_decile"}
        assert 0.5 < cv[algorithm]["roc_auc"] <= 1
    assert first.algorithm == max(("lightgbm", "logistic"), key=lambda a: cv[a]["roc_auc"]), "the better of the two"
    assert "skipped" in first.metrics["holdout_scheme"], "an import has no times that differ"
    stored = await ScoringModel.objects().output(load_json=True).get(ScoringModel.version == first.version)
    assert stored.active and stored.artifact and stored.spec["numeric"] == ["Visits"]
    assert "Notes after call" not in stored.spec["categorical"]

    # The same data again: the candidate is exactly as good as the active model's recipe
    # retrained on the same folds, so it replaces it (new labels refresh the model).
    second = await train(now=datetime.now(timezone.utc) + timedelta(seconds=2))
    assert second.trained and second.promoted
    assert second.metrics["active"]["cv_roc_auc"] == second.metrics["cv"][second.algorithm]["roc_auc"]

    # Without its strongest column the candidate is worse than the active recipe on the
    # same folds: it is kept, with its metrics, but not promoted.
    third = await train(now=datetime.now(timezone.utc) + timedelta(seconds=4), exclude=("Visits",))
    assert third.trained and not third.promoted
    assert any(note.startswith("not promoted") for note in third.notes)
    active = await ScoringModel.select(ScoringModel.version).where(ScoringModel.active == True)  # noqa: E712
    assert [r["version"] for r in active] == [second.version]
    assert await ScoringModel.count() == 3


async def test_a_new_event_rescores_and_crossing_into_hot_emits_one_event(client, catalog) -> None:
    await submit(client, "seo", email="warm@example.com", consent="on")
    lead = await Lead.objects().get(Lead.email == "warm@example.com")
    seo = lead.topic
    scores = await rescore_lead(lead.id)
    # Demo rules: asking for an ebook (10) and a landing page view (3); the demo topics' threshold is 30.
    assert scores[seo] == pytest.approx(13, abs=0.1)
    score = await Score.objects().output(load_json=True).where((Score.lead == lead.id) & (Score.topic == seo)).first()
    assert not score.hot and score.model_version == "rules"
    assert {f["factor"] for f in score.explanation} == {"Asked for an ebook", "Viewed a landing page"}

    await Event.insert(Event(type="page_view", lead=lead.id, topic=seo, properties={"url": "https://x.example/pricing"}))
    scores = await rescore_lead(lead.id)
    assert scores[seo] > 30
    await rescore_lead(lead.id)
    hot_events = await Event.select(Event.topic).where((Event.lead == lead.id) & (Event.type == BECAME_HOT))
    assert hot_events == [{"topic": seo}], "one became-hot event, however often it is rescored"
    history = await ScoreHistory.select(ScoreHistory.combined).where(
        (ScoreHistory.lead == lead.id) & (ScoreHistory.topic == seo)).order_by(ScoreHistory.id)
    assert len(history) == 2, "history records changes, not every rescore"


async def test_decay_shows_when_everyone_is_rescored_later(client, catalog) -> None:
    await submit(client, "seo", email="fading@example.com", consent="on")
    lead = await Lead.objects().get(Lead.email == "fading@example.com")
    await rescore_all()
    before = (await Score.objects().where((Score.lead == lead.id) & (Score.topic == lead.topic)).first()).combined
    report = await rescore_all(now=datetime.now(timezone.utc) + timedelta(days=60))
    assert report.leads == 1 and report.scores == 3
    after = (await Score.objects().where((Score.lead == lead.id) & (Score.topic == lead.topic)).first()).combined
    # The form (10 points, half-life 30 days) is worth a quarter after 60 days, the
    # page view (3 points, half-life 14 days) about a twentieth.
    assert before == pytest.approx(13, abs=0.1)
    assert after == pytest.approx(10 / 4 + 3 * 0.5 ** (60 / 14), rel=0.05)
    assert await ScoreHistory.count().where(ScoreHistory.lead == lead.id) >= 2


async def test_an_active_model_scores_live_leads_and_explains_them(client, catalog, tmp_path: Path) -> None:
    await import_leads(ImportOptions(crm_export(tmp_path / "crm.csv", rows=300), outcome="Converted"))
    trained = await train()
    assert trained.promoted
    await submit(client, "seo", email="live@example.com", consent="on")
    lead = await Lead.objects().get(Lead.email == "live@example.com")
    await rescore_lead(lead.id, explain_model="all")
    score = await Score.objects().output(load_json=True).where((Score.lead == lead.id) & (Score.topic == lead.topic)).first()
    assert score.model_version == trained.version and 0 < score.model_probability < 1
    sources = {f["source"] for f in score.explanation}
    assert sources == {"rule", "model"}
    assert all(isinstance(f["text"], str) and f["text"] for f in score.explanation)
    assert all("effect" in f for f in score.explanation)


async def test_the_same_crm_id_twice_in_one_file_is_one_lead(tmp_path: Path) -> None:
    path = tmp_path / "crm.csv"
    path.write_text("id,email,won\nA1,first@example.com,yes\nA1,second@example.com,no\nB2,b@example.com,no\n")
    report = await import_leads(ImportOptions(path, outcome="won", id_column="id"))
    assert (report.created, report.updated, report.skipped) == (2, 1, [])
    assert await Lead.count().where(Lead.external_id == "A1") == 1


async def test_the_positive_value_is_matched_whatever_its_case(tmp_path: Path) -> None:
    path = tmp_path / "crm.csv"
    path.write_text("email,outcome\na@example.com,Yes\nb@example.com,yes\nc@example.com,No\n")
    report = await import_leads(ImportOptions(path, outcome="outcome", email_column="email", positive="yes"))
    assert (report.labelled, report.positives) == (3, 2)
    stages = {r["email"]: r["stage"] for r in await Lead.select(Lead.email, Lead.stage)}
    assert stages == {"a@example.com": "won", "b@example.com": "won", "c@example.com": "lost"}
