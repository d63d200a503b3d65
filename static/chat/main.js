// The chat page: wires the connection, the rooms the user is in, the room
// views, the sidebar, the composer and the dialogs together, and keeps the open
// room in the URL (/ is general, /r/<id> any other room).

import { Composer } from "./composer.js";
import {
  browseRoomsDialog,
  createRoomDialog,
  managePeopleDialog,
  newDirectDialog,
  openDirect,
  profileDialog,
  roomInfoDialog,
  switcherDialog,
} from "./dialogs.js";
import { avatar, button, compareIds, el, roomLabel } from "./format.js";
import { Notifier } from "./notify.js";
import { PeopleDirectory } from "./people.js";
import { RoomView } from "./roomview.js";
import { roomPath, Sidebar } from "./sidebar.js";
import { Connection } from "./socket.js";
import { GENERAL, Store } from "./store.js";

const NOTICE_MS = 6000;
const REMOVED_TEXT = {
  left: "You left",
  removed: "You were removed from",
  archived: "This room was archived:",
};

const $ = (id) => document.getElementById(id);
const root = $("chat");

class App {
  constructor() {
    this.store = new Store();
    this.views = new Map(); // room id -> RoomView, made when first opened
    this.current = roomFromPath(location.pathname);
    this.loaded = false; // the first `ready` has told us the user's rooms
    this.conn = new Connection(root.dataset.wsPath, {
      ready: (frame) => this.onReady(frame),
      frame: (frame, settled) => this.onFrame(frame, settled),
      status: (kind, text, canRetryNow) => this.setConnection(kind, text, canRetryNow),
      lost: () => this.onLost(),
      loggedOut: () => location.assign("/login"),
    });
    this.people = new PeopleDirectory(this.conn);
    this.composer = new Composer($("composer"), Number(root.dataset.maxChars) || 4000);
    this.sidebar = new Sidebar(this.store, (roomId) => this.open(roomId));
    this.panes = $("panes");
    this.notifier = new Notifier(this.store, (roomId) => this.open(roomId), {
      button: $("enable-notifications"),
      note: $("notifications-denied"),
    });
    this.store.subscribe((what) => {
      if (what === "rooms") this.renderHeader();
    });
    this.wire();
  }

