// The room list: rooms, then direct messages, each a link to /r/<id> with its
// unread badge; on a phone it is a drawer over the page.

import { badgeText, el } from "./format.js";
import { GENERAL } from "./store.js";

// The phone layout (app.css): the room list becomes a drawer.
const PHONE = "(max-width: 40rem)";

export function roomPath(roomId) {
  return roomId === GENERAL ? "/" : `/r/${encodeURIComponent(roomId)}`;
}

export class Sidebar {
  // open(roomId): called when a room link is followed.
  constructor(store, open) {
    this.store = store;
    this.open = open;
    this.nav = document.getElementById("sidebar");
    this.roomList = document.getElementById("room-list");
    this.dmList = document.getElementById("dm-list");
    this.toggle = document.getElementById("drawer-toggle");
    this.backdrop = document.getElementById("drawer-backdrop");
    this.current = null;
    this.toggle.addEventListener("click", () => (this.isOpen ? this.close() : this.show()));
    this.backdrop.addEventListener("click", () => this.close(true));
    this.nav.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.isOpen) {
        event.stopPropagation();
        this.close(true);
      }
    });
    store.subscribe((what) => what === "rooms" && this.render());
    // Widening the window past the phone layout leaves no drawer to close.
    matchMedia(PHONE).addEventListener("change", (event) => event.matches || this.close());
  }

  // While the drawer covers the page, what is behind it takes no focus.
  setBehind(inert) {
    for (const node of document.querySelectorAll(".conversation, .people")) node.inert = inert;
  }

  get isOpen() {
    return document.body.classList.contains("drawer-open");
  }

  show() {
    document.body.classList.add("drawer-open");
    this.toggle.setAttribute("aria-expanded", "true");
    this.backdrop.hidden = false;
    this.setBehind(true);
    const target =
      this.nav.querySelector("[aria-current=page]") || this.nav.querySelector("a, button");
    target?.focus();
  }

  close(returnFocus = false) {
    if (!this.isOpen) return;
    document.body.classList.remove("drawer-open");
    this.toggle.setAttribute("aria-expanded", "false");
    this.backdrop.hidden = true;
    this.setBehind(false);
    if (returnFocus) this.toggle.focus();
  }

  select(roomId) {
    this.current = roomId;
    this.render();
  }

  // Counts change with every message: a keyboard user's place in the list survives it.
  render() {
    const focused = this.nav.contains(document.activeElement)
      ? document.activeElement.dataset.room
      : undefined;
    this.roomList.replaceChildren(...this.store.sorted("rooms").map((room) => this.item(room)));
    this.dmList.replaceChildren(...this.store.sorted("direct").map((room) => this.item(room)));
    if (focused !== undefined)
      this.nav.querySelector(`a[data-room="${CSS.escape(focused)}"]`)?.focus();
  }

  item(room) {
    const li = el("li", "sidebar-item");
    const link = el("a", "sidebar-link");
    link.href = roomPath(room.id);
    link.dataset.room = room.id;
    const unread = room.unread || 0;
    const mentions = room.mentions || 0;
    link.classList.toggle("sidebar-unread", unread > 0);
    link.classList.toggle("sidebar-mentioned", mentions > 0);
    if (room.id === this.current) link.setAttribute("aria-current", "page");
    const sigil = el(
      "span",
      "sidebar-sigil",
      room.kind === "direct" ? "@" : room.kind === "private" ? "🔒" : "#",
    );
    sigil.setAttribute("aria-hidden", "true");
    const name = el("span", "sidebar-name", room.name);
    link.append(sigil, name);
    let described =
      room.kind === "private" ? "private room " : room.kind === "direct" ? "" : "room ";
    described += room.name;
    if (unread > 0) {
      const badge = el("span", "sidebar-badge", badgeText(unread));
      badge.setAttribute("aria-hidden", "true");
      link.append(badge);
      described += `, ${badgeText(unread)} unread`;
    }
    if (mentions > 0) described += `, ${badgeText(mentions)} mentions`;
    link.setAttribute("aria-label", described);
    link.addEventListener("click", (event) => {
      if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey)
        return;
      event.preventDefault();
      const fromDrawer = this.isOpen;
      this.open(room.id);
      // The drawer closed under the focused link: continue in the room instead.
      if (fromDrawer) {
        const composer = document.getElementById("text");
        (composer.offsetParent ? composer : this.toggle).focus();
      }
    });
    li.append(link);
    return li;
  }
}
