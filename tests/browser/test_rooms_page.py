"""Rooms, direct messages and people on the page (issue 14), in headless Chromium against
`quart-chat serve --workers 2`: what each person sees, live, on their own screen."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

from playwright.sync_api import Locator, Page, expect
from redis.asyncio import Redis

from quart_chat.models.messages import RoomHistory
from quart_chat.models.users import get_or_create_user

from ..servers import ChatServer, RedisServer
from ..smtp import SmtpSink
from .conftest import ADMIN_EMAIL, ARTIFACTS, Browsers, log_in, unique
from .test_chat_page import assert_no_duplicates, delivered

NO_ACCESS = "This room doesn't exist or you don't have access."
ROOM_URL = re.compile(r"/r/[A-Za-z0-9_-]+$")
PHONE = {"width": 390, "height": 844}


def room_name(prefix: str) -> str:
    """Room names are unique on the server: each test makes its own."""
    return unique(prefix).replace(" ", "-")


def say_in(page: Page, label: str, text: str) -> None:
    box = page.get_by_label(f"Message {label}", exact=True)
    box.fill(text)
    box.press("Enter")


def sidebar_link(page: Page, name: str) -> Locator:
    return page.locator("#sidebar .sidebar-link").filter(
        has=page.locator(".sidebar-name").get_by_text(name, exact=True)
    )


def badge(page: Page, name: str) -> Locator:
    return sidebar_link(page, name).locator(".sidebar-badge")


def title(page: Page) -> Locator:
    return page.locator("#room-title")


def create_room(
    page: Page, name: str, *, private: bool = False, invite: tuple[str, ...] = ()
) -> str:
    """Create a room through its dialog; returns the room's path."""
    page.get_by_role("button", name="Create a room").click()
    dialog = page.get_by_role("dialog", name="Create a room")
    expect(dialog.get_by_label("Name")).to_be_focused()
    dialog.get_by_label("Name").fill(name)
    if private:
        dialog.get_by_role("radio", name=re.compile("Private")).check()
    for person in invite:
        dialog.get_by_label("Invite people").fill(person)
        dialog.locator(".picker-results").get_by_role("button", name=person, exact=True).click()
        expect(dialog.locator(".picker-chips")).to_contain_text(person)
    dialog.get_by_role("button", name="Create room").click()
    expect(dialog).to_have_count(0)
    expect(page).to_have_url(ROOM_URL)
    expect(title(page)).to_have_text(f"#{name}")
    return "/" + page.url.split("/", 3)[3]


def post_many(redis_url: str, email: str, room: str, texts: list[str]) -> None:
    """Post as `email` straight through the model (it publishes like the server does)."""

    async def post() -> None:
        async with Redis.from_url(redis_url) as redis:
            user = await get_or_create_user(redis, email)
            history = RoomHistory(redis, 10000)
            for number, text in enumerate(texts):
                await history.post(room, user, text, f"bulk-{unique('id')}-{number}")

    # Playwright's sync API keeps an event loop running in this thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, post()).result()


