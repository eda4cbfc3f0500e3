"""content/letters.py: sandboxed Jinja2 + Markdown letters, lead values escaped, errors that say where."""

from __future__ import annotations

import pytest
from jinja2 import TemplateError
from jinja2.sandbox import SecurityError

from content.letters import (
    LetterTemplateError,
    check_template,
    markdown_to_html,
    render_letter,
)


def _lead(**values: object) -> dict[str, object]:
    return {"lead": values, "topic": {"name": "Pricing"}}


def test_default_filter_applies_when_the_key_is_missing() -> None:
    letter = render_letter("Hello", 'Hi {{ lead.first_name | default("there") }},', _lead(email="m@x.org"))
    assert letter.text == "Hi there,\n"
    assert letter.html == "<p>Hi there,</p>"


def test_present_value_wins_over_default() -> None:
    letter = render_letter("Hello", 'Hi {{ lead.first_name | default("there") }},', _lead(first_name="Maria"))
    assert letter.text == "Hi Maria,\n"
    assert "<p>Hi Maria,</p>" in letter.html


@pytest.mark.parametrize("blank", ["", None])
def test_default_applies_to_a_blank_field(blank: object) -> None:
    # A lead who left the name empty is greeted "Hi there", never "Hi None" or "Hi ,".
    letter = render_letter("Hello", 'Hi {{ lead.first_name | default("there") }},', _lead(first_name=blank))
    assert letter.text == "Hi there,\n"
    assert letter.html == "<p>Hi there,</p>"


def test_default_with_boolean_flag_applies_to_none() -> None:
    letter = render_letter("Hello", 'Hi {{ lead.first_name | default("there", true) }},', _lead(first_name=None))
    assert letter.text == "Hi there,\n"


def test_subject_and_body_render_values() -> None:
    letter = render_letter("About {{ topic.name }}", "Read on, {{ lead.first_name }}.", _lead(first_name="Ann"))
    assert letter.subject == "About Pricing"
    assert letter.text == "Read on, Ann.\n"


