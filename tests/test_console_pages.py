"""The console's page templates: shared partials expand, values are escaped."""

from __future__ import annotations

import pytest

from callpipe.console.pages import render_page

SIGNED_IN_PAGES = ("dashboard", "overview", "call", "phone")


@pytest.mark.parametrize("name", SIGNED_IN_PAGES)
def test_signed_in_pages_share_the_head_and_the_navigation(name: str) -> None:
    body = render_page(name, {"csrf": "token-1", "call_id": "v3:x"}).body.decode()
    assert "{{" not in body
    assert body.count('<meta name="csrf-token" content="token-1">') == 1
    assert body.count('<script src="/console/static/common.js"></script>') == 1
    assert body.count('<button id="logout" type="button">Sign out</button>') == 1
    assert body.index("common.js") < body.index(f"{name}.js")  # shared scripts load first


def test_values_are_escaped_also_inside_partials() -> None:
    body = render_page("dashboard", {"csrf": '"><script>alert(1)</script>'}).body.decode()
    assert "<script>alert(1)" not in body
    assert "&quot;&gt;&lt;script&gt;" in body
