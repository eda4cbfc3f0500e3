"""content/letters.py keeps compiled templates by source: the same letters, errors and sandbox
as compiling each time, and an edited source is never served stale."""

from __future__ import annotations

import pytest

from content.letters import LetterTemplateError, _compiled, markdown_to_html_template, render_letter


def _context(name: str) -> dict[str, object]:
    return {"lead": {"first_name": name}, "topic": {"name": "Pricing"}}


def test_a_template_is_compiled_once_and_renders_each_lead_its_own_values() -> None:
    subject, body = "Hi {{ lead.first_name }} (cache test)", "Dear **{{ lead.first_name }}**, {{ topic.name }}."
    before = _compiled.cache_info()
    first = render_letter(subject, body, _context("<Ann>"))
    second = render_letter(subject, body, _context("Bo"))
    after = _compiled.cache_info()
    assert after.misses - before.misses == 3, "subject, text and HTML body compiled once"
    assert after.hits - before.hits == 3
    assert (first.subject, first.text) == ("Hi <Ann> (cache test)", "Dear **<Ann>**, Pricing.\n")
    assert first.html == "<p>Dear <strong>&lt;Ann&gt;</strong>, Pricing.</p>"
    assert (second.subject, second.html) == ("Hi Bo (cache test)", "<p>Dear <strong>Bo</strong>, Pricing.</p>")


def test_an_edited_source_renders_the_edit() -> None:
    assert render_letter("S", "Version one {{ lead.first_name }}", _context("A")).text == "Version one A\n"
    assert render_letter("S", "Version two {{ lead.first_name }}", _context("A")).text == "Version two A\n"
    assert render_letter("S", "Version one {{ lead.first_name }}", _context("B")).text == "Version one B\n"


@pytest.mark.parametrize("where", ["step 2", "step 5"])
def test_a_broken_template_fails_every_time_naming_where(where: str) -> None:
    for _ in range(2):
        with pytest.raises(LetterTemplateError, match=rf"^{where} body line 1: "):
            render_letter("Fine", "Hi {{ lead.first_name ", _context("A"), where=where)


def test_an_unknown_variable_fails_every_time_even_once_compiled() -> None:
    body = "Hi {{ lead.nickname }} (strict cache test)"
    for _ in range(2):
        with pytest.raises(LetterTemplateError, match=r"^letter body: 'dict object' has no attribute 'nickname'$"):
            render_letter("Fine", body, _context("A"))
    # The same template renders for a lead that has the field.
    assert render_letter("Fine", body, {"lead": {"nickname": "Al"}}).text == "Hi Al (strict cache test)\n"


def test_the_sandbox_holds_on_a_compiled_template() -> None:
    for _ in range(2):
        with pytest.raises(LetterTemplateError, match=r"^letter subject"):
            render_letter("{{ ''.__class__.__mro__[1].__subclasses__() }}", "Body", _context("A"))


def test_the_html_template_of_a_body_is_kept_and_keeps_its_tags() -> None:
    body = "# Title {{ topic.name }}\n\n{% if lead.first_name %}Hi {{ lead.first_name }}{% endif %}"
    assert markdown_to_html_template(body) is markdown_to_html_template(body)
    assert markdown_to_html_template(body) == (
        "<h1>Title {{ topic.name }}</h1>\n<p>{% if lead.first_name %}Hi {{ lead.first_name }}{% endif %}</p>\n")
