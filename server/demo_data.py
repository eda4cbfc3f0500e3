"""Demo data: three topics, each with an ebook, a landing page, a 5-letter chain and some history."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from content.tables import Chain, ChainStatus, Ebook, LandingPage, Offer, OfferKind, Step, StepKind
from landing.tables import Event, Lead, LeadStage, Topic, UrlTopic
from scoring.tables import ScoringRule
from server.demo_history import seed_history

TOPICS = [
    {
        "name": "SEO", "slug": "seo",
        "ebook": "The 30-minute SEO audit",
        "headline": "Find what keeps your site off page one, in half an hour",
        "bullets": "A checklist you can run today\nThe 12 fixes that move rankings most\nHow to read Search Console without a consultant",
        "offer": "a free SEO diagnostic of your site",
    },
    {
        "name": "Paid ads", "slug": "paid-ads",
        "ebook": "Stop wasting your ad budget",
        "headline": "Cut the 20% of ad spend that brings nothing back",
        "bullets": "Find the campaigns that lose money\nBid rules that protect your margin\nA weekly 15-minute review routine",
        "offer": "a free audit of your ad account",
    },
    {
        "name": "Analytics", "slug": "analytics",
        "ebook": "Analytics that answer questions",
        "headline": "Build the five reports your team will actually read",
        "bullets": "Track what matters, drop the vanity metrics\nA dashboard template\nAttribution without the headache",
        "offer": "a free 30-minute analytics consultation",
    },
]

LETTERS = [
    ("Your ebook: {{ topic.name }} starts here", "Hi {{ lead.first_name | default(\"there\") }},\n\nThanks for downloading our {{ topic.name }} ebook. Start with chapter one: it takes ten minutes.\n\n[Open the guide]({{ site.url }}/l/{{ topic.slug }})\n"),
    ("The one {{ topic.name }} mistake we see every week", "Hi {{ lead.first_name | default(\"there\") }},\n\nMost teams measure the wrong thing first. Here is how to spot it: [the two-minute test]({{ site.url }}/l/{{ topic.slug }}).\n"),
    ("A checklist for your next {{ topic.name }} review", "Hi {{ lead.first_name | default(\"there\") }},\n\n* Look at last month's numbers\n* Pick one thing to fix\n* Measure again in two weeks\n\nThe whole checklist is in the guide: [open it again]({{ site.url }}/l/{{ topic.slug }}).\n"),
    ("How a team like yours doubled results", "Hi {{ lead.first_name | default(\"there\") }},\n\nA short story of a client who fixed their {{ topic.name }} in six weeks: [read how]({{ site.url }}/l/{{ topic.slug }}).\n"),
]


def _ebook_body(spec: dict[str, str]) -> str:
    """A short book: an introduction and one chapter per bullet point, a few paragraphs each."""
    chapters = [f"# Introduction\n\nThis guide is for small teams who want results in {spec['name']} without a "
                "consultant. Each chapter takes ten minutes to read and ends with one thing to do this week.\n"]
    for number, bullet in enumerate(spec["bullets"].splitlines(), start=1):
        chapters.append(
            f"# {number}. {bullet}\n\n"
            f"Most teams skip this step, and it shows in their {spec['name']} numbers. Here is how to do it well.\n\n"
            "## What to look at\n\nStart with last month's figures. Write down the three that moved most, and why "
            "you think they moved. Keep the list short: what you cannot explain in a sentence, you cannot fix.\n\n"
            "## What to do this week\n\n1. Pick one of the three.\n2. Change one thing about it.\n"
            "3. Measure again in two weeks, and keep what worked.\n"
        )
    return "\n".join(chapters)


async def seed_demo(delay_minutes: int = 1, historical_leads: int = 150, seed: int = 7) -> bool:
    """Create the demo content once; returns False if it was already there."""
    if await Topic.exists().where(Topic.slug == TOPICS[0]["slug"]):
        return False
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    topic_ids = []
    async with Topic._meta.db.transaction():
        for spec in TOPICS:
            topic = Topic(name=spec["name"], slug=spec["slug"], description=f"Everything about {spec['name']}.",
                          hot_threshold=30)
            await topic.save()
            topic_ids.append(topic.id)
            ebook = Ebook(title=spec["ebook"], slug=f"{spec['slug']}-ebook", topic=topic.id,
                          subtitle=spec["headline"], author="Maria Lopez, leadkiln", body_markdown=_ebook_body(spec))
            await ebook.save()
            await LandingPage(slug=spec["slug"], title=spec["ebook"], headline=spec["headline"],
                              body_markdown=f"A free, practical guide to **{spec['name']}** for small teams.",
                              description=f"Free ebook: {spec['headline']}.", bullets=spec["bullets"], ebook=ebook.id,
                              form_fields="first_name,company,role",
                              # One page shows double opt-in: the ebook follows a confirmation letter.
                              double_opt_in=spec["slug"] == "analytics").save()
            await UrlTopic(pattern=f"/services/{spec['slug']}*", topic=topic.id).save()
            chain = Chain(name=f"{spec['name']} nurture", topic=topic.id, status=ChainStatus.active, hot_threshold=30,
                          sender_name="Maria from leadkiln", sender_email="maria@leadkiln.localhost")
            await chain.save()
            for position, (subject, body) in enumerate(LETTERS, start=1):
                # The second letter is an A/B test of its subject line.
                subject_b = "Are you making this {{ topic.name }} mistake?" if position == 2 else ""
                await Step(chain=chain.id, position=position, kind=StepKind.letter, subject_b=subject_b,
                           delay_minutes=0 if position == 1 else delay_minutes, subject=subject, body_markdown=body).save()
            await Step(chain=chain.id, position=len(LETTERS) + 1, kind=StepKind.offer, delay_minutes=delay_minutes,
                       subject="Our offer", body_markdown="(sent as the hot or cold offer)").save()
            await Offer(chain=chain.id, kind=OfferKind.hot, subject=f"Let us look at your {spec['name']}: {spec['offer']}",
                        body_markdown=f"Hi {{{{ lead.first_name | default(\"there\") }}}},\n\nYou have read a lot about {spec['name']} lately. Book **{spec['offer']}**: reply to this letter with a time that suits you.\n").save()
            await Offer(chain=chain.id, kind=OfferKind.cold, subject=f"When you are ready: our {spec['name']} service",
                        body_markdown=f"Hi {{{{ lead.first_name | default(\"there\") }}}},\n\nWhen you want help with {spec['name']}, our team does it for you. Reply to order.\n").save()
        await ScoringRule.insert(
            ScoringRule(name="Asked for an ebook", event_type="form_submit", points=10, half_life_days=30),
            ScoringRule(name="Downloaded an ebook", event_type="download", points=20, daily_cap=20, half_life_days=30),
            ScoringRule(name="Viewed a landing page", event_type="page_view", points=3, daily_cap=3, half_life_days=14),
            ScoringRule(name="Opened a letter", event_type="email_open", points=2, daily_cap=2, half_life_days=14),
            ScoringRule(name="Clicked a link in a letter", event_type="email_click", points=8, half_life_days=21),
            ScoringRule(name="Visited pricing", event_type="page_view", points=15, property_match={"url": "*pricing*"}, half_life_days=14),
            ScoringRule(name="Unsubscribed", event_type="unsubscribe", points=-40, half_life_days=365),
        )
    stages = [LeadStage.new] * 6 + [LeadStage.contacted] * 2 + [LeadStage.qualified, LeadStage.won, LeadStage.lost]
    companies = ["Acme", "Northwind", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell"]
    demo_leads: list[tuple[int, int]] = []
    for n in range(historical_leads):
        created = now - timedelta(days=rng.randint(1, 90), hours=rng.randint(0, 23))
        lead = Lead(email=f"demo{n:03d}@example.com", first_name=rng.choice(["Ann", "Ben", "Cleo", "Dan", "Eva", "Femi", "Gus"]),
                    company=rng.choice(companies), source=rng.choice(["landing", "google", "newsletter", "linkedin"]),
                    stage=rng.choice(stages), created_at=created)
        await lead.save()
        topic_id = rng.choice(topic_ids)
        events = [Event(type="download", lead=lead.id, topic=topic_id, properties={"demo": True}, occurred_at=created)]
        for _ in range(rng.randint(0, 12)):
            when = created + timedelta(days=rng.uniform(0, (now - created).days or 1))
            # Letters, their opens and clicks come with the chain history below.
            kind = "page_view"
            props = {"url": "/pricing"} if rng.random() < 0.2 else {}
            events.append(Event(type=kind, lead=lead.id, topic=topic_id, properties=props, occurred_at=min(when, now)))
        await Event.insert(*events)
        demo_leads.append((lead.id, topic_id))
    if demo_leads:
        await seed_history(demo_leads, now, seed)
    return True
