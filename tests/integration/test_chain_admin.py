"""The content team's chain tools in the admin: activate, schedule, pause, preview, test letters,
and table edits that cannot break a live chain."""

from __future__ import annotations

import pytest

from content.tables import Chain, ChainStatus, Delivery, Step
from landing.tables import Topic
from server.settings import get_settings
from admin.forms.chains import CHAIN_FORM
from tests.integration.test_pages_and_admin import _admin_login

CHAIN_FORM_URL = f"/admin/api/forms/{CHAIN_FORM.slug}/"


async def _seo_chain() -> Chain:
    topic = await Topic.objects().get(Topic.slug == "seo")
    return await Chain.objects().get(Chain.topic == topic.id)


async def test_the_form_refuses_to_activate_a_chain_with_a_broken_letter_and_names_the_step(client, catalog) -> None:
    chain = await _seo_chain()
    await Chain.update({Chain.status: ChainStatus.draft}).where(Chain.id == chain.id)
    await Step.update({Step.body_markdown: "Hi {{ lead.first_name "}).where((Step.chain == chain.id) & (Step.position == 3))
    headers = await _admin_login(client)
    refused = await client.post(CHAIN_FORM_URL, headers=headers,
                                json={"chain": chain.name, "action": "activate"})
    assert refused.status_code >= 400 and "step 3 body" in refused.text
    assert (await Chain.objects().get(Chain.id == chain.id)).status == ChainStatus.draft

    await Step.update({Step.body_markdown: "Hi {{ lead.first_name }}"}).where((Step.chain == chain.id) & (Step.position == 3))
    done = await client.post(CHAIN_FORM_URL, headers=headers,
                             json={"chain": str(chain.id), "action": "activate", "starts_at": "2030-01-01T09:00:00"})
    assert done.status_code == 200 and "from 2030-01-01 09:00 UTC" in done.text, done.text
    stored = await Chain.objects().get(Chain.id == chain.id)
    assert stored.status == ChainStatus.active and stored.starts_at.year == 2030
    paused = await client.post(CHAIN_FORM_URL, headers=headers,
                               json={"chain": chain.name, "action": "pause"})
    assert paused.status_code == 200
    assert (await Chain.objects().get(Chain.id == chain.id)).status == ChainStatus.paused


async def test_the_table_cannot_switch_a_broken_chain_on_nor_break_a_live_one(client, catalog) -> None:
    chain = await _seo_chain()
    step = await Step.objects().get((Step.chain == chain.id) & (Step.position == 2))
    headers = await _admin_login(client)
    broken = await client.patch(f"/admin/api/tables/step/{step.id}/", headers=headers,
                                json={"subject": "{{ lead.favourite_colour }}"})
    assert broken.status_code == 400 and "step 2 subject" in broken.text
    assert (await Step.objects().get(Step.id == step.id)).subject == step.subject, "the live letter is unchanged"
    fine = await client.patch(f"/admin/api/tables/step/{step.id}/", headers=headers, json={"subject": "Better {{ topic.name }}"})
    assert fine.status_code == 200, fine.text

    await Chain.update({Chain.status: ChainStatus.draft}).where(Chain.id == chain.id)
    await Step.update({Step.subject: "{% for %}"}).where(Step.id == step.id)
    switched = await client.patch(f"/admin/api/tables/chain/{chain.id}/", headers=headers, json={"status": "active"})
    assert switched.status_code == 400 and "step 2 subject" in switched.text
    assert (await Chain.objects().get(Chain.id == chain.id)).status == ChainStatus.draft


async def test_preview_shows_the_letter_for_a_lead_or_a_sample(client, catalog) -> None:
    chain = await _seo_chain()
    headers = await _admin_login(client)
    sample = await client.post("/admin/api/forms/preview-a-step/", headers=headers, json={"chain": chain.name, "position": 1})
    assert sample.status_code == 200 and "Subject: Your ebook: SEO starts here" in sample.text and "Hi Alex" in sample.text
    hot = await client.post("/admin/api/forms/preview-a-step/", headers=headers,
                            json={"chain": chain.name, "position": 5, "offer": "hot"})
    assert "free SEO diagnostic" in hot.text
    cold = await client.post("/admin/api/forms/preview-a-step/", headers=headers,
                             json={"chain": chain.name, "position": 5, "offer": "cold"})
    assert "our SEO service" in cold.text
    missing = await client.post("/admin/api/forms/preview-a-step/", headers=headers, json={"chain": chain.name, "position": 9})
    assert missing.status_code >= 400 and "no step 9" in missing.text


