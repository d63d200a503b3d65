"""Edit, delete and reactions (SPEC §9) in headless Chromium against `quart-chat serve
--workers 2`: what the author does with the keyboard, and what another person sees live."""

from __future__ import annotations

from playwright.sync_api import Locator, Page, expect

from ..servers import ChatServer
from .conftest import Browsers, unique
from .test_chat_page import delivered, message, say


def by_id(page: Page, message_id: str) -> Locator:
    return page.locator(f'#messages > li[data-id="{message_id}"]')


def test_two_people_see_an_edit_a_reaction_and_a_deletion_live(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    ann = browsers.person(chat_server, "ann.changes@example.test")
    bob = browsers.person(chat_server, "bob.changes@example.test")
    text = unique("helo")
    say(ann.page, text)
    delivered(bob.page, text)
    message_id = message(ann.page, text).get_attribute("data-id")
    assert message_id is not None
    on_ann, on_bob = by_id(ann.page, message_id), by_id(bob.page, message_id)

    # Up in the empty composer edits Ann's last message; Escape cancels, Enter saves.
    composer = ann.page.get_by_label("Message #general", exact=True)
    composer.press("ArrowUp")
    box = on_ann.get_by_label("Edit message")
    expect(box).to_be_focused()
    expect(box).to_have_value(text)
    box.press("Escape")
    expect(box).to_have_count(0)
    expect(composer).to_be_focused()
    composer.press("ArrowUp")
    edited = unique("hello")
    box.fill(edited)
    box.press("Enter")
    for item in (on_ann, on_bob):
        expect(item.locator(".msg-text")).to_have_text(edited)
        expect(item.locator(".msg-edited")).to_have_text("(edited)")
    # Only the author is offered an edit.
    expect(on_bob.get_by_role("button", name="Edit")).to_have_count(0)

    # Bob reacts with the keyboard: the picker opens on the message, Enter picks.
    on_bob.get_by_role("button", name="Add a reaction").focus()
    bob.page.keyboard.press("Enter")
    expect(on_bob.get_by_role("button", name="React with 🎉")).to_be_visible()
    on_bob.get_by_role("button", name="React with 🎉").focus()
    bob.page.keyboard.press("Enter")
    for item, mine in ((on_bob, "true"), (on_ann, "false")):
        chip = item.locator(".reaction-chip")
        expect(chip).to_have_text("🎉 1")
        expect(chip).to_have_attribute("aria-pressed", mine)
        expect(chip).to_have_attribute("title", f"{bob.name} reacted with 🎉")
    # Ann's click on the chip adds hers; Bob's takes his away.
    on_ann.locator(".reaction-chip").click()
    expect(on_bob.locator(".reaction-chip")).to_have_text("🎉 2")
    on_bob.locator(".reaction-chip").click()
    expect(on_ann.locator(".reaction-chip")).to_have_text("🎉 1")
    expect(on_ann.locator(".reaction-chip")).to_have_attribute("aria-pressed", "true")

    # Ann deletes it, confirming with the keyboard (Cancel has the focus first).
    on_ann.get_by_role("button", name="Delete").focus()
    ann.page.keyboard.press("Enter")
    dialog = ann.page.get_by_role("alertdialog")
    expect(dialog).to_be_visible()
    ann.page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(on_ann.locator(".msg-text")).to_have_text(edited)
    on_ann.get_by_role("button", name="Delete").click()
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    ann.page.keyboard.press("Tab")
    ann.page.keyboard.press("Enter")
    for item in (on_ann, on_bob):
        expect(item.locator(".msg-text")).to_have_text("This message was deleted")
        expect(item.locator(".reaction-chip")).to_have_count(0)
        expect(item.get_by_role("button", name="Add a reaction")).to_have_count(0)

    # A fresh page shows the tombstone from history.
    bob.page.reload()
    expect(by_id(bob.page, message_id).locator(".msg-text")).to_have_text(
        "This message was deleted"
    )
    assert browsers.errors == []
