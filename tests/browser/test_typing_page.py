"""The typing line (SPEC §9) in headless Chromium against `quart-chat serve --workers 2`:
what the others see while someone types, and what the typer never sees."""

from __future__ import annotations

import time

from playwright.sync_api import Page, expect

from ..servers import ChatServer
from .conftest import Browsers, unique
from .test_chat_page import delivered


def type_in(page: Page, label: str, text: str) -> None:
    """Keystrokes, as a person types them (each one an `input` event), without sending."""
    page.get_by_label(f"Message {label}", exact=True).press_sequentially(text, delay=20)


def test_the_others_see_who_is_typing_until_the_message_arrives_or_5_s_pass(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    ann = browsers.person(chat_server, "ann.typing@example.test")
    bob = browsers.person(chat_server, "bob.typing@example.test")
    cy = browsers.person(chat_server, "cy.typing@example.test")
    line = ann.page.locator("#typing")
    expect(line).to_have_attribute("aria-live", "polite")
    expect(line).to_have_text("")

    text = unique("hello from bob")
    type_in(bob.page, "#general", text)
    expect(line).to_have_text(f"{bob.name} is typing…")
    expect(cy.page.locator("#typing")).to_have_text(f"{bob.name} is typing…")
    # Bob's message clears his name at once, long before the 5 s are up.
    bob.page.get_by_label("Message #general", exact=True).press("Enter")
    delivered(ann.page, text)
    expect(line).to_have_text("", timeout=2000)

    # Two at once, then each name goes 5 s after that person's last keystroke frame.
    type_in(cy.page, "#general", "and cy")
    expect(line).to_have_text(f"{cy.name} is typing…")
    time.sleep(3.2)  # past Bob's page's 3 s between typing frames
    type_in(bob.page, "#general", "bob again")
    expect(line).to_have_text(f"{cy.name} and {bob.name} are typing…")
    # Nobody is ever shown their own typing, only the other one's.
    expect(bob.page.locator("#typing")).to_have_text(f"{cy.name} is typing…")
    expect(cy.page.locator("#typing")).to_have_text(f"{bob.name} is typing…")
    expect(line).to_have_text(f"{bob.name} is typing…", timeout=4000)  # Cy's 5 s are up
    started = time.monotonic()
    expect(line).to_have_text("", timeout=7000)
    assert time.monotonic() - started > 2.0  # Bob's name stayed for its own 5 s
    assert browsers.errors == []


def test_the_typing_line_names_two_people_then_says_several(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    page = browsers.person(chat_server, "dee.typing@example.test").page
    texts = page.evaluate(
        """async () => {
          const { typingText } = await import("/static/chat/roomview.js");
          return [[], ["Ann"], ["Ann", "Bob"], ["Ann", "Bob", "Cy"]].map(typingText);
        }"""
    )
    assert texts == [
        "",
        "Ann is typing…",
        "Ann and Bob are typing…",
        "Several people are typing…",
    ]
