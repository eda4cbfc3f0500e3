"""Per-step results and the chain's experiments, on a chain whose history is known by construction."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from content.experiments import compare
from content.results import chain_results
from content.tables import Chain, Delivery, DeliveryStatus, Enrollment, Step
from landing.tables import Conversion, Lead, Topic

T0 = datetime(2026, 11, 1, 9, tzinfo=timezone.utc)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


async def test_step_results_attribute_to_the_last_letter_and_experiments_compare_the_groups(catalog) -> None:
    topic = await Topic.objects().get(Topic.slug == "seo")
    chain = await Chain.objects().get(Chain.topic == topic.id)
    await Step.update({Step.subject_b: "Another subject"}).where((Step.chain == chain.id) & (Step.position == 1))
    steps = {s.position: s.id for s in await Step.objects().where(Step.chain == chain.id)}

    async def enrolled(name: str, group: str, variant: str = "A", exit_reason: str = "") -> tuple[int, int]:
        lead = Lead(email=f"{name}@example.com")
        await lead.save()
        enrollment = Enrollment(lead=lead.id, chain=chain.id, group=group, variant=variant, enrolled_at=at(0),
                                exit_reason=exit_reason)
        await enrollment.save()
        return lead.id, enrollment.id

    async def delivered(enrollment: int, position: int, hours: float, variant: str = "", status=DeliveryStatus.sent,
                        opened: bool = False, clicked: bool = False) -> None:
        await Delivery(enrollment=enrollment, step=steps[position], status=status, variant=variant,
                       sent_at=at(hours) if status == DeliveryStatus.sent else None,
                       opened_at=at(hours + 0.5) if opened else None, clicked_at=at(hours + 0.6) if clicked else None).save()

    # Control: four leads, one converts.
    for n in range(4):
        lead, _ = await enrolled(f"control{n}", "control")
        if n == 0:
            await Conversion(lead=lead, occurred_at=at(30)).save()
    # Treatment: three in A, three in B.
    a1, e_a1 = await enrolled("a1", "treatment", "A")
    a2, e_a2 = await enrolled("a2", "treatment", "A", exit_reason="unsubscribe")
    a3, e_a3 = await enrolled("a3", "treatment", "A")
    b1, e_b1 = await enrolled("b1", "treatment", "B")
    b2, e_b2 = await enrolled("b2", "treatment", "B")
    b3, e_b3 = await enrolled("b3", "treatment", "B")
    await delivered(e_a1, 1, 1, "A", opened=True)
    await delivered(e_a2, 1, 1, "A")
    await delivered(e_a3, 1, 1, "A")
    await delivered(e_b1, 1, 1, "B", opened=True, clicked=True)
    await delivered(e_b2, 1, 1, "B", opened=True, clicked=True)
    await delivered(e_b3, 1, 1, "B")
    await delivered(e_a1, 2, 25)
    await delivered(e_a2, 2, 25)
    await delivered(e_b1, 2, 25)
    await delivered(e_b2, 2, 25)
    await delivered(e_a3, 2, 25, status=DeliveryStatus.bounced)
    await Conversion(lead=a1, occurred_at=at(10)).save()   # after letter 1, before letter 2: letter 1 (A)
    await Conversion(lead=b1, occurred_at=at(40)).save()   # after letter 2
    await Conversion(lead=b3, occurred_at=at(-5)).save()   # before joining: not the chain's

    results = await chain_results(chain.id)
    by_key = {(r.position, r.version): r for r in results.steps}
    one_a, one_b, two = by_key[(1, "A")], by_key[(1, "B")], by_key[(2, "")]
    assert (one_a.sent, one_a.delivered, one_a.opened, one_a.clicked, one_a.converted) == (3, 3, 1, 0, 1)
    assert (one_b.sent, one_b.delivered, one_b.opened, one_b.clicked, one_b.converted) == (3, 3, 2, 2, 0)
    assert (two.sent, two.delivered, two.bounced, two.unsubscribed, two.converted) == (4, 4, 1, 1, 1)
    assert {(5, "hot"), (5, "cold")} <= set(by_key), "the offer step reports its two versions"
    assert results.enrolled == {"treatment": 6, "control": 4}
    assert results.converted == {"treatment": 2, "control": 1}
    assert results.experiment == compare(2, 6, 1, 4, 0.95)
    assert results.variants == compare(1, 3, 1, 3, 0.95)
    assert results.variant_clicks == {1: compare(2, 3, 0, 3, 0.95)}


async def test_a_chain_without_a_control_group_has_no_experiment(catalog) -> None:
    chain = await Chain.objects().first()
    results = await chain_results(chain.id)
    assert results.experiment is None and results.variants is None
    assert all(r.sent == 0 for r in results.steps)
