"""Letter rendering: staff-written Markdown + Jinja2 in a sandbox, to a text and an HTML part."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markdown_it import MarkdownIt

# Raw HTML in staff Markdown is off: letters are built from Markdown only, and
# lead-supplied values are inserted after the Markdown step, HTML-escaped.
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})

_TEMPLATE_TAG = re.compile(r"(\{\{.*?\}\}|\{%.*?%\})", re.S)

_CACHED_TEMPLATES = 1024
"""Compiled templates kept per process (a subject, a text and an HTML body per step version
and offer): keyed by their source, so an edit in the admin is a new entry, never a stale one."""

def _default(value: Any, default_value: Any = "", boolean: bool = True) -> Any:
    """`default` for personalisation: a blank field ("" or None) counts as missing too."""
    if isinstance(value, Undefined) or (boolean and not value):
        return default_value
    return value


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(autoescape=autoescape, undefined=StrictUndefined)
    env.filters["default"] = env.filters["d"] = _default
    return env


_text_env = _environment(autoescape=False)
_html_env = _environment(autoescape=True)


class LetterTemplateError(ValueError):
    """A subject or body that does not render; the message says where."""


@dataclass(frozen=True)
class RenderedLetter:
    """A letter ready for MIME assembly."""

    subject: str
    text: str
    html: str


def _protect_tags(source: str) -> tuple[str, list[str]]:
    """Swap template tags for inert placeholders so Markdown leaves them whole."""
    tags: list[str] = []

    def keep(match: re.Match[str]) -> str:
        tags.append(match.group(0))
        return f"LKTAG{len(tags) - 1}X"

    return _TEMPLATE_TAG.sub(keep, source), tags


def markdown_to_html(text: str) -> str:
    """Staff Markdown to HTML with raw HTML off (markdown-it also refuses javascript: links)."""
    return _markdown.render(text)


@lru_cache(maxsize=_CACHED_TEMPLATES)
def markdown_to_html_template(body_markdown: str) -> str:
    """Convert a Markdown letter body to an HTML Jinja2 template, keeping its tags."""
    protected, tags = _protect_tags(body_markdown)
    html = _markdown.render(protected)
    for index, tag in enumerate(tags):
        html = html.replace(f"LKTAG{index}X", tag)
    return html


@lru_cache(maxsize=_CACHED_TEMPLATES)
def _compiled(env: ImmutableSandboxedEnvironment, source: str) -> Template:
    """A template compiled once per source and kept: compiling is most of a letter's
    rendering, and every lead of a step gets the same one. A source that does not compile
    raises each time (lru_cache keeps no exceptions), so its error is never stale."""
    return env.from_string(source)


def _render(env: ImmutableSandboxedEnvironment, source: str, context: dict[str, Any], where: str) -> str:
    try:
        return _compiled(env, source).render(**context)
    except TemplateError as exc:
        line = f" line {exc.lineno}" if getattr(exc, "lineno", None) else ""
        raise LetterTemplateError(f"{where}{line}: {exc.message or exc}") from None


def render_letter(subject: str, body_markdown: str, context: dict[str, Any], where: str = "letter") -> RenderedLetter:
    """Render subject and body for one lead; raises LetterTemplateError naming `where`."""
    rendered_subject = _render(_text_env, subject, context, f"{where} subject")
    # A header must be one line: values with CR/LF cannot inject headers.
    rendered_subject = " ".join(rendered_subject.split())
    text = _render(_text_env, body_markdown, context, f"{where} body")
    html_body = _render(_html_env, markdown_to_html_template(body_markdown), context, f"{where} body")
    return RenderedLetter(subject=rendered_subject, text=text.strip() + "\n", html=html_body)


def check_template(subject: str, body_markdown: str, where: str, sample_context: dict[str, Any]) -> None:
    """Raise LetterTemplateError if the letter cannot render for a sample lead."""
    render_letter(subject, body_markdown, sample_context, where)
