"""landing/forms.py: email normalising and capture-form validation, errors per field."""

from __future__ import annotations

import pytest

from landing.forms import normalise_email, page_fields, validate_capture


def _data(**values: str) -> dict[str, str]:
    return {"email": "maria@example.org", "consent": "on", **values}


def test_normalise_email_lowercases_and_strips() -> None:
    assert normalise_email("  Maria.Lopez@Example.ORG \n") == "maria.lopez@example.org"


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("a@", "something after the @-sign"),
        ("no-at", "must have an @-sign"),
        ("a@b", "should have a period"),
        ("a b@c.com", "invalid characters"),
    ],
)
def test_malformed_emails_are_refused_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        normalise_email(raw)
    message = str(info.value)
    assert message.startswith("This address is not valid. ")
    assert reason in message
    assert "Error" not in message


def test_a_non_ascii_mailbox_name_is_refused_clearly() -> None:
    # Most relays lack SMTPUTF8: such an address would fail at every send.
    with pytest.raises(ValueError, match="This address is not valid. Internationalized characters before the @-sign"):
        normalise_email("jörg@example.com")


def test_an_internationalised_domain_is_kept_in_its_ascii_form() -> None:
    assert normalise_email("Jo@Bücher.example") == "jo@xn--bcher-kva.example"


def test_overlong_email_is_refused() -> None:
    raw = "x" * 243 + "@example.com"
    assert len(raw) == 255
    with pytest.raises(ValueError, match="at most 254 characters"):
        normalise_email(raw)


@pytest.mark.parametrize("raw", ["", "   ", "\t\n"])
def test_empty_email_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="Please enter your email address"):
        normalise_email(raw)


def test_valid_submission_has_no_errors() -> None:
    form = validate_capture(_data(first_name="  Maria ", company="Acme"), ["first_name", "company"])
    assert form.ok
    assert form.errors == {}
    assert form.email == "maria@example.org"
    assert form.fields == {"first_name": "Maria", "company": "Acme"}
    assert form.consent is True


def test_errors_are_keyed_by_field() -> None:
    form = validate_capture({"email": "no-at", "first_name": "A\nB"}, ["first_name"])
    assert not form.ok
    assert set(form.errors) == {"email", "first_name", "consent"}
    assert form.errors["email"].startswith("This address is not valid")


def test_missing_consent_is_an_error() -> None:
    form = validate_capture({"email": "maria@example.org"}, [])
    assert "consent" in form.errors
    assert form.consent is False
    assert set(form.errors) == {"consent"}


@pytest.mark.parametrize("value", ["on", "yes", "1", "true"])
def test_consent_values_that_count_as_yes(value: str) -> None:
    assert validate_capture(_data(consent=value), []).consent is True


def test_unticked_consent_is_an_error() -> None:
    assert "consent" in validate_capture(_data(consent="off"), []).errors


def test_consent_not_required_when_page_does_not_ask() -> None:
    form = validate_capture({"email": "maria@example.org"}, [], require_consent=False)
    assert form.ok


@pytest.mark.parametrize("value", ["Maria\r\nBcc: x@y.org", "Maria\nX", "Maria\rX", "Ma\x00ria", "Ma\x7fria"])
def test_control_characters_in_a_field_are_refused(value: str) -> None:
    form = validate_capture(_data(first_name=value), ["first_name"])
    assert form.errors["first_name"] == "First name must be a single line of plain text."
    assert "first_name" not in form.fields


def test_over_length_company_is_refused() -> None:
    form = validate_capture(_data(company="C" * 201), ["company"])
    assert form.errors["company"] == "Company has at most 200 characters."
    ok = validate_capture(_data(company="C" * 200), ["company"])
    assert ok.ok
    assert ok.fields["company"] == "C" * 200


def test_fields_not_requested_by_the_page_are_ignored() -> None:
    form = validate_capture(_data(first_name="Maria", company="Bad\nCompany", role="x" * 500), ["first_name"])
    assert form.ok
    assert form.fields == {"first_name": "Maria"}


def test_unknown_field_names_in_wanted_fields_are_ignored() -> None:
    form = validate_capture(_data(password="hunter2"), ["password", "first_name"])
    assert form.ok
    assert form.fields == {"first_name": ""}


def test_page_fields_keeps_known_names_in_order() -> None:
    assert page_fields("company, password ,first_name,,role,email") == ["company", "first_name", "role"]
    assert page_fields("") == []
