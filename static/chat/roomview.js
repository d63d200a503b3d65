// One room as the page shows it: its messages, the last id seen (for `join
// after`), its scroll position, its unsent draft and its pending sends. A view
// is made when the room is first opened and kept while the room is, so
// switching back costs nothing.

import { avatar, button, compareIds, el, fullDate, newClientId, relativeTime } from "./format.js";

const PAGE_SIZE = 50;
// A send the server has not echoed within this time is shown as failed, with a retry.
const ACK_TIMEOUT_MS = 10_000;
// Consecutive messages from one author closer than this share one header.
const GROUP_GAP_MS = 5 * 60_000;
const NEAR_BOTTOM_PX = 80;
const NEAR_TOP_PX = 120;
// A `typing` frame is shown for this long unless another from the same person renews it
// (SPEC §9); the composer sends one at most this often while the user types.
const TYPING_SHOWN_MS = 5_000;
const TYPING_SEND_MS = 3_000;

export class RoomView {
  // app: {store, conn, title(roomId), seen(view), notice(text)}
  constructor(roomId, app) {
    this.roomId = roomId;
    this.app = app;
    this.byId = new Map(); // stream id -> <li>
    this.pending = new Map(); // client_id -> {clientId, text, li, timer}
    this.lastId = null; // newest stream id seen; `join after` resumes from it
    this.oldestId = null; // oldest stream id shown; `history before` pages from it
    this.hasMore = false;
    this.historyLoaded = false;
    this.initialHistory = false; // the next history frame answers a join without `after`
    this.loadingOlder = false;
    this.joined = false; // joined on the current socket
    this.joinTimer = null;
    this.draft = "";
    this.scrollTop = null; // where the reader was when they switched away
    this.stuck = true; // ...or whether they were at the newest message
    this.typers = new Map(); // user id -> {name, timer}, in the order they started typing
    this.typingSentAt = -Infinity; // when this page last told the room the user types
    this.build();
  }

  build() {
    this.pane = el("section", "room-pane room-view");
    this.pane.dataset.room = this.roomId;
    this.scroller = el("div", "room-scroller");
    this.scroller.id = "scroller";
    this.scroller.tabIndex = 0;
    this.scroller.setAttribute("aria-label", "Message history");
    const edge = el("div", "room-edge");
    this.loadOlder = button("link-button", "Load older messages", () => this.requestOlder());
    this.loadOlder.id = "load-older";
    this.loadOlder.hidden = true;
    this.historyStart = el("p", "room-start");
    this.historyStart.id = "history-start";
    this.historyStart.hidden = true;
    edge.append(this.loadOlder, this.historyStart);
    this.list = el("ol", "msg-list");
    this.list.id = "messages";
    this.list.setAttribute("role", "log");
    this.list.setAttribute("aria-live", "polite");
    this.list.setAttribute("aria-relevant", "additions");
    this.scroller.append(edge, this.list);
    this.jumpLatest = button("room-jump", "New messages ↓", () => this.scrollToBottom());
    this.jumpLatest.id = "jump-latest";
    this.jumpLatest.hidden = true;
    // Polite and atomic: a screen reader hears the line when who is typing changes,
    // not on every frame (frames that only renew a name leave the text as it was).
    this.typingLine = el("p", "typing-line");
    this.typingLine.id = "typing";
    this.typingLine.setAttribute("role", "status");
    this.typingLine.setAttribute("aria-live", "polite");
    this.typingLine.setAttribute("aria-atomic", "true");
    this.pane.append(this.scroller, this.jumpLatest, this.typingLine);
    this.scroller.addEventListener("scroll", () => {
      if (this.scroller.scrollTop < NEAR_TOP_PX) this.requestOlder();
      if (this.isNearBottom()) {
        this.jumpLatest.hidden = true;
        this.app.seen(this);
      }
    });
  }

  // ---- showing and hiding --------------------------------------------------------

  attach(container) {
    container.replaceChildren(this.pane);
    if (this.stuck || this.scrollTop === null) this.scrollToBottom();
    else this.scroller.scrollTop = this.scrollTop;
    this.refreshTimes();
  }

  // Detached panes lose their scroll offset: remember it.
  detach() {
    if (!this.pane.isConnected) return;
    this.stuck = this.isNearBottom();
    this.scrollTop = this.scroller.scrollTop;
    this.pane.remove();
  }

  get visible() {
    return this.pane.isConnected;
  }

  isNearBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM_PX;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.jumpLatest.hidden = true;
    this.app.seen(this);
  }

  refreshTimes() {
    const now = Date.now();
    for (const time of this.list.querySelectorAll("time[data-ts]")) {
      time.textContent = relativeTime(Number(time.dataset.ts), now);
    }
  }

  // ---- joining -------------------------------------------------------------------

  join() {
    clearTimeout(this.joinTimer);
    const conn = this.app.conn;
    if (!conn.ready || this.joined) return;
    this.joined = true;
    const frame = { type: "join", room: this.roomId };
    if (this.lastId !== null) frame.after = this.lastId;
    else this.initialHistory = true;
    conn.request(frame).catch((error) => this.joinRefused(error));
  }

  joinRefused(error) {
    if (error.code === "timeout") return; // the history frame may have come without the ref
    this.joined = false;
    if (error.code === "rate_limited") {
      const seconds = Number(error.frame.retry_after) || 5;
      this.joinTimer = setTimeout(() => this.join(), seconds * 1000);
    } else if (error.code === "not_allowed") {
      this.app.refused(this);
    } else if (error.code !== "unavailable") {
      this.app.notice(error.message);
    }
  }

  // The socket went away: the next one must join again, and sends wait for it.
  lost() {
    this.joined = false;
    this.clearTypers();
    this.loadingOlder = false;
    clearTimeout(this.joinTimer);
    for (const entry of this.pending.values()) {
      clearTimeout(entry.timer);
      if (!entry.li.classList.contains("msg-failed"))
        this.deliveryLine(entry, "Waiting for connection…", false);
    }
  }

  resend() {
    for (const entry of this.pending.values()) {
      if (!entry.li.classList.contains("msg-failed")) this.transmit(entry.clientId);
    }
  }

  // ---- messages --------------------------------------------------------------------

  messageItem(user, text, ts) {
    const li = el("li", "msg");
    li.dataset.user = String(user.id);
    li.dataset.ts = String(ts);
    const own = this.app.store.isMe(user.id);
    li.classList.toggle("msg-own", own);
    li.append(avatar(user));
    const body = el("div", "msg-body");
    const meta = el("p", "msg-meta");
    meta.append(el("span", "msg-author", user.name));
    if (own) meta.append(el("span", "msg-you", "you"));
    const time = el("time", "msg-when", relativeTime(ts));
    time.dataset.ts = String(ts);
    time.dateTime = new Date(ts).toISOString();
    time.title = fullDate.format(ts);
    meta.append(time);
    body.append(meta, el("p", "msg-text", text));
    li.append(body);
    return li;
  }

  regroup(li) {
    if (!li) return;
    const prev = li.previousElementSibling;
    const continued =
      prev !== null &&
      prev.dataset.user === li.dataset.user &&
      Number(li.dataset.ts) - Number(prev.dataset.ts) < GROUP_GAP_MS;
    li.classList.toggle("msg-continued", continued);
  }

  // Inserts a server message in stream order, before any still-pending messages.
  insert(message) {
    if (this.byId.has(message.id)) return null;
    const li = this.messageItem(message.user, message.text, message.ts);
    li.dataset.id = message.id;
    this.byId.set(message.id, li);
    let before = null;
    const first = this.list.firstElementChild;
    if (first && first.dataset.id && compareIds(message.id, first.dataset.id) < 0) {
      before = first;
    } else {
      let node = this.list.lastElementChild;
      while (node && (node.dataset.pending || compareIds(node.dataset.id, message.id) > 0)) {
        before = node;
        node = node.previousElementSibling;
      }
    }
    this.list.insertBefore(li, before);
    this.regroup(li);
    this.regroup(li.nextElementSibling);
    if (this.lastId === null || compareIds(message.id, this.lastId) > 0) this.lastId = message.id;
    if (this.oldestId === null || compareIds(message.id, this.oldestId) < 0)
      this.oldestId = message.id;
    return li;
  }

  // Returns true when the reader sees the message (visible and at the bottom).
  receiveLive(message) {
    this.stoppedTyping(message.user.id); // what they typed has arrived
    const stick = !this.visible ? this.stuck : this.isNearBottom();
    const own = message.client_id && this.pending.has(message.client_id);
    if (own) this.settle(message.client_id);
    const li = this.insert(message);
    if (!li) return false;
    this.updateEdge();
    if (!this.visible) {
      if (own) this.stuck = true;
      return false;
    }
    if (stick || own) {
      this.scrollToBottom();
      return true;
    }
    this.jumpLatest.hidden = false;
    return false;
  }

  receiveHistory(frame) {
    if (frame.reset) this.forget();
    const older = this.loadingOlder;
    this.loadingOlder = false;
    const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
    const stick = this.visible ? this.isNearBottom() : this.stuck;
    this.list.setAttribute("aria-busy", "true");
    for (const message of frame.messages) {
      if (message.client_id && this.pending.has(message.client_id)) this.settle(message.client_id);
      this.insert(message);
    }
    this.list.removeAttribute("aria-busy");
    if (older || this.initialHistory) {
      this.hasMore = Boolean(frame.has_more);
      this.initialHistory = false;
      this.historyLoaded = true;
    }
    this.updateEdge();
    if (older) this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
    else if (stick && this.visible) this.scrollToBottom();
  }

  // The server answers `join after` this way when the page was too far behind
  // to catch up: start again from the newest messages, as on a fresh load.
  forget() {
    for (const li of this.byId.values()) li.remove();
    this.byId.clear();
    this.lastId = null;
    this.oldestId = null;
    this.initialHistory = true;
  }

  updateEdge() {
    const title = this.app.title(this.roomId);
    this.loadOlder.hidden = !this.hasMore;
    this.historyStart.hidden = this.hasMore || !this.historyLoaded;
    this.historyStart.textContent =
      this.oldestId === null
        ? `No messages in ${title} yet. Say hello!`
        : `This is the beginning of ${title}.`;
  }

  requestOlder() {
    const conn = this.app.conn;
    if (!conn.ready || !this.hasMore || this.loadingOlder || this.oldestId === null) return;
    this.loadingOlder = true;
    const frame = { type: "history", room: this.roomId, before: this.oldestId, limit: PAGE_SIZE };
    conn.request(frame).catch((error) => {
      // A refused page: let the next scroll ask again.
      this.loadingOlder = false;
      if (error.code !== "timeout" && error.code !== "unavailable") this.app.notice(error.message);
    });
  }

  renameAuthor(user) {
    for (const li of this.list.querySelectorAll(`li[data-user="${CSS.escape(String(user.id))}"]`)) {
      li.querySelector(".msg-author").textContent = user.name;
    }
  }

  // ---- typing ----------------------------------------------------------------------------

  // The user typed in this room's composer: tell the room, at most every TYPING_SEND_MS.
  typed() {
    const conn = this.app.conn;
    const now = performance.now();
    if (!conn.ready || now - this.typingSentAt < TYPING_SEND_MS) return;
    this.typingSentAt = now;
    conn.send({ type: "typing", room: this.roomId });
  }

  // A `typing` frame: show `user` for TYPING_SHOWN_MS from now.
  someoneTyping(user) {
    if (this.app.store.isMe(user.id)) return; // the server never sends these; be sure
    const known = this.typers.get(user.id);
    if (known) clearTimeout(known.timer);
    const timer = setTimeout(() => this.stoppedTyping(user.id), TYPING_SHOWN_MS);
    this.typers.set(user.id, { name: user.name, timer });
    this.renderTyping();
  }

  stoppedTyping(userId) {
    const known = this.typers.get(userId);
    if (!known) return;
    clearTimeout(known.timer);
    this.typers.delete(userId);
    this.renderTyping();
  }

  clearTypers() {
    for (const known of this.typers.values()) clearTimeout(known.timer);
    this.typers.clear();
    this.renderTyping();
  }

  renderTyping() {
    const text = typingText([...this.typers.values()].map((known) => known.name));
    if (this.typingLine.textContent !== text) this.typingLine.textContent = text;
  }

  // ---- pending messages ----------------------------------------------------------------

  deliveryLine(entry, text, withRetry) {
    entry.li.querySelector(".msg-delivery")?.remove();
    const line = el("p", "msg-delivery", text);
    if (withRetry)
      line.append(
        " ",
        button("link-button", "Retry", () => this.transmit(entry.clientId)),
      );
    entry.li.querySelector(".msg-body").append(line);
  }

  queue(text) {
    const clientId = newClientId();
    const user = this.app.store.me ?? { id: "me", name: "you" };
    const li = this.messageItem(user, text, Date.now());
    li.classList.add("msg-own", "msg-pending");
    li.dataset.pending = clientId;
    const entry = { clientId, text, li, timer: null };
    this.pending.set(clientId, entry);
    this.list.append(li);
    this.regroup(li);
    this.scrollToBottom();
    this.transmit(clientId);
  }

  // Sends (or re-sends, with the same client_id) a pending message; the server
  // never posts one client_id twice, so re-sending is always safe.
  transmit(clientId) {
    const entry = this.pending.get(clientId);
    if (!entry) return;
    clearTimeout(entry.timer);
    entry.li.classList.remove("msg-failed");
    entry.li.classList.add("msg-pending");
    const conn = this.app.conn;
    if (!conn.ready) {
      this.deliveryLine(entry, "Waiting for connection…", false);
      return;
    }
    this.deliveryLine(entry, "Sending…", false);
    conn.send({ type: "send", room: this.roomId, text: entry.text, client_id: clientId });
    entry.timer = setTimeout(() => this.fail(clientId, "Not delivered."), ACK_TIMEOUT_MS);
  }

  fail(clientId, reason) {
    const entry = this.pending.get(clientId);
    if (!entry) return;
    clearTimeout(entry.timer);
    entry.li.classList.remove("msg-pending");
    entry.li.classList.add("msg-failed");
    this.deliveryLine(entry, `${reason} Not sent.`, true);
  }

  settle(clientId) {
    const entry = this.pending.get(clientId);
    if (!entry) return;
    clearTimeout(entry.timer);
    this.pending.delete(clientId);
    const next = entry.li.nextElementSibling;
    entry.li.remove();
    this.regroup(next);
  }

  close() {
    clearTimeout(this.joinTimer);
    this.clearTypers();
    for (const entry of this.pending.values()) clearTimeout(entry.timer);
    this.pane.remove();
  }
}

// "Ann is typing…", "Ann and Bob are typing…", "Several people are typing…", or "".
export function typingText(names) {
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return "Several people are typing…";
}
