import markdown as md
import nh3
from django import template
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

_ALLOWED_TAGS = {
    "p",
    "br",
    "hr",
    "em",
    "strong",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "a",
    "del",
    "sup",
    "sub",
}


@register.filter
def render_markdown(text: str) -> SafeString:
    """Markdown to HTML, then sanitised: raw HTML in a response is shown inert, never run."""
    html = md.markdown(text or "", extensions=["fenced_code", "tables", "sane_lists"])
    return mark_safe(
        nh3.clean(
            html,
            tags=_ALLOWED_TAGS,
            attributes={"a": {"href", "title"}},
            link_rel="noopener noreferrer nofollow",
        )
    )
