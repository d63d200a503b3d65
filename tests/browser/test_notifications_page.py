"""Browser notifications in the system Chromium: while the page is hidden, a direct
message and a mention raise one, a plain room message and your own messages do not,
clicking one opens its room; permission is only asked from the "Enable notifications"
button, which shows only while the choice is open.

The permission is granted through the browser context. Headless Chromium shows no
notification anywhere a test can read, so an init script replaces `window.Notification`
with a recorder (keeping the real permission) and lets the test hide the page: it
overrides `document.visibilityState`/`hidden` and dispatches `visibilitychange`, as a
browser does when the tab goes to the background."""

from __future__ import annotations

import time
from typing import Any

from playwright.sync_api import Page, expect

from ..servers import ChatServer, RedisServer
from .conftest import Browsers, Person, log_in, unique
from .test_chat_page import delivered
from .test_mentions_page import name_user
from .test_rooms_page import ROOM_URL, say_in, sidebar_link, title

WAIT_SECONDS = 5.0

RECORDER = """
(() => {
  const Real = window.Notification;
  const made = [];
  window.__notifications = made;
  class Recorded {
    constructor(title, options = {}) {
      this.title = title;
      this.body = options.body;
      this.onclick = null;
      this.closed = false;
      made.push(this);
    }
    close() { this.closed = true; }
    static get permission() { return Real.permission; }
    static requestPermission() { return Real.requestPermission(); }
  }
  window.Notification = Recorded;
  let hidden = false;
  Object.defineProperty(Document.prototype, "visibilityState", {
    configurable: true, get: () => (hidden ? "hidden" : "visible"),
  });
  Object.defineProperty(Document.prototype, "hidden", { configurable: true, get: () => hidden });
  window.__setHidden = (value) => {
    hidden = value;
    document.dispatchEvent(new Event("visibilitychange"));
  };
})();
"""


def watched_person(
    browsers: Browsers, server: ChatServer, email: str, *, granted: bool = True
) -> Person:
    """A logged-in page whose notifications are recorded (permission granted if asked)."""
    context = browsers.context()
    if granted:
        context.grant_permissions(["notifications"], origin=server.base_url)
    context.add_init_script(RECORDER)
    page = browsers.watch(context.new_page())
    log_in(page, server.base_url, email, browsers.sink)
    return Person(page, email)


def notifications(page: Page) -> list[dict[str, Any]]:
    shown: list[dict[str, Any]] = page.evaluate(
        "window.__notifications.map((n) => ({title: n.title, body: n.body}))"
    )
    return shown


def wait_for_notifications(page: Page, count: int) -> list[dict[str, Any]]:
    # Polled from here: wait_for_function evaluates a string, which the page's CSP forbids.
    deadline = time.monotonic() + WAIT_SECONDS
    while len(shown := notifications(page)) < count and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    return shown


def test_direct_messages_and_mentions_notify_while_hidden_and_a_click_opens_the_room(
    chat_server: ChatServer, redis_server: RedisServer, browsers: Browsers
) -> None:
    ann_name = f"Ann{unique('N').replace(' ', '')}"
    bob_name = f"Bob{unique('N').replace(' ', '')}"
    name_user(redis_server.url, "ann.notify@example.test", ann_name)
    name_user(redis_server.url, "bob.notify@example.test", bob_name)
    ann = watched_person(browsers, chat_server, "ann.notify@example.test")
    phone = browsers.person(chat_server, "ann.notify@example.test")  # her other device
    bob = browsers.person(chat_server, "bob.notify@example.test")
    # Granted: nothing to ask for.
    expect(ann.page.get_by_role("button", name="Enable notifications")).to_be_hidden()

    # Visible: even a mention raises nothing (she is looking at it).
    seen_mention = unique(f"@{ann_name} look")
    say_in(bob.page, "#general", seen_mention)
    delivered(ann.page, seen_mention)

    ann.page.evaluate("window.__setHidden(true)")
    plain = unique("just chatting")
    say_in(bob.page, "#general", plain)
    mine = unique("from my phone")
    say_in(phone.page, "#general", f"@{ann_name} {mine}")  # her own message, even mentioning her
    mention = unique(f"@{ann_name} are you there")
    say_in(bob.page, "#general", mention)
    shown = wait_for_notifications(ann.page, 1)
    assert shown == [{"title": f"#general · {bob_name}", "body": mention}]

    # A direct message in a conversation her page has not opened: an unread bump, no text.
    bob.page.locator("#online").get_by_role("button", name=f"Direct message {ann_name}").click()
    expect(title(bob.page)).to_have_text(ann_name)
    secret = unique("just between us")
    say_in(bob.page, ann_name, secret)
    delivered(bob.page, secret)
    shown = wait_for_notifications(ann.page, 2)
    assert shown[1] == {"title": bob_name, "body": f"New message in {bob_name}"}

    # Her reply from the phone in the DM does not notify her hidden page.
    reply = unique("on my way")
    sidebar_link(phone.page, bob_name).click()
    say_in(phone.page, bob_name, reply)
    delivered(bob.page, reply)
    # Clicking the DM's notification opens the conversation.
    ann.page.evaluate("window.__notifications[1].onclick()")
    expect(title(ann.page)).to_have_text(bob_name)
    expect(ann.page).to_have_url(ROOM_URL)
    delivered(ann.page, reply)
    # Now the DM is open (joined): the next one arrives as a message, with its text.
    again = unique("one more thing")
    say_in(bob.page, ann_name, again)
    shown = wait_for_notifications(ann.page, 3)
    assert shown[2] == {"title": bob_name, "body": again}
    assert len(notifications(ann.page)) == 3
    assert browsers.errors == []


def test_permission_is_asked_only_from_the_button(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    cleo = watched_person(browsers, chat_server, "cleo.notify@example.test", granted=False)
    enable = cleo.page.get_by_role("button", name="Enable notifications")
    expect(enable).to_be_visible()
    # Not asked on load: the permission is still open.
    assert cleo.page.evaluate("Notification.permission") == "default"
    cleo.page.context.grant_permissions(["notifications"], origin=chat_server.base_url)
    enable.click()
    expect(enable).to_be_hidden()
    expect(cleo.page.get_by_text("Notifications are blocked")).to_be_hidden()
    assert browsers.errors == []


def test_a_refused_permission_hides_the_button_and_says_notifications_are_blocked(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    # Headless Chromium answers a permission request nobody granted with "denied",
    # as a person clicking "Block" would.
    dan = watched_person(browsers, chat_server, "dan.notify@example.test", granted=False)
    enable = dan.page.get_by_role("button", name="Enable notifications")
    note = dan.page.get_by_text("Notifications are blocked")
    expect(note).to_be_hidden()
    enable.click()
    expect(note).to_be_visible()
    expect(enable).to_be_hidden()
    assert dan.page.evaluate("Notification.permission") == "denied"
    # Reloading keeps it so: the browser remembers the refusal.
    dan.page.reload()
    expect(dan.page.locator("#connection")).to_have_attribute("data-state", "connected")
    expect(note).to_be_visible()
    expect(dan.page.get_by_role("button", name="Enable notifications")).to_be_hidden()
    assert browsers.errors == []
