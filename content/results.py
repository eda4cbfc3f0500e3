"""What the content team sees of a chain: a step previewed or test-sent, each step's results,
and whether the chain (and each A/B variant) works, against its control group."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from content.chains import instant
from content.delivery import choose_offer, lead_context, step_version
from content.experiments import Comparison, compare
from content.letters import RenderedLetter, render_letter
from content.mail import Envelope, Relay, address_of, build_message
from content.tables import (
    Chain,
    Delivery,
    DeliveryStatus,
    Enrollment,
    EnrollmentGroup,
    Offer,
    OfferKind,
    Step,
    StepKind,
)
from landing.tables import Conversion, Lead, Topic
from landing.tokens import preferences_url, unsubscribe_url
from server.settings import get_settings

SAMPLE_LEAD = Lead(id=0, email="alex@example.com", first_name="Alex", last_name="Kim", company="Acme", role="Founder")


async def _letter_source(step: Step, chain: Chain, lead: Lead, variant: str, offer: str) -> tuple[str, str, str]:
    """Subject, body and offer link the step sends this lead; `offer` is hot, cold or auto (by score)."""
    if step.kind != StepKind.offer:
        subject, body, _ = step_version(step, variant)
        return subject, body, ""
    if offer in (OfferKind.hot, OfferKind.cold):
        chosen = await Offer.objects().where((Offer.chain == chain.id) & (Offer.kind == offer)).first()
    else:
        chosen = await choose_offer(chain, lead.id) if lead.id else None
    if chosen is None:
        return step.subject, step.body_markdown, ""
    return chosen.subject, chosen.body_markdown, chosen.call_to_action_url


async def preview_step(step_id: int, lead_id: int | None = None, variant: str = "A", offer: str = "auto") -> RenderedLetter:
    """The step as this lead (or a sample lead) would get it; raises LetterTemplateError."""
    step = await Step.objects().get(Step.id == step_id)
    chain = await Chain.objects().get(Chain.id == step.chain)
    topic = await Topic.objects().where(Topic.id == chain.topic).first()
    lead = SAMPLE_LEAD
    if lead_id is not None:
        lead = await Lead.objects().where(Lead.id == lead_id).first() or SAMPLE_LEAD
    subject, body, offer_url = await _letter_source(step, chain, lead, variant, offer)
    context = lead_context(lead, topic, chain) | {
        "unsubscribe_url": unsubscribe_url(lead.id or 0), "preferences_url": preferences_url(lead.id or 0),
        "offer": {"url": offer_url}}
    return render_letter(subject, body, context, where=f"step {step.position}")


async def send_test_letter(step_id: int, to_address: str, relay: Relay, lead_id: int | None = None,
                           variant: str = "A", offer: str = "auto") -> str:
    """Send the step to a staff address, marked as a test; nothing enters the send ledger.
    Returns the relay's reply (SmtpReplyError and friends propagate)."""
    letter = await preview_step(step_id, lead_id, variant, offer)
    step = await Step.objects().get(Step.id == step_id)
    chain = await Chain.objects().get(Chain.id == step.chain)
    settings = get_settings()
    envelope = Envelope(
        chain.sender_name or "leadkiln",
        chain.sender_email or address_of(settings.mail_from),
        to_address,
        f"<lk.test.{uuid.uuid4().hex}@{settings.mail_domain}>",
        unsubscribe_url(0),
        preferences_url(0),
    )
    test = RenderedLetter(subject=f"[Test] {letter.subject}", text=letter.text, html=letter.html)
    return await relay.send(build_message(test, envelope))


@dataclass
class StepResult:
    """One step's funnel; `version` is "" (one text), "A"/"B" (an A/B test) or "hot"/"cold" (the offer)."""

    position: int
    kind: str
    version: str
    subject: str = ""
    sent: int = 0
    """Handed to the relay (accepted, or maybe: `unknown`)."""
    delivered: int = 0
    """Accepted by the relay."""
    bounced: int = 0
    opened: int = 0
    clicked: int = 0
    unsubscribed: int = 0
    """Unsubscribed (or left the topic) after this was their last letter."""
    converted: int = 0
    """Converted after this was their last letter (last-touch attribution)."""


