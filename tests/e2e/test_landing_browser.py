"""The landing pages in a real browser: capture, download, inline errors, double opt-in, on a phone and a desktop."""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path

from playwright.async_api import Locator, Page, expect
from pypdf import PdfReader

from landing.tables import Consent, Lead


def unique_email(viewport: str, what: str) -> str:
    return f"e2e-{what}-{viewport}-{uuid.uuid4().hex[:8]}@example.com"


async def fill_form(page: Page, email: str, first_name: str = "Ada", company: str = "Kiln & Co",
                    consent: bool = True) -> None:
    await page.get_by_label("Email", exact=True).fill(email)
    await page.get_by_label("First name").fill(first_name)
    await page.get_by_label("Company").fill(company)
    if consent:
        await page.locator("input[name=consent]").check()


async def press(locator: Locator, viewport: str) -> None:
    """A finger on the phone, a mouse on the desktop."""
    await (locator.tap() if viewport == "phone" else locator.click())


async def assert_fits_width(page: Page) -> None:
    """Nothing sticks out sideways: no horizontal scrolling, on a phone least of all."""
    scroll_width, inner_width = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll_width <= inner_width, f"{page.url}: content {scroll_width}px wide in a {inner_width}px window"


async def lead_rows(email: str) -> list[dict]:
    return await Lead.select(Lead.id, Lead.email, Lead.first_name, Lead.company, Lead.confirmed).where(Lead.email == email)


async def test_capture_then_download_pdf(page: Page, viewport: str, shot, artifacts: Path) -> None:
    email = unique_email(viewport, "seo")
    response = await page.goto("/l/seo")
    assert response is not None and response.status == 200
    await expect(page).to_have_title("The 30-minute SEO audit")
    await expect(page.get_by_role("button", name="Send me the ebook")).to_be_visible()
    await assert_fits_width(page)
    await shot("1-page")

    await fill_form(page, email)
    await shot("2-filled")
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await press(page.get_by_role("button", name="Send me the ebook"), viewport)
    post = await posted.value
    assert post.status == 303, f"POST /l/seo answered {post.status}"
    assert "/l/seo/thanks?t=" in (await post.header_value("location") or "")
    await page.wait_for_url("**/l/seo/thanks?t=*")
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Thank you!")
    # The address is shown masked: its first letter and its domain.
    await expect(page.locator("strong")).to_have_text("e•••@example.com")
    link = page.get_by_role("link", name="Download the PDF")
    await expect(link).to_have_attribute("href", re.compile(r"^/d/[^/]+$"))
    await assert_fits_width(page)
    await shot("3-thanks")

    async with page.expect_download() as started:
        await press(link, viewport)
    download = await started.value
    assert download.suggested_filename == "seo-ebook.pdf"
    saved = artifacts / f"{viewport}-download.pdf"
    await download.save_as(saved)
    data = saved.read_bytes()
    assert data.startswith(b"%PDF-")
    text = "\n".join(p.extract_text() or "" for p in PdfReader(io.BytesIO(data)).pages)
    assert f"Prepared for {email}" in text
    # An attachment: the visitor stays on the thank-you page.
    await expect(page).to_have_url(re.compile(r"/l/seo/thanks\?t="))
    await shot("4-after-download")

    rows = await lead_rows(email)
    assert len(rows) == 1
    assert rows[0]["first_name"] == "Ada" and rows[0]["company"] == "Kiln & Co"
    assert await Consent.count().where(Consent.lead == rows[0]["id"]) == 1


async def test_bad_email_shows_inline_error_and_keeps_input(page: Page, viewport: str, shot) -> None:
    await page.goto("/l/seo")
    leads_before = await Lead.count()
    await fill_form(page, "not-an-email", first_name="Grace")
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.get_by_role("button", name="Send me the ebook").click()
    assert (await posted.value).status == 422
    await page.wait_for_load_state()
    await shot("1-error")
    await shot("1-error-window", full_page=False)

    email_input = page.locator("#email")
    error = page.locator("p.error#email-error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("not valid")
    await expect(email_input).to_have_value("not-an-email")
    await expect(page.locator("#first_name")).to_have_value("Grace")
    await expect(page.locator("#company")).to_have_value("Kiln & Co")
    await expect(page.locator("input[name=consent]")).to_be_checked()
    await expect(email_input).to_have_attribute("aria-invalid", "true")
    await expect(email_input).to_have_attribute("aria-describedby", "email-error")
    await expect(email_input).to_be_focused()
    assert await page.evaluate("document.activeElement.id") == "email"
    # Without scrolling, the visitor sees the field and what is wrong with it.
    await expect(email_input).to_be_in_viewport()
    await expect(error).to_be_in_viewport()
    await assert_fits_width(page)
    # Beside the field: right under the email input, before the next field's label.
    field, message, next_label = (await email_input.bounding_box(), await error.bounding_box(),
                                  await page.locator("label[for=first_name]").bounding_box())
    assert field and message and next_label
    assert field["y"] + field["height"] <= message["y"] < next_label["y"]

    assert await lead_rows("not-an-email") == []
    assert await Lead.count() == leads_before

    # Fixed in place, the same form goes through.
    email = unique_email(viewport, "fixed")
    await email_input.fill(email)
    await page.get_by_role("button", name="Send me the ebook").click()
    await page.wait_for_url("**/l/seo/thanks?t=*")
    await shot("2-fixed")
    assert len(await lead_rows(email)) == 1


async def test_missing_consent_shows_error_above_checkbox(page: Page, viewport: str, shot) -> None:
    email = unique_email(viewport, "noconsent")
    await page.goto("/l/paid-ads")
    consents_before = await Consent.count()
    await fill_form(page, email, consent=False)
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.get_by_role("button", name="Send me the ebook").click()
    assert (await posted.value).status == 422
    await page.wait_for_load_state()
    await shot("1-error")
    await shot("1-error-window", full_page=False)

    checkbox = page.locator("input[name=consent]")
    error = page.locator("#consent-error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("tick the box")
    await expect(page.locator("#email-error")).to_have_count(0)
    await expect(checkbox).not_to_be_checked()
    await expect(checkbox).to_have_attribute("aria-invalid", "true")
    await expect(checkbox).to_be_focused()
    await expect(checkbox).to_be_in_viewport()
    await expect(error).to_be_in_viewport()
    await expect(page.locator("#email")).to_have_value(email)
    message, box = await error.bounding_box(), await checkbox.bounding_box()
    assert message and box and message["y"] + message["height"] <= box["y"]

    assert await lead_rows(email) == []
    assert await Consent.count() == consents_before


async def test_double_opt_in_asks_to_confirm(page: Page, viewport: str, shot) -> None:
    email = unique_email(viewport, "doi")
    await page.goto("/l/analytics")
    await fill_form(page, email)
    await page.get_by_role("button", name="Send me the ebook").click()
    await page.wait_for_url("**/l/analytics/thanks?t=*")
    await shot("1-thanks")

    await expect(page.get_by_role("heading", level=1)).to_contain_text("please confirm")
    await expect(page.get_by_role("link", name="Download the PDF")).to_have_count(0)
    await expect(page.locator("a[href^='/d/']")).to_have_count(0)
    await expect(page.locator("strong")).to_have_text("e•••@example.com")
    rows = await lead_rows(email)
    assert len(rows) == 1 and rows[0]["confirmed"] is False


