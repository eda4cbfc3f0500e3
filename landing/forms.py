"""The capture form: field rules and validation as pure functions, errors per field."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

from email_validator import EmailNotValidError, validate_email

OPTIONAL_FIELDS = {"first_name": 100, "last_name": 100, "company": 200, "role": 100}
FIELD_LABELS = {"first_name": "First name", "last_name": "Last name", "company": "Company", "role": "Role"}
EMAIL_MAX = 254


@dataclass
class CaptureForm:
    """A validated submission, or the errors to show beside each field."""

    email: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    consent: bool = False
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def normalise_email(raw: str) -> str:
    """The canonical form of an address (lower-cased), or ValueError with a reason a visitor reads."""
    raw = raw.strip()
    if not raw:
        raise ValueError("Please enter your email address.")
    if len(raw) > EMAIL_MAX:
        raise ValueError(f"An email address has at most {EMAIL_MAX} characters.")
    try:
        # ASCII addresses only: a relay without SMTPUTF8 would refuse the others forever.
        result = validate_email(raw, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(f"This address is not valid. {exc}") from None
    # Punycode for an internationalised domain: what every relay and header accepts.
    return (result.ascii_email or result.normalized).lower()


def clean_text(value: str, limit: int, label: str) -> str:
    """One line of text: control characters (C0, DEL, C1 such as U+0085) and line or
    paragraph separators refused, not silently dropped: a name goes into letter headers."""
    value = value.strip()
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value):
        raise ValueError(f"{label} must be a single line of plain text.")
    if len(value) > limit:
        raise ValueError(f"{label} has at most {limit} characters.")
    return value


def validate_capture(data: dict[str, str], wanted_fields: list[str], require_consent: bool = True,
                     require_email: bool = True) -> CaptureForm:
    """Check a submitted form against the fields the page asks for.

    `require_email` is False for a returning lead (known by its cookie), who may leave the
    email out; one it does give is checked as usual.
    """
    form = CaptureForm()
    if require_email or data.get("email", "").strip():
        try:
            form.email = normalise_email(data.get("email", ""))
        except ValueError as exc:
            form.errors["email"] = str(exc)
    for name in wanted_fields:
        if name not in OPTIONAL_FIELDS:
            continue
        try:
            form.fields[name] = clean_text(data.get(name, ""), OPTIONAL_FIELDS[name], FIELD_LABELS[name])
        except ValueError as exc:
            form.errors[name] = str(exc)
    form.consent = data.get("consent") in ("on", "yes", "1", "true")
    if require_consent and not form.consent:
        form.errors["consent"] = "Please tick the box to agree, so we may send you the ebook."
    return form


def page_fields(form_fields: str) -> list[str]:
    """The optional fields a landing page asks for, in order, known names only."""
    return [f.strip() for f in form_fields.split(",") if f.strip() in OPTIONAL_FIELDS]
