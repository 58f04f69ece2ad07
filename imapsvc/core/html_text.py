"""A small, fast HTML-to-text conversion for messages that only have HTML.

Not a renderer: script/style/head content is dropped, block elements become
line breaks, ``<br>`` a newline, list items a ``- `` prefix, entities are
unescaped (``html.parser`` does that with ``convert_charrefs``), runs of
spaces collapse and more than two consecutive newlines collapse to two.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_SKIP = frozenset({"script", "style", "head", "title", "template", "noscript", "svg"})
_BLOCK = frozenset(
    {
        "p", "div", "section", "article", "header", "footer", "aside", "nav", "main",
        "blockquote", "pre", "table", "tr", "ul", "ol", "dl", "dt", "dd", "h1", "h2", "h3",
        "h4", "h5", "h6", "hr", "form", "fieldset", "address", "figure", "figcaption",
        "center", "body", "html",
    }
)  # fmt: skip
_SPACES_RE = re.compile(r"[ \t\r\f\v\u00a0]+")
_NEWLINES_RE = re.compile(r"\n{3,}")
_SPACE_NL_RE = re.compile(r" *\n *")

#: HTML beyond this many characters is not converted (the text of a 2 MB
#: newsletter is not worth the CPU).
MAX_HTML_CHARS = 2 * 1024 * 1024


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip_depth += 1
        elif tag == "br":
            self.out.append("\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag in _BLOCK:
            if tag == "pre":
                self.pre_depth += 1
            self.out.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br" or tag == "hr":
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            if self.skip_depth:
                self.skip_depth -= 1
        elif tag in _BLOCK:
            if tag == "pre" and self.pre_depth:
                self.pre_depth -= 1
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.pre_depth:
            # Keep preformatted line breaks; a private marker survives the
            # whitespace collapsing below.
            data = data.replace("\n", "\x00")
        else:
            data = data.replace("\n", " ")
        self.out.append(data)


def html_to_text(html: str) -> str:
    """Plain text of ``html``; never raises."""
    if not html:
        return ""
    collector = _Collector()
    try:
        collector.feed(html[:MAX_HTML_CHARS])
        collector.close()
    except Exception:
        # html.parser is lenient, but be safe: keep what was collected.
        pass
    text = "".join(collector.out)
    text = _SPACES_RE.sub(" ", text)
    text = _SPACE_NL_RE.sub("\n", text)
    text = _NEWLINES_RE.sub("\n\n", text).replace("\x00", "\n")
    return text.strip()