@dataclass
class ChainResults:
    chain_id: int
    enrolled: dict[str, int]
    """Leads per group: treatment and control."""
    converted: dict[str, int]
    """Leads per group with a conversion after they joined."""
    experiment: Comparison | None
    """Treatment against the control group (None without a control group)."""
    variants: Comparison | None
    """B against A for leads in treatment (None when no step has a B version)."""
    steps: list[StepResult] = field(default_factory=list)
    variant_clicks: dict[int, Comparison] = field(default_factory=dict)
    """Per A/B step: B's click rate against A's, among delivered letters."""
    variant_groups: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per variant (A, B) of the treatment group: (leads, leads with a conversion after they joined)."""


async def chain_results(chain_id: int, confidence: float = 0.95) -> ChainResults:
    """Per-step funnel and the chain's experiments, from the ledger, enrollments and conversions."""
    enrollments = await Enrollment.select(
        Enrollment.id, Enrollment.lead, Enrollment.group, Enrollment.variant, Enrollment.exit_reason, Enrollment.enrolled_at,
    ).where(Enrollment.chain == chain_id)
    steps = await Step.select(Step.id, Step.position, Step.kind, Step.subject, Step.subject_b, Step.body_markdown_b).where(
        Step.chain == chain_id).order_by(Step.position)
    deliveries = await Delivery.select(
        Delivery.enrollment, Delivery.step, Delivery.status, Delivery.variant, Delivery.offer_kind,
        Delivery.sent_at, Delivery.opened_at, Delivery.clicked_at,
    ).where(Delivery.step.is_in([s["id"] for s in steps] or [-1]))
    lead_ids = list({e["lead"] for e in enrollments})
    first_conversion: dict[int, list[datetime]] = defaultdict(list)
    if lead_ids:
        for row in await Conversion.select(Conversion.lead, Conversion.occurred_at).where(Conversion.lead.is_in(lead_ids)):
            first_conversion[row["lead"]].append(instant(row["occurred_at"]))

    position_of = {s["id"]: s["position"] for s in steps}
    results: dict[tuple[int, str], StepResult] = {}
    for s in steps:
        if s["kind"] == StepKind.offer:
            versions = ["hot", "cold"]
        elif s["subject_b"].strip() or s["body_markdown_b"].strip():
            versions = ["A", "B"]
        else:
            versions = [""]
        for version in versions:
            results[(s["position"], version)] = StepResult(s["position"], s["kind"], version, s["subject"])

    by_enrollment: dict[int, list[dict]] = defaultdict(list)
    for d in deliveries:
        position = position_of[d["step"]]
        version = d["offer_kind"] or d["variant"] or ""
        result = results.get((position, version)) or results.setdefault(
            (position, version), StepResult(position, "", version))
        if d["status"] in (DeliveryStatus.sent, DeliveryStatus.unknown):
            result.sent += 1
        result.delivered += d["status"] == DeliveryStatus.sent
        result.bounced += d["status"] == DeliveryStatus.bounced
        result.opened += d["opened_at"] is not None
        result.clicked += d["clicked_at"] is not None
        if d["status"] == DeliveryStatus.sent and d["sent_at"] is not None:
            by_enrollment[d["enrollment"]].append({"key": (position, version), "sent_at": instant(d["sent_at"])})

    enrolled = {"treatment": 0, "control": 0}
    converted = {"treatment": 0, "control": 0}
    by_variant = {"A": [0, 0], "B": [0, 0]}  # [enrolled, converted] among treatment
    for e in enrollments:
        joined = instant(e["enrolled_at"])
        conversions = sorted(t for t in first_conversion.get(e["lead"], []) if t >= joined)
        group = e["group"]
        enrolled[group] = enrolled.get(group, 0) + 1
        converted[group] = converted.get(group, 0) + bool(conversions)
        if group == EnrollmentGroup.treatment:
            tally = by_variant.setdefault(e["variant"] or "A", [0, 0])
            tally[0] += 1
            tally[1] += bool(conversions)
        sent = sorted(by_enrollment.get(e["id"], []), key=lambda x: x["sent_at"])
        if not sent:
            continue
        if e["exit_reason"] in ("unsubscribe", "left the topic"):
            results[sent[-1]["key"]].unsubscribed += 1
        if conversions:
            before = [x for x in sent if x["sent_at"] <= conversions[0]]
            if before:
                results[before[-1]["key"]].converted += 1

    experiment = None
    if enrolled["control"] and enrolled["treatment"]:
        experiment = compare(converted["treatment"], enrolled["treatment"], converted["control"], enrolled["control"],
                             confidence)
    ab_steps = [key for key in results if key[1] == "B"]
    variants = None
    if ab_steps and by_variant["A"][0] and by_variant["B"][0]:
        variants = compare(by_variant["B"][1], by_variant["B"][0], by_variant["A"][1], by_variant["A"][0], confidence)
    variant_clicks = {}
    for position, _ in ab_steps:
        a, b = results[(position, "A")], results[(position, "B")]
        if a.delivered and b.delivered:
            variant_clicks[position] = compare(b.clicked, b.delivered, a.clicked, a.delivered, confidence)
    ordered = sorted(results.values(), key=lambda r: (r.position, r.version))
    return ChainResults(chain_id, enrolled, converted, experiment, variants, ordered, variant_clicks,
                        {variant: (tally[0], tally[1]) for variant, tally in by_variant.items()})