def test_html_part_escapes_lead_values_text_part_keeps_them() -> None:
    letter = render_letter("Hi", "Hello {{ lead.first_name }}", _lead(first_name="<script>alert(1)</script>"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in letter.html
    assert "<script>" not in letter.html
    assert "<script>alert(1)</script>" in letter.text


def test_markdown_in_a_lead_value_is_not_interpreted() -> None:
    letter = render_letter("Hi", "Hello {{ lead.first_name }}", _lead(first_name="[x](http://evil)"))
    assert "<a" not in letter.html
    assert "href" not in letter.html
    assert "[x](http://evil)" in letter.html


def test_markdown_emphasis_in_a_lead_value_stays_literal() -> None:
    letter = render_letter("Hi", "Hello {{ lead.company }}", _lead(company="**Big** Co"))
    assert "<strong>" not in letter.html
    assert "**Big** Co" in letter.html


def test_staff_markdown_is_rendered() -> None:
    letter = render_letter("Hi", "This is **bold** and a [link](https://example.com).", _lead())
    assert "<strong>bold</strong>" in letter.html
    assert '<a href="https://example.com">link</a>' in letter.html


def test_template_tags_survive_markdown_conversion() -> None:
    body = "* {{ lead.first_name }}\n* {% if lead.company %}{{ lead.company }}{% endif %}\n"
    letter = render_letter("Hi", body, _lead(first_name="Ann_Lee_x", company="Acme"))
    assert "<li>Ann_Lee_x</li>" in letter.html
    assert "<li>Acme</li>" in letter.html


def test_raw_html_in_staff_markdown_is_not_passed_through() -> None:
    letter = render_letter("Hi", 'Look <b onclick="x()">here</b>\n\n<script>alert(1)</script>', _lead())
    assert "<b" not in letter.html
    assert "<script>" not in letter.html
    assert "&lt;script&gt;" in letter.html


@pytest.mark.parametrize("value", ["Ann\r\nBcc: victim@example.com", "Ann\nBcc: victim@example.com", "Ann\rX"])
def test_subject_with_line_breaks_in_a_value_collapses_to_one_line(value: str) -> None:
    letter = render_letter("Hello {{ lead.first_name }}", "Body", _lead(first_name=value))
    assert "\r" not in letter.subject
    assert "\n" not in letter.subject
    assert letter.subject.startswith("Hello Ann ")


def test_unknown_variable_names_the_place() -> None:
    with pytest.raises(LetterTemplateError, match=r"^step 3 body: 'nope' is undefined") as info:
        render_letter("Hi", "Hello {{ nope }}", _lead(), where="step 3")
    assert isinstance(info.value, ValueError)


def test_unknown_variable_in_subject_names_the_subject() -> None:
    with pytest.raises(LetterTemplateError, match=r"^step 2 subject"):
        render_letter("Hi {{ lead.nickname }}", "Body", _lead(), where="step 2")


def test_unknown_attribute_of_a_known_variable_is_an_error() -> None:
    with pytest.raises(LetterTemplateError, match="step 3 body"):
        render_letter("Hi", "Hello {{ lead.nickname }}", _lead(first_name="Ann"), where="step 3")


@pytest.mark.parametrize("body", ["{% if %}x{% endif %}", "Hello {{ lead.first_name }", "{% for x in %}"])
def test_syntax_error_is_a_letter_template_error(body: str) -> None:
    with pytest.raises(LetterTemplateError, match=r"^step 1 body"):
        render_letter("Hi", body, _lead(first_name="Ann"), where="step 1")


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(LetterTemplateError, match=r"^letter body line 3:"):
        render_letter("Hi", "one\n\n{% if %}\n", _lead())


def test_security_error_is_a_template_error() -> None:
    # render_letter catches TemplateError; the sandbox's refusal must be one.
    assert issubclass(SecurityError, TemplateError)


@pytest.mark.parametrize(
    "body",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ lead.__class__ }}",
        "{{ lead.__class__.__base__.__subclasses__() }}",
        "{{ lead.first_name.__class__ }}",
    ],
)
def test_sandbox_refuses_dunder_access(body: str) -> None:
    with pytest.raises(LetterTemplateError, match="unsafe") as info:
        render_letter("Hi", body, _lead(first_name="Ann"), where="step 3")
    assert "<class" not in str(info.value)


def test_immutable_sandbox_refuses_mutating_context() -> None:
    context = _lead(first_name="Ann")
    with pytest.raises(LetterTemplateError):
        render_letter("Hi", "{{ lead.update({'first_name': 'Eve'}) }}", context)
    assert context["lead"] == {"first_name": "Ann"}


def test_check_template_passes_a_good_letter_and_refuses_a_bad_one() -> None:
    check_template("Hi {{ lead.first_name }}", "Body", "step 1", _lead(first_name="Ann"))
    with pytest.raises(LetterTemplateError, match="step 4 subject"):
        check_template("Hi {{ lead.nickname }}", "Body", "step 4", _lead(first_name="Ann"))


def test_text_part_ends_with_exactly_one_newline() -> None:
    letter = render_letter("Hi", "\n\nBody text\n\n\n", _lead())
    assert letter.text == "Body text\n"


@pytest.mark.parametrize(
    "source",
    [
        "[click](javascript:alert(1))",
        "[click](JAVASCRIPT:alert(1))",
        "<javascript:alert(1)>",
        "[click](vbscript:msgbox(1))",
        "![img](javascript:alert(1))",
    ],
)
def test_markdown_to_html_emits_no_script_links(source: str) -> None:
    html = markdown_to_html(source).lower()
    assert "href=\"javascript:" not in html
    assert "src=\"javascript:" not in html
    assert "href=\"vbscript:" not in html
    assert "<a " not in html


def test_markdown_to_html_keeps_ordinary_links() -> None:
    assert markdown_to_html("[site](https://example.com)") == '<p><a href="https://example.com">site</a></p>\n'