  wire() {
    $("reconnect-now").addEventListener("click", () => this.conn.retryNow());
    $("me").addEventListener("click", () => profileDialog(this));
    $("jump").addEventListener("click", () => switcherDialog(this));
    $("create-room").addEventListener("click", () => createRoomDialog(this));
    $("browse-rooms").addEventListener("click", () => browseRoomsDialog(this));
    $("new-dm").addEventListener("click", () => newDirectDialog(this));
    $("room-info").addEventListener("click", () => roomInfoDialog(this, this.current));
    $("manage-people").addEventListener("click", () => managePeopleDialog(this));
    window.addEventListener("popstate", () =>
      this.open(roomFromPath(location.pathname), { url: false }),
    );
    document.addEventListener("visibilitychange", () => {
      this.seen(this.views.get(this.current));
      this.notifier.render(); // the permission may have changed in the browser's settings
    });
    document.addEventListener("keydown", (event) => {
      if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "k") {
        event.preventDefault();
        if (!document.querySelector("dialog[open]")) switcherDialog(this);
      } else if (
        event.key === "Escape" &&
        this.sidebar.isOpen &&
        !document.querySelector("dialog[open]")
      ) {
        this.sidebar.close(true);
      }
    });
    setInterval(() => this.views.get(this.current)?.refreshTimes(), 30_000);
  }

  start() {
    this.open(this.current, { url: false });
    this.conn.connect();
  }

  // ---- what views and dialogs call back ---------------------------------------------------

  title(roomId) {
    const room = this.store.rooms.get(roomId);
    return room ? roomLabel(room) : "this room";
  }

  notice(text) {
    const notice = $("notice");
    notice.textContent = text;
    notice.hidden = false;
    clearTimeout(this.noticeTimer);
    this.noticeTimer = setTimeout(() => (notice.hidden = true), NOTICE_MS);
  }

  // The reader can see the newest message of the open room: tell the server
  // (and so every other tab and device) that the room is read up to it.
  seen(view) {
    if (!view || view.roomId !== this.current || !view.visible || document.hidden) return;
    const room = this.store.rooms.get(view.roomId);
    if (!room || view.lastId === null || !view.isNearBottom()) return;
    if (room.read_id && compareIds(view.lastId, room.read_id) <= 0 && !room.unread) return;
    if (!this.conn.ready) return;
    this.store.markRead(view.roomId, view.lastId);
    this.conn.request({ type: "read", room: view.roomId, id: view.lastId }).catch(() => {});
  }

  // The server says this room is not ours (any more).
  refused(view) {
    this.store.removeRoom(view.roomId);
    this.dropView(view.roomId);
    if (view.roomId === this.current) this.open(view.roomId, { url: false });
  }

  // An admin deactivated someone: no page offers them any more (they are
  // logged out everywhere, so they leave the online list for good).
  dropUser(user) {
    this.people.forget();
    this.store.online.delete(user.id);
    this.renderOnline();
  }

  renameUser(user) {
    this.people.forget();
    this.store.renameUser(user);
    if (this.store.isMe(user.id)) $("me").textContent = user.name;
    for (const view of this.views.values()) view.renameAuthor(user);
    this.renderOnline();
  }

  // ---- opening rooms ----------------------------------------------------------------------------

  open(roomId, { url = true } = {}) {
    const previous = this.views.get(this.current);
    if (previous && roomId !== this.current) previous.detach();
    this.current = roomId;
    if (url && location.pathname !== roomPath(roomId)) {
      history.pushState({ room: roomId }, "", roomPath(roomId));
    }
    this.sidebar.select(roomId);
    this.sidebar.close();
    this.renderHeader();
    if (!this.loaded) {
      this.showPlaceholder("Loading…");
      return;
    }
    const room = this.store.rooms.get(roomId);
    if (!room) {
      this.showNoAccess(roomId);
      return;
    }
    let view = this.views.get(roomId);
    if (!view) {
      view = new RoomView(roomId, this);
      this.views.set(roomId, view);
    }
    if (!view.visible) view.attach(this.panes);
    view.updateEdge();
    this.composer.bind(view, roomLabel(room));
    if (this.conn.ready) view.join();
    this.seen(view);
  }

  showPlaceholder(text) {
    const pane = el("section", "room-pane room-placeholder");
    pane.append(el("p", "room-placeholder-text", text));
    this.panes.replaceChildren(pane);
    this.composer.bind(null, "");
    return pane;
  }

  // Never says whether the room exists: a private room looks like no room at all.
  // A public room the user has not joined can be joined from here.
  async showNoAccess(roomId) {
    const pane = this.showPlaceholder("This room doesn't exist or you don't have access.");
    const home = el("a", "link-button", "Go to #general");
    home.href = "/";
    home.addEventListener("click", (event) => {
      event.preventDefault();
      this.open(GENERAL);
    });
    pane.append(home);
    if (!this.conn.ready) return;
    try {
      const frame = await this.conn.request({ type: "rooms_browse", room: roomId });
      const room = frame.rooms.find((r) => r.id === roomId && !r.member);
      if (!room || this.current !== roomId || !pane.isConnected) return;
      pane.replaceChildren(el("p", "room-placeholder-text", `You are not in #${room.name} yet.`));
      pane.append(
        button("button", `Join #${room.name}`, async () => {
          const joined = await this.conn.request({ type: "room_join", room: roomId }).catch((e) => {
            this.notice(e.message);
            return null;
          });
          if (joined) {
            this.store.mergeRoom(joined.room);
            this.open(roomId, { url: false });
          }
        }),
      );
    } catch {
      // Nothing more to offer than the message above.
    }
  }

  dropView(roomId) {
    const view = this.views.get(roomId);
    if (!view) return;
    view.close();
    this.views.delete(roomId);
  }

  renderHeader() {
    const room = this.loaded ? this.store.rooms.get(this.current) : null;
    const label = headerLabel(room, this.loaded, this.current);
    $("room-title").textContent = label;
    $("room-topic").textContent = room?.topic ?? "";
    $("room-topic").hidden = !room?.topic;
    $("room-info").hidden = !room;
    const unread = this.loaded ? this.store.unreadTotal() : "";
    document.title = `${unread ? `(${unread}) ` : ""}${label} · quart-chat`;
    if (room && this.composer.view?.roomId === room.id) this.composer.relabel(label);
  }

  // ---- frames ---------------------------------------------------------------------------------

  onReady(frame) {
    this.store.me = frame.user;
    $("me").textContent = frame.user.name;
    $("manage-people").hidden = !frame.user.admin;
    this.store.online = new Map(frame.online.map((user) => [user.id, user]));
    this.renderOnline();
    const gone = this.store.resetRooms(frame.rooms);
    this.loaded = true;
    for (const roomId of gone) this.dropView(roomId);
    if (gone.includes(this.current)) this.leaveCurrent("You no longer have access to");
    else this.open(this.current, { url: false });
    for (const view of this.views.values()) view.resend();
  }

  onLost() {
    for (const view of this.views.values()) view.lost();
  }

  onFrame(frame, settled) {
    switch (frame.type) {
      case "message":
        return this.onMessage(frame);
      case "history":
        return this.onHistory(frame);
      case "unread":
        this.notifier.unread(frame);
        return this.store.noteMessage(frame.room, frame.id, frame.user, {
          counts: true,
          mentioned: this.store.mentionsMe(frame),
        });
      case "read":
        return this.store.markRead(frame.room, frame.id, frame.unread ?? 0, frame.mentions ?? 0);
      case "room":
        return this.onRoom(frame.room);
      case "room_removed":
        return this.onRoomRemoved(frame);
      case "user":
        return frame.user.deactivated ? this.dropUser(frame.user) : this.renameUser(frame.user);
      case "presence":
        return this.onPresence(frame);
      case "typing":
        // Several people at once (`users`) in a busy room, where the server coalesces.
        for (const user of frame.users ?? [frame.user]) this.views.get(frame.room)?.someoneTyping(user);
        return;
      case "edit":
      case "delete":
      case "reaction":
        return this.views.get(frame.room)?.receiveChange(frame);
      case "error":
        if (!settled) this.onError(frame);
        return;
    }
  }

  onMessage(message) {
    const view = this.views.get(message.room);
    const seen = view ? view.receiveLive(message) && !document.hidden : false;
    this.store.noteMessage(message.room, message.id, message.user.id, {
      counts: !seen,
      mentioned: this.store.mentionsMe(message),
    });
    if (seen) this.seen(view);
    this.notifier.message(message);
  }

  onHistory(frame) {
    const view = this.views.get(frame.room);
    if (!view) return;
    view.receiveHistory(frame);
    const room = this.store.rooms.get(frame.room);
    if (room && view.lastId && (!room.last_id || compareIds(view.lastId, room.last_id) > 0)) {
      room.last_id = view.lastId;
    }
    this.seen(view);
  }

  onRoom(room) {
    const wasMissing = !this.store.rooms.has(room.id);
    this.store.mergeRoom(room);
    if (room.id === this.current && wasMissing && this.loaded) this.open(room.id, { url: false });
    this.views.get(room.id)?.updateEdge();
    const about = roomDialog(room.id);
    if (about) about.querySelector(".dialog-title").textContent = `About ${this.title(room.id)}`;
  }

  onRoomRemoved(frame) {
    const room = this.store.rooms.get(frame.room);
    const label = room ? roomLabel(room) : "a room";
    this.store.removeRoom(frame.room);
    this.dropView(frame.room);
    roomDialog(frame.room)?.close();
    if (frame.room === this.current)
      this.leaveCurrent(REMOVED_TEXT[frame.reason] ?? "You left", label);
  }

  // The open room went away: say so, and show general instead.
  leaveCurrent(why, label = "this room") {
    this.notice(`${why} ${label}.`);
    this.open(GENERAL, { url: false });
    history.replaceState({ room: GENERAL }, "", roomPath(GENERAL));
  }

  onPresence(frame) {
    if (frame.room !== GENERAL) return;
    if (frame.status === "online") this.store.online.set(frame.user.id, frame.user);
    else this.store.online.delete(frame.user.id);
    this.renderOnline();
  }

  onError(frame) {
    const text = ERROR_TEXT[frame.code] ?? frame.message ?? "Something went wrong.";
    if (frame.client_id) {
      for (const view of this.views.values()) {
        if (view.pending.has(frame.client_id)) {
          view.fail(frame.client_id, text);
          return;
        }
      }
    }
    this.notice(frame.message || text);
  }

  // ---- connection and people ---------------------------------------------------------------------

  setConnection(kind, text, canRetryNow = false) {
    $("connection").dataset.state = kind;
    root.dataset.connection = kind; // the online list is stale while disconnected
    $("connection-text").textContent = text;
    $("reconnect-now").hidden = !canRetryNow;
  }

  renderOnline() {
    const users = [...this.store.online.values()].sort((a, b) => a.name.localeCompare(b.name));
    const items = users.map((user) => {
      const li = el("li", "people-person");
      if (this.store.isMe(user.id)) {
        li.append(avatar(user), el("span", "people-name", user.name), el("span", "msg-you", "you"));
        return li;
      }
      const dm = button("people-open", "", () =>
        openDirect(this, [user.id]).catch((e) => this.notice(e.message)),
      );
      dm.append(avatar(user), el("span", "people-name", user.name));
      dm.title = `Direct message ${user.name}`;
      dm.setAttribute("aria-label", `Direct message ${user.name}`);
      li.append(dm);
      return li;
    });
    $("online").replaceChildren(...items);
    $("online-count").textContent = String(users.length);
  }
}

const ERROR_TEXT = {
  too_long: "Too long.",
  rate_limited: "Too many messages; wait a moment.",
  not_allowed: "Not allowed.",
  bad_request: "The server could not read that.",
};

// Until `ready` the page cannot tell a room it may not see from one that does
// not exist; after it, both read the same.
function headerLabel(room, loaded, roomId) {
  if (room) return roomLabel(room);
  if (loaded) return "Room not found";
  return roomId === GENERAL ? "#general" : "…";
}

// The open "About" dialog of a room, if any.
function roomDialog(roomId) {
  return document.querySelector(`dialog[open][data-room="${CSS.escape(roomId)}"]`);
}

function roomFromPath(path) {
  const match = /^\/r\/([^/]+)\/?$/.exec(path);
  if (!match) return GENERAL;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return match[1];
  }
}

new App().start();