def test_a_private_room_and_its_invited_member_see_it_live_and_nobody_else_does(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    alice = browsers.person(chat_server, "alice.rooms@example.test")
    bob = browsers.person(chat_server, "bob.rooms@example.test")
    carol = browsers.person(chat_server, "carol.rooms@example.test")
    name = room_name("plans")

    path = create_room(alice.page, name, private=True, invite=(bob.name,))
    # The invited person sees it appear without reloading; the outsider never does.
    expect(sidebar_link(bob.page, name)).to_be_visible()
    sidebar_link(bob.page, name).click()
    expect(bob.page).to_have_url(chat_server.base_url + path)
    expect(title(bob.page)).to_have_text(f"#{name}")
    secret = unique("the secret plan")
    say_in(alice.page, f"#{name}", secret)
    delivered(alice.page, secret)
    delivered(bob.page, secret)

    expect(carol.page.locator("#room-list")).to_contain_text("general")
    expect(sidebar_link(carol.page, name)).to_have_count(0)
    # Even by URL: the same words as for a room that never existed, and nothing of the room.
    carol.page.goto(chat_server.base_url + path)
    expect(carol.page.locator("#panes")).to_have_text(re.compile(re.escape(NO_ACCESS)))
    expect(carol.page.locator("#composer")).to_be_hidden()
    shown = carol.page.locator("body").inner_text()
    assert name not in shown and secret not in shown
    private_view = (title(carol.page).inner_text(), carol.page.title())
    carol.page.goto(chat_server.base_url + "/r/no-such-room")
    expect(carol.page.locator("#panes")).to_have_text(re.compile(re.escape(NO_ACCESS)))
    assert (title(carol.page).inner_text(), carol.page.title()) == private_view

    # The URL is the room: reload, back and forward all land where they should.
    bob.page.reload()
    expect(title(bob.page)).to_have_text(f"#{name}")
    delivered(bob.page, secret)
    bob.page.go_back()
    expect(title(bob.page)).to_have_text("#general")
    bob.page.go_forward()
    expect(title(bob.page)).to_have_text(f"#{name}")
    delivered(bob.page, secret)
    assert browsers.errors == []


def test_logged_out_visitor_of_a_room_url_comes_back_to_it_after_login(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    page = browsers.watch(browsers.context().new_page())
    page.goto(chat_server.base_url + "/r/some-room")
    expect(page).to_have_url(re.compile(r"/login\?next=/r/some-room$"))


def test_a_direct_message_from_the_people_list(chat_server: ChatServer, browsers: Browsers) -> None:
    dave = browsers.person(chat_server, "dave.dm@example.test")
    erin = browsers.person(chat_server, "erin.dm@example.test")

    dave.page.locator("#online").get_by_role("button", name=f"Direct message {erin.name}").click()
    expect(title(dave.page)).to_have_text(erin.name)
    expect(dave.page).to_have_url(ROOM_URL)
    hello = unique("just between us")
    say_in(dave.page, erin.name, hello)
    delivered(dave.page, hello)

    # erin has not opened it: it appears in her list, bold, with one unread.
    expect(sidebar_link(erin.page, dave.name)).to_have_class(re.compile(r"\bsidebar-unread\b"))
    expect(badge(erin.page, dave.name)).to_have_text("1")
    sidebar_link(erin.page, dave.name).click()
    delivered(erin.page, hello)
    expect(badge(erin.page, dave.name)).to_have_count(0)
    answer = unique("sure")
    say_in(erin.page, dave.name, answer)
    delivered(dave.page, answer)
    # The same two people always get the same room.
    dm_path = dave.page.url
    dave.page.goto(chat_server.base_url + "/")
    dave.page.locator("#online").get_by_role("button", name=f"Direct message {erin.name}").click()
    expect(dave.page).to_have_url(dm_path)
    delivered(dave.page, answer)
    assert browsers.errors == []


def test_unread_badges_clear_on_reading_and_stay_cleared_on_another_device(
    chat_server: ChatServer, redis_server: RedisServer, browsers: Browsers
) -> None:
    frank = browsers.person(chat_server, "frank.unread@example.test")
    phone = browsers.person(chat_server, "frank.unread@example.test")  # his second device
    gina = browsers.person(chat_server, "gina.unread@example.test")
    quiet = room_name("quiet")
    path = create_room(frank.page, quiet)
    phone.page.goto(chat_server.base_url + path)
    expect(title(phone.page)).to_have_text(f"#{quiet}")

    texts = [unique("while frank looks away") for _ in range(3)]
    for text in texts:
        say_in(gina.page, "#general", text)
        delivered(gina.page, text)
    for page in (frank.page, phone.page):
        expect(badge(page, "general")).to_have_text("3")
        expect(sidebar_link(page, "general")).to_have_class(re.compile(r"\bsidebar-unread\b"))
    # His own messages never count.
    expect(sidebar_link(gina.page, "general").locator(".sidebar-badge")).to_have_count(0)

    sidebar_link(frank.page, "general").click()
    delivered(frank.page, texts[-1])
    expect(badge(frank.page, "general")).to_have_count(0)
    # Read on one device is read on the other, live and after a reload.
    expect(badge(phone.page, "general")).to_have_count(0)
    expect(sidebar_link(phone.page, "general")).not_to_have_class(re.compile(r"sidebar-unread"))
    phone.page.reload()
    expect(title(phone.page)).to_have_text(f"#{quiet}")
    expect(sidebar_link(phone.page, "general")).to_be_visible()
    expect(badge(phone.page, "general")).to_have_count(0)

    # Counted to 99, then "99+".
    sidebar_link(frank.page, quiet).click()
    flood = [unique("flood") for _ in range(105)]
    post_many(redis_server.url, gina.email, "general", flood)
    expect(badge(frank.page, "general")).to_have_text("99+")
    ARTIFACTS.mkdir(exist_ok=True)
    frank.page.screenshot(path=ARTIFACTS / "rooms-desktop-unread.png")
    phone.page.reload()
    expect(badge(phone.page, "general")).to_have_text("99+")
    assert browsers.errors == []


def test_browse_join_rename_and_topic_reach_members_live(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    hana = browsers.person(chat_server, "hana.rename@example.test")
    ivan = browsers.person(chat_server, "ivan.rename@example.test")
    name = room_name("lunch")
    path = create_room(hana.page, name)

    ivan.page.get_by_role("button", name="Browse rooms").click()
    dialog = ivan.page.get_by_role("dialog", name="Browse rooms")
    dialog.get_by_label("Search rooms").fill(name[:8])
    dialog.get_by_role("button", name=f"Join #{name}").click()
    expect(ivan.page).to_have_url(chat_server.base_url + path)
    expect(title(ivan.page)).to_have_text(f"#{name}")

    renamed = room_name("dinner")
    hana.page.get_by_role("button", name="Members & settings").click()
    expect(hana.page.get_by_role("dialog", name=f"About #{name}")).to_be_visible()
    settings = hana.page.locator("dialog[open]")  # its name follows the room's
    expect(settings.locator(".info-members")).to_contain_text(ivan.name)
    settings.get_by_label("Room name").fill(renamed)
    settings.get_by_label("Topic").fill("Fridays at seven")
    settings.get_by_role("button", name="Save changes").click()
    expect(settings).to_contain_text("Saved.")
    ARTIFACTS.mkdir(exist_ok=True)
    hana.page.screenshot(path=ARTIFACTS / "rooms-settings-dialog.png")
    expect(hana.page.get_by_role("dialog", name=f"About #{renamed}")).to_be_visible()
    settings.get_by_role("button", name="Close").click()
    expect(settings).to_have_count(0)
    expect(hana.page.get_by_role("button", name="Members & settings")).to_be_focused()

    for page in (hana.page, ivan.page):
        expect(title(page)).to_have_text(f"#{renamed}")
        expect(page.locator("#room-topic")).to_have_text("Fridays at seven")
        expect(sidebar_link(page, renamed)).to_be_visible()
        expect(sidebar_link(page, name)).to_have_count(0)
        expect(page.get_by_label(f"Message #{renamed}")).to_be_visible()
    assert browsers.errors == []


def test_removal_closes_the_room_on_the_removed_persons_open_tab(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    jane = browsers.person(chat_server, "jane.remove@example.test")
    kim = browsers.person(chat_server, "kim.remove@example.test")
    name = room_name("team")
    path = create_room(jane.page, name, private=True, invite=(kim.name,))
    kim.page.goto(chat_server.base_url + path)
    expect(title(kim.page)).to_have_text(f"#{name}")
    said = unique("before the removal")
    say_in(jane.page, f"#{name}", said)
    delivered(kim.page, said)

    jane.page.get_by_role("button", name="Members & settings").click()
    settings = jane.page.get_by_role("dialog", name=f"About #{name}")
    settings.get_by_role("button", name=f"Remove {kim.name}").click()
    expect(settings.locator(".info-members")).not_to_contain_text(kim.name)

    expect(kim.page.locator("#notice")).to_have_text(f"You were removed from #{name}.")
    expect(title(kim.page)).to_have_text("#general")
    expect(kim.page).to_have_url(chat_server.base_url + "/")
    expect(sidebar_link(kim.page, name)).to_have_count(0)
    after = unique("after the removal")
    settings.get_by_role("button", name="Close").click()
    say_in(jane.page, f"#{name}", after)
    delivered(jane.page, after)
    kim.page.goto(chat_server.base_url + path)
    expect(kim.page.locator("#panes")).to_have_text(re.compile(re.escape(NO_ACCESS)))
    assert after not in kim.page.locator("body").inner_text()
    assert browsers.errors == []


def test_a_new_display_name_reaches_everyone_live(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    lena = browsers.person(chat_server, "lena.name@example.test")
    mo = browsers.person(chat_server, "mo.name@example.test")
    expect(mo.page.locator("#online")).to_contain_text(lena.name)
    new_name = unique("Lena")
    lena.page.locator("#me").click()
    dialog = lena.page.get_by_role("dialog", name="Your display name")
    expect(dialog.get_by_label("Display name")).to_be_focused()
    dialog.get_by_label("Display name").fill(new_name)
    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_have_count(0)
    expect(lena.page.locator("#me")).to_have_text(new_name)
    expect(mo.page.locator("#online")).to_contain_text(new_name)
    assert browsers.errors == []


def test_phone_layout_keeps_the_room_list_in_a_drawer(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    nora = browsers.person(chat_server, "nora.phone@example.test", viewport=PHONE)
    page = nora.page
    ARTIFACTS.mkdir(exist_ok=True)
    composer = page.get_by_label("Message #general")
    expect(composer).to_be_in_viewport()
    expect(page.locator("#sidebar")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=ARTIFACTS / "rooms-phone-closed.png")

    toggle = page.get_by_role("button", name="Rooms", exact=True)
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(page.locator("#sidebar")).to_be_in_viewport()
    expect(sidebar_link(page, "general")).to_be_focused()
    page.screenshot(path=ARTIFACTS / "rooms-phone-drawer.png", animations="disabled")
    page.keyboard.press("Escape")
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(toggle).to_be_focused()
    expect(toggle).to_have_attribute("aria-expanded", "false")

    # Opening a room from the drawer closes it and shows the room with its composer.
    name = room_name("phone")
    toggle.click()
    create_room(page, name)
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(page.get_by_label(f"Message #{name}", exact=True)).to_be_in_viewport()
    toggle.click()
    sidebar_link(page, "general").click()
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(title(page)).to_have_text("#general")
    expect(composer).to_be_in_viewport()
    expect(composer).to_be_focused()
    assert browsers.errors == []


def test_ctrl_k_jumps_to_a_room_or_a_person(chat_server: ChatServer, browsers: Browsers) -> None:
    olga = browsers.person(chat_server, "olga.jump@example.test")
    pete = browsers.person(chat_server, "pete.jump@example.test")
    page = olga.page
    name = room_name("jumpable")
    path = create_room(page, name)
    sidebar_link(page, "general").click()
    expect(title(page)).to_have_text("#general")

    page.get_by_label("Message #general").focus()
    page.keyboard.press("Control+k")
    dialog = page.get_by_role("dialog", name="Jump to")
    search = dialog.get_by_label("Room or person")
    expect(search).to_be_focused()
    page.keyboard.type(name[:10])
    expect(dialog.get_by_role("option").first).to_have_text(f"#{name}")
    page.keyboard.press("Enter")
    expect(dialog).to_have_count(0)
    expect(page).to_have_url(chat_server.base_url + path)

    page.keyboard.press("Control+k")
    page.keyboard.type(pete.name)
    option = dialog.get_by_role("option", name=f"{pete.name} (person)")
    expect(option).to_be_visible()
    for _ in range(dialog.get_by_role("option").count()):
        if option.get_attribute("aria-selected") == "true":
            break
        page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect(title(page)).to_have_text(pete.name)

    # Escape closes the switcher and gives focus back where it was.
    composer = page.get_by_label(f"Message {pete.name}", exact=True)
    composer.focus()
    page.keyboard.press("Control+k")
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(composer).to_be_focused()
    assert browsers.errors == []


def test_switching_rooms_keeps_drafts_scroll_and_the_page(
    chat_server: ChatServer, redis_server: RedisServer, browsers: Browsers
) -> None:
    quinn = browsers.person(chat_server, "quinn.switch@example.test")
    page = quinn.page
    batch = unique("scrollback")
    post_many(
        redis_server.url, "rosa.switch@example.test", "general", [f"{batch} {n}" for n in range(40)]
    )
    delivered(page, f"{batch} 39")
    page.evaluate("window.__samePage = true")
    name = room_name("side")
    create_room(page, name)
    page.get_by_label(f"Message #{name}", exact=True).fill("half a thought")

    sidebar_link(page, "general").click()
    general_box = page.get_by_label("Message #general", exact=True)
    expect(general_box).to_have_value("")
    general_box.fill("another draft")
    scroller = page.locator("#scroller")
    scroller.evaluate("s => { s.scrollTop = 200; }")
    page.wait_for_timeout(200)
    kept = scroller.evaluate("s => s.scrollTop")

    sidebar_link(page, name).click()
    expect(page.get_by_label(f"Message #{name}", exact=True)).to_have_value("half a thought")
    sidebar_link(page, "general").click()
    expect(general_box).to_have_value("another draft")
    assert abs(scroller.evaluate("s => s.scrollTop") - kept) <= 2
    assert page.evaluate("window.__samePage") is True
    assert browsers.errors == []


def test_invite_from_settings_then_leave_and_archive(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    sam = browsers.person(chat_server, "sam.archive@example.test")
    tess = browsers.person(chat_server, "tess.archive@example.test")
    uma = browsers.person(chat_server, "uma.archive@example.test")
    name = room_name("project")
    path = create_room(sam.page, name, private=True)

    sam.page.get_by_role("button", name="Members & settings").click()
    settings = sam.page.get_by_role("dialog", name=f"About #{name}")
    for person in (tess, uma):
        settings.get_by_label("Invite someone").fill(person.name)
        settings.locator(".picker-results").get_by_role("button", name=person.name).click()
        expect(settings.locator(".info-members")).to_contain_text(person.name)
        expect(sidebar_link(person.page, name)).to_be_visible()
    settings.get_by_role("button", name="Close").click()

    # Leaving: the room goes from the leaver's list; the others keep it.
    tess.page.goto(chat_server.base_url + path)
    tess.page.get_by_role("button", name="Members & settings").click()
    tess.page.get_by_role("button", name="Leave room").click()
    expect(tess.page.locator("#notice")).to_have_text(f"You left #{name}.")
    expect(title(tess.page)).to_have_text("#general")
    expect(sidebar_link(tess.page, name)).to_have_count(0)

    # Archiving (pressed twice: it takes the room from everyone) closes it on open tabs.
    uma.page.goto(chat_server.base_url + path)
    expect(title(uma.page)).to_have_text(f"#{name}")
    sam.page.get_by_role("button", name="Members & settings").click()
    settings = sam.page.get_by_role("dialog", name=f"About #{name}")
    settings.get_by_role("button", name="Archive room").click()
    expect(settings).to_contain_text("Press again to archive")
    settings.get_by_role("button", name="Archive for everyone?").click()
    for page in (sam.page, uma.page):
        expect(page.locator("#notice")).to_have_text(f"This room was archived: #{name}.")
        expect(title(page)).to_have_text("#general")
        expect(sidebar_link(page, name)).to_have_count(0)
    assert browsers.errors == []


def test_keyboard_alone_creates_a_room_and_a_link_to_a_public_room_offers_to_join(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    vera = browsers.person(chat_server, "vera.keys@example.test")
    walt = browsers.person(chat_server, "walt.keys@example.test")
    page = vera.page
    create = page.get_by_role("button", name="Create a room")
    page.locator("body").focus()
    for _ in range(15):
        page.keyboard.press("Tab")
        if create.evaluate("button => button === document.activeElement"):
            break
    expect(create).to_be_focused()
    assert create.evaluate("b => getComputedStyle(b).outlineStyle") != "none"
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Create a room")
    expect(dialog.get_by_label("Name")).to_be_focused()
    # Focus stays in the dialog, and Escape hands it back to the button.
    for _ in range(12):
        page.keyboard.press("Tab")
        assert dialog.evaluate("d => d.contains(document.activeElement)")
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(create).to_be_focused()

    name = room_name("keys")
    page.keyboard.press("Enter")
    page.keyboard.type(name)
    page.keyboard.press("Enter")
    expect(title(page)).to_have_text(f"#{name}")
    expect(page).to_have_url(ROOM_URL)
    path = "/" + page.url.split("/", 3)[3]

    # A public room's link: its name is public (browse shows it), so it offers to join.
    walt.page.goto(chat_server.base_url + path)
    join = walt.page.get_by_role("button", name=f"Join #{name}")
    expect(join).to_be_visible()
    join.focus()
    walt.page.keyboard.press("Enter")
    expect(title(walt.page)).to_have_text(f"#{name}")
    expect(sidebar_link(walt.page, name)).to_be_visible()
    expect(walt.page.get_by_label(f"Message #{name}", exact=True)).to_be_visible()
    assert browsers.errors == []


def test_a_room_viewed_before_a_reconnect_catches_up_when_opened_again(
    chat_server: ChatServer, browsers: Browsers
) -> None:
    xena = browsers.person(chat_server, "xena.resume@example.test")
    yuri = browsers.person(chat_server, "yuri.resume@example.test")
    name = room_name("resume")
    path = create_room(xena.page, name, invite=(yuri.name,))
    yuri.page.goto(chat_server.base_url + path)
    before = unique("before the outage")
    say_in(yuri.page, f"#{name}", before)
    delivered(xena.page, before)
    sidebar_link(xena.page, "general").click()

    # Offline: what she types waits, in its own room, while she looks elsewhere.
    xena.page.context.set_offline(True)
    expect(xena.page.locator("#connection")).to_have_attribute("data-state", "offline")
    typed = unique("typed while offline")
    say_in(xena.page, "#general", typed)
    waiting = xena.page.locator("#messages > li").filter(has_text=typed)
    expect(waiting).to_contain_text("Waiting for connection")
    sidebar_link(xena.page, name).click()
    expect(xena.page.locator("#messages > li").filter(has_text=typed)).to_have_count(0)
    sidebar_link(xena.page, "general").click()
    expect(waiting).to_contain_text("Waiting for connection")
    missed = [unique("missed") for _ in range(3)]
    for text in missed:
        say_in(yuri.page, f"#{name}", text)
        delivered(yuri.page, text)

    xena.page.context.set_offline(False)
    expect(xena.page.locator("#connection")).to_have_attribute("data-state", "connected")
    delivered(xena.page, typed)
    # What the room missed is counted while it is not open, then fills in once it is.
    expect(badge(xena.page, name)).to_have_text("3")
    sidebar_link(xena.page, name).click()
    for text in [before, *missed]:
        delivered(xena.page, text)
    expect(badge(xena.page, name)).to_have_count(0)
    assert_no_duplicates(xena.page)
    assert browsers.errors == []


def test_the_tab_title_counts_unread_messages_up_to_99_plus(
    chat_server: ChatServer, redis_server: RedisServer, browsers: Browsers
) -> None:
    uma = browsers.person(chat_server, "uma.title@example.test")
    vic = browsers.person(chat_server, "vic.title@example.test")
    name = room_name("title")
    path = create_room(vic.page, name, invite=(uma.name,))
    expect(sidebar_link(uma.page, name)).to_be_visible()
    expect(uma.page).to_have_title("#general · quart-chat")
    for number in range(3):
        say_in(vic.page, f"#{name}", unique(f"news {number}"))
    expect(uma.page).to_have_title("(3) #general · quart-chat")
    expect(vic.page).to_have_title(f"#{name} · quart-chat")  # one's own never count

    sidebar_link(uma.page, name).click()
    expect(uma.page).to_have_title(f"#{name} · quart-chat")
    sidebar_link(uma.page, "general").click()
    post_many(redis_server.url, vic.email, path.rsplit("/", 1)[1], [f"m{n}" for n in range(120)])
    expect(uma.page).to_have_title("(99+) #general · quart-chat")
    assert browsers.errors == []


def test_an_admin_deactivates_and_reactivates_someone_from_the_page(
    chat_server: ChatServer, browsers: Browsers, smtp_sink: SmtpSink
) -> None:
    root = browsers.person(chat_server, ADMIN_EMAIL)
    bob = browsers.person(chat_server, "bob.deactivated@example.test")
    cara = browsers.person(chat_server, "cara.deactivated@example.test")
    expect(cara.page.locator("#online")).to_contain_text(bob.name)
    expect(cara.page.get_by_role("button", name="Manage people")).to_be_hidden()

    # The member panel offers it to the admin only.
    root.page.get_by_role("button", name="Members & settings").click()
    about = root.page.get_by_role("dialog", name="About #general")
    expect(about.get_by_role("button", name=f"Deactivate {cara.name}")).to_be_visible()
    about.get_by_role("button", name="Close").click()

    root.page.get_by_role("button", name="Manage people").click()
    people = root.page.get_by_role("dialog", name="Manage people")
    expect(people.get_by_label("Search people")).to_be_focused()
    people.get_by_label("Search people").fill(bob.name)
    deactivate = people.get_by_role("button", name=f"Deactivate {bob.name}")
    # By keyboard: the confirmation opens on Cancel, so Escape or Enter changes nothing.
    deactivate.focus()
    root.page.keyboard.press("Enter")
    confirm = root.page.get_by_role("alertdialog", name=f"Deactivate {bob.name}?")
    expect(confirm).to_contain_text("logged out everywhere")
    expect(confirm.get_by_role("button", name="Cancel")).to_be_focused()
    root.page.keyboard.press("Escape")
    expect(confirm).to_have_count(0)
    expect(deactivate).to_be_focused()
    expect(bob.page.locator("#connection")).to_have_attribute("data-state", "connected")
    root.page.keyboard.press("Enter")
    expect(confirm.get_by_role("button", name="Cancel")).to_be_focused()
    root.page.keyboard.press("Tab")
    expect(confirm.get_by_role("button", name="Deactivate")).to_be_focused()
    root.page.keyboard.press("Enter")

    # Bob's open tab is logged out; the other pages stop offering him.
    bob.page.wait_for_url(re.compile(r"/login$"))
    expect(people.get_by_role("status")).to_have_text(f"{bob.name} was deactivated.")
    expect(cara.page.locator("#online")).not_to_contain_text(bob.name)
    cara.page.get_by_role("button", name="New direct message").click()
    picker = cara.page.get_by_role("dialog", name="New direct message")
    picker.get_by_label("Find people").fill(bob.name)
    expect(picker.locator(".picker-results")).to_have_text("Nobody by that name.")
    picker.get_by_role("button", name="Close").click()

    # His code request is answered like any other, and no mail goes out.
    mails = len(smtp_sink.messages_to(bob.email))
    bob.page.get_by_label("Email").fill(bob.email)
    bob.page.get_by_role("button", name="Send code").click()
    expect(bob.page.get_by_label("Code")).to_be_focused()
    browsers.person(chat_server, "after.bob@example.test")  # its mail comes after his would
    assert len(smtp_sink.messages_to(bob.email)) == mails

    people.get_by_label("Show deactivated people").check()
    people.get_by_role("button", name=f"Reactivate {bob.name}").click()
    expect(people.get_by_role("status")).to_have_text(f"{bob.name} was reactivated.")
    log_in(bob.page, chat_server.base_url, bob.email, smtp_sink)
    assert len(smtp_sink.messages_to(bob.email)) == mails + 1
    expect(cara.page.locator("#online")).to_contain_text(bob.name)
    assert browsers.errors == []
