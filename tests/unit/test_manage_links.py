"""The client's page's signed link and form tokens, and its same-site rule (no I/O)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from services.booking.manage import ManageLinks, same_site

ROW: Any = SimpleNamespace(id="s-1", version=3)


def test_a_link_opens_only_its_session_and_survives_key_rotation() -> None:
    links = ManageLinks(["k1"], "https://book.example/")
    url = links.url(ROW.id)
    assert url is not None and url.startswith("https://book.example/m/")
    token = url.rsplit("/", 1)[1]
    assert links.session_id(token) == "s-1"
    assert links.session_id(token[:-2] + "xx") is None
    assert links.session_id("s-1") is None
    rotated = ManageLinks(["k2", "k1"], "https://book.example")
    assert rotated.session_id(token) == "s-1"
    assert ManageLinks(["other"], "https://book.example").session_id(token) is None


def test_a_form_token_is_bound_to_the_session_and_its_version() -> None:
    links = ManageLinks(["k1"], "https://book.example")
    form = links.form_token(ROW)
    assert links.form_version(form, "s-1") == 3
    assert links.form_version(form, "s-2") is None
    # A page link's token is not a form token (different salt).
    assert links.form_version(links.token("s-1"), "s-1") is None


def test_with_the_development_key_in_production_no_link_is_issued_or_opened() -> None:
    links = ManageLinks(["dev"], "https://book.example", enabled=False)
    token = ManageLinks(["dev"], "https://book.example").token("s-1")
    assert links.url(ROW.id) is None and links.session_id(token) is None


def test_only_our_own_pages_may_post() -> None:
    ours = {"https://book.example"}
    assert same_site({}, ours)
    assert same_site({"origin": "https://book.example", "sec-fetch-site": "same-origin"}, ours)
    assert not same_site({"origin": "https://evil.example"}, ours)
    assert not same_site({"origin": "null"}, ours)
    assert not same_site({"sec-fetch-site": "cross-site"}, ours)
    assert not same_site({"sec-fetch-site": "same-site"}, ours)
