"""Helpers the report tests share: an HTML page's start tags and text."""

from __future__ import annotations

from html.parser import HTMLParser


class Collector(HTMLParser):
    """Every start tag with its attributes, and every text node, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def collect(text: str) -> Collector:
    collector = Collector()
    collector.feed(text)
    return collector