@pytest.fixture
def relay_is_the_sink(sink, monkeypatch):
    monkeypatch.setenv("SMTP_URL", sink.url)
    get_settings.cache_clear()
    yield sink
    monkeypatch.delenv("SMTP_URL")
    get_settings.cache_clear()


async def test_a_test_letter_goes_to_the_given_address_marked_and_outside_the_ledger(client, catalog, relay_is_the_sink) -> None:
    chain = await _seo_chain()
    headers = await _admin_login(client)
    sent = await client.post("/admin/api/forms/send-a-test-letter/", headers=headers,
                             json={"chain": chain.name, "position": 2, "to_address": "Editor@Example.com"})
    assert sent.status_code == 200, sent.text
    [letter] = relay_is_the_sink.messages()
    assert str(letter["To"]) == "editor@example.com"
    assert str(letter["Subject"]) == "[Test] The one SEO mistake we see every week"
    assert await Delivery.count() == 0, "a test letter is not a delivery"
    bad = await client.post("/admin/api/forms/send-a-test-letter/", headers=headers,
                            json={"chain": chain.name, "position": 2, "to_address": "not an address"})
    assert bad.status_code >= 400 and len(relay_is_the_sink.messages()) == 1


async def test_a_live_chains_settings_offers_and_steps_are_guarded_in_the_tables(client, catalog) -> None:
    from content.tables import Offer

    chain = await _seo_chain()
    headers = await _admin_login(client)
    zone = await client.patch(f"/admin/api/tables/chain/{chain.id}/", headers=headers, json={"timezone": "Berlin"})
    assert zone.status_code == 400 and "time zone 'Berlin' is unknown" in zone.text
    sender = await client.patch(f"/admin/api/tables/chain/{chain.id}/", headers=headers, json={"sender_email": "maria"})
    assert sender.status_code == 400 and "not an email address" in sender.text
    assert (await Chain.objects().get(Chain.id == chain.id)).timezone == "UTC"

    hot = await Offer.objects().get((Offer.chain == chain.id) & (Offer.kind == "hot"))
    offer = await client.patch(f"/admin/api/tables/offer/{hot.id}/", headers=headers, json={"body_markdown": "{{ lead.age }}"})
    assert offer.status_code == 400 and "hot offer body" in offer.text
    removed = await client.delete(f"/admin/api/tables/offer/{hot.id}/", headers=headers)
    assert removed.status_code == 400 and await Offer.exists().where(Offer.id == hot.id)
    step = await Step.objects().get((Step.chain == chain.id) & (Step.position == 2))
    deleted = await client.delete(f"/admin/api/tables/step/{step.id}/", headers=headers)
    assert deleted.status_code == 400 and await Step.exists().where(Step.id == step.id)

    # A broken step of a draft chain cannot be moved into the live one.
    draft = Chain(name="Draft", topic=chain.topic, status=ChainStatus.draft)
    await draft.save()
    broken = Step(chain=draft.id, position=9, subject="{{ nope }}", body_markdown="x")
    await broken.save()
    moved = await client.patch(f"/admin/api/tables/step/{broken.id}/", headers=headers, json={"chain": chain.id})
    assert moved.status_code == 400 and (await Step.objects().get(Step.id == broken.id)).chain == draft.id


async def test_two_chains_with_one_name_are_told_apart_by_id(client, catalog) -> None:
    chain = await _seo_chain()
    await Chain(name=chain.name, topic=chain.topic, status=ChainStatus.draft).save()
    headers = await _admin_login(client)
    ambiguous = await client.post(CHAIN_FORM_URL, headers=headers, json={"chain": chain.name, "action": "pause"})
    assert ambiguous.status_code >= 400 and "give the chain's id" in ambiguous.text
    assert (await Chain.objects().get(Chain.id == chain.id)).status == ChainStatus.active


async def test_a_put_cannot_skip_the_checks(client, catalog) -> None:
    chain = await _seo_chain()
    step = await Step.objects().get((Step.chain == chain.id) & (Step.position == 1))
    headers = await _admin_login(client)
    for table, row_id in (("chain", chain.id), ("step", step.id)):
        put = await client.put(f"/admin/api/tables/{table}/{row_id}/", headers=headers, json={"subject": "{{ x }}"})
        assert put.status_code == 405, (table, put.text)
    assert (await Step.objects().get(Step.id == step.id)).subject == step.subject
