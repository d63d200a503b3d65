// The chat page: one WebSocket (SPEC §5), a message log, an online list and a composer.
// User text only ever reaches the page through textContent.

const root = document.getElementById("chat");
const ROOM = root.dataset.room;
const WS_PATH = root.dataset.wsPath;
const MAX_CHARS = Number(root.dataset.maxChars) || 4000;

const PAGE_SIZE = 50;
// A send the server has not echoed within this time is shown as failed, with a retry.
const ACK_TIMEOUT_MS = 10_000;
// Consecutive messages from one author closer than this share one header.
const GROUP_GAP_MS = 5 * 60_000;
const BACKOFF_BASE_MS = 1_000;
const BACKOFF_CAP_MS = 30_000;
// The agreed heartbeat: a ping this often while connected, and a socket that
// returns no frame within PONG_TIMEOUT_MS of one is dead.
const HEARTBEAT_MS = 10_000;
const PONG_TIMEOUT_MS = 5_000;
// 1001 going away, 1012 service restart: the server asks us to come back now.
const RESTART_CODES = new Set([1001, 1012]);
const RESTART_JITTER_MS = 1_000;
// What a browser reports for a connection that ended without a close frame.
const CLOSE_ABNORMAL = 1006;
const NEAR_BOTTOM_PX = 80;
const NEAR_TOP_PX = 120;

const $ = (id) => document.getElementById(id);
const scroller = $("scroller");
const list = $("messages");
const connection = $("connection");
const connectionText = $("connection-text");
const reconnectNow = $("reconnect-now");
const loadOlder = $("load-older");
const historyStart = $("history-start");
const jumpLatest = $("jump-latest");
const notice = $("notice");
const composer = $("composer");
const textarea = $("text");
const counter = $("counter");
const sendButton = $("send");
const onlineList = $("online");
const onlineCount = $("online-count");
const meLabel = $("me");

const state = {
  socket: null,
  ready: false,
  attempt: 0,
  reconnectTimer: null,
  countdownTimer: null,
  heartbeatTimer: null,
  pongTimer: null, // set while a ping waits for any frame
  me: null,
  lastId: null, // newest stream id seen; `join after` resumes from it
  oldestId: null, // oldest stream id shown; `history before` pages from it
  hasMore: false,
  initialHistory: false, // the next history frame answers a join without `after`
  joined: false, // this socket's join was answered
  joinTimer: null,
  historyLoaded: false,
  loadingOlder: false,
  byId: new Map(), // stream id -> <li>
  pending: new Map(), // client_id -> {text, li, timer}
  online: new Map(), // user id -> user
};

// ---- stream ids ("<ms>-<seq>") --------------------------------------------

function compareIds(a, b) {
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am - bm || as - bs;
}

function newClientId() {
  // crypto.randomUUID needs a secure context; getRandomValues works on plain http too.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---- times ----------------------------------------------------------------

const fullDate = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayAndClock = new Intl.DateTimeFormat(undefined, {
  weekday: "short",
  day: "numeric",
  month: "short",
  hour: "2-digit",
  minute: "2-digit",
});

function relativeTime(ts, now = Date.now()) {
  const seconds = Math.round((now - ts) / 1000);
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const sameDay = new Date(ts).toDateString() === new Date(now).toDateString();
  if (sameDay) return clock.format(ts);
  return dayAndClock.format(ts);
}

function refreshTimes() {
  const now = Date.now();
  for (const time of list.querySelectorAll("time[data-ts]")) {
    time.textContent = relativeTime(Number(time.dataset.ts), now);
  }
}

// ---- rendering --------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// FNV-1a, so ids that differ in one character still land on different colours.
function paletteSlot(userId) {
  let h = 0x811c9dc5;
  for (const ch of String(userId)) h = Math.imul(h ^ ch.codePointAt(0), 0x01000193);
  return (h >>> 0) % 12;
}

function avatar(user) {
  const node = el("span", "avatar", (user.name || "?").slice(0, 1).toUpperCase());
  node.setAttribute("aria-hidden", "true");
  node.dataset.hue = String(paletteSlot(user.id)); // 12 palette slots in app.css
  return node;
}

function messageItem(user, text, ts) {
  const li = el("li", "message");
  li.dataset.user = String(user.id);
  li.dataset.ts = String(ts);
  const own = state.me !== null && String(user.id) === String(state.me.id);
  li.classList.toggle("own", own);
  li.append(avatar(user));
  const body = el("div", "body");
  const meta = el("p", "meta");
  meta.append(el("span", "author", user.name));
  if (own) meta.append(el("span", "you", "you"));
  const time = el("time", "when", relativeTime(ts));
  time.dataset.ts = String(ts);
  time.dateTime = new Date(ts).toISOString();
  time.title = fullDate.format(ts);
  meta.append(time);
  body.append(meta, el("p", "text", text));
  li.append(body);
  return li;
}

function regroup(li) {
  if (!li) return;
  const prev = li.previousElementSibling;
  const continued =
    prev !== null &&
    prev.dataset.user === li.dataset.user &&
    Number(li.dataset.ts) - Number(prev.dataset.ts) < GROUP_GAP_MS;
  li.classList.toggle("continued", continued);
}

function isNearBottom() {
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < NEAR_BOTTOM_PX;
}

function scrollToBottom() {
  scroller.scrollTop = scroller.scrollHeight;
  jumpLatest.hidden = true;
}

// Inserts a server message in stream order, before any still-pending messages.
function insertMessage(message) {
  if (state.byId.has(message.id)) return null;
  const li = messageItem(message.user, message.text, message.ts);
  li.dataset.id = message.id;
  state.byId.set(message.id, li);

  let before = null;
  const first = list.firstElementChild;
  if (first && first.dataset.id && compareIds(message.id, first.dataset.id) < 0) {
    before = first;
  } else {
    let node = list.lastElementChild;
    while (node && (node.dataset.pending || compareIds(node.dataset.id, message.id) > 0)) {
      before = node;
      node = node.previousElementSibling;
    }
  }
  list.insertBefore(li, before);
  regroup(li);
  regroup(li.nextElementSibling);

  if (state.lastId === null || compareIds(message.id, state.lastId) > 0) state.lastId = message.id;
  if (state.oldestId === null || compareIds(message.id, state.oldestId) < 0) {
    state.oldestId = message.id;
  }
  return li;
}

function receiveLive(message) {
  const stick = isNearBottom();
  const own = message.client_id && state.pending.has(message.client_id);
  if (own) settle(message.client_id);
  const li = insertMessage(message);
  if (!li) return;
  updateHistoryEdge();
  if (stick || own) scrollToBottom();
  else jumpLatest.hidden = false;
}

function receiveHistory(frame) {
  state.joined = true;
  if (frame.reset) forgetMessages();
  const older = state.loadingOlder;
  state.loadingOlder = false;
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  const stick = isNearBottom();
  list.setAttribute("aria-busy", "true");
  for (const message of frame.messages) {
    if (message.client_id && state.pending.has(message.client_id)) settle(message.client_id);
    insertMessage(message);
  }
  list.removeAttribute("aria-busy");
  if (older || state.initialHistory) {
    state.hasMore = Boolean(frame.has_more);
    state.initialHistory = false;
    state.historyLoaded = true;
  }
  updateHistoryEdge();
  if (older) scroller.scrollTop = scroller.scrollHeight - fromBottom;
  else if (stick) scrollToBottom();
}

// The server answers `join after` this way when the page was too far behind
// to catch up: start again from the newest messages, as on a fresh load.
function forgetMessages() {
  for (const li of state.byId.values()) li.remove();
  state.byId.clear();
  state.lastId = null;
  state.oldestId = null;
  state.initialHistory = true;
}

function updateHistoryEdge() {
  loadOlder.hidden = !state.hasMore;
  historyStart.hidden = state.hasMore || !state.historyLoaded;
  historyStart.textContent =
    state.oldestId === null
      ? "No messages in #general yet. Say hello!"
      : "This is the beginning of #general.";
}

function requestOlder() {
  if (!state.ready || !state.hasMore || state.loadingOlder || state.oldestId === null) return;
  state.loadingOlder = true;
  send({ type: "history", room: ROOM, before: state.oldestId, limit: PAGE_SIZE });
}

// ---- pending messages -------------------------------------------------------

function deliveryLine(entry, text, withRetry) {
  entry.li.querySelector(".delivery")?.remove();
  const line = el("p", "delivery", text);
  if (withRetry) {
    const retry = el("button", "link-button", "Retry");
    retry.type = "button";
    retry.addEventListener("click", () => transmit(entry.clientId));
    line.append(" ", retry);
  }
  entry.li.querySelector(".body").append(line);
}

function queueMessage(text) {
  const clientId = newClientId();
  const user = state.me ?? { id: "me", name: "you" };
  const li = messageItem(user, text, Date.now());
  li.classList.add("own", "pending");
  li.dataset.pending = clientId;
  const entry = { clientId, text, li, timer: null };
  state.pending.set(clientId, entry);
  list.append(li);
  regroup(li);
  scrollToBottom();
  transmit(clientId);
}

// Sends (or re-sends, with the same client_id) a pending message; the server
// never posts one client_id twice, so re-sending is always safe.
function transmit(clientId) {
  const entry = state.pending.get(clientId);
  if (!entry) return;
  clearTimeout(entry.timer);
  entry.li.classList.remove("failed");
  entry.li.classList.add("pending");
  if (!state.ready) {
    deliveryLine(entry, "Waiting for connection…", false);
    return;
  }
  deliveryLine(entry, "Sending…", false);
  send({ type: "send", room: ROOM, text: entry.text, client_id: clientId });
  entry.timer = setTimeout(() => fail(clientId, "Not delivered."), ACK_TIMEOUT_MS);
}

function fail(clientId, reason) {
  const entry = state.pending.get(clientId);
  if (!entry) return;
  clearTimeout(entry.timer);
  entry.li.classList.remove("pending");
  entry.li.classList.add("failed");
  deliveryLine(entry, `${reason} Not sent.`, true);
}

function settle(clientId) {
  const entry = state.pending.get(clientId);
  if (!entry) return;
  clearTimeout(entry.timer);
  state.pending.delete(clientId);
  const next = entry.li.nextElementSibling;
  entry.li.remove();
  regroup(next);
}

// ---- online list ------------------------------------------------------------

function renderOnline() {
  const users = [...state.online.values()].sort((a, b) => a.name.localeCompare(b.name));
  const items = users.map((user) => {
    const li = el("li", "person");
    li.append(avatar(user), el("span", "name", user.name));
    if (state.me && String(user.id) === String(state.me.id)) li.append(el("span", "you", "you"));
    return li;
  });
  onlineList.replaceChildren(...items);
  onlineCount.textContent = String(users.length);
}

// ---- connection ---------------------------------------------------------------

function setConnection(kind, text, canRetryNow = false) {
  connection.dataset.state = kind;
  root.dataset.connection = kind; // the online list is stale while disconnected
  connectionText.textContent = text;
  reconnectNow.hidden = !canRetryNow;
}

function showNotice(text) {
  notice.textContent = text;
  notice.hidden = false;
  clearTimeout(showNotice.timer);
  showNotice.timer = setTimeout(() => (notice.hidden = true), 6000);
}

function send(frame) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(frame));
  }
}

function connect() {
  cancelReconnect();
  if (state.socket) return;
  if (state.me === null && state.attempt === 0) setConnection("connecting", "Connecting…");
  else setConnection("reconnecting", "Reconnecting…");
  const url = new URL(WS_PATH, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(url);
  let opened = false;
  state.socket = socket;
  // A socket that was dropped (see abandon) may still report events: ignore them.
  socket.addEventListener("open", () => {
    opened = true;
    if (socket === state.socket) startHeartbeat();
  });
  socket.addEventListener("message", (event) => {
    if (socket !== state.socket) return;
    heard();
    handleFrame(event.data);
  });
  socket.addEventListener("close", (event) => {
    if (socket === state.socket) closed(event.code, opened);
  });
}

// ---- heartbeat: a socket can die without closing ----------------------------
// A laptop that sleeps or changes network leaves a socket neither side has
// closed: the page would say "Connected" for minutes while nothing arrives. The
// server answers a ping with a pong; any frame at all proves the socket alive.

function startHeartbeat() {
  stopHeartbeat();
  state.heartbeatTimer = setInterval(ping, HEARTBEAT_MS);
}

function stopHeartbeat() {
  clearInterval(state.heartbeatTimer);
  heard();
}

function ping() {
  send({ type: "ping" });
  if (state.pongTimer === null) state.pongTimer = setTimeout(abandon, PONG_TIMEOUT_MS);
}

function heard() {
  clearTimeout(state.pongTimer);
  state.pongTimer = null;
}

// Drops the current socket without waiting for its closing handshake, which a
// dead network never completes.
function abandon() {
  const socket = state.socket;
  if (!socket) return;
  state.socket = null;
  socket.close();
  closed(CLOSE_ABNORMAL, true);
}

async function closed(code, opened) {
  state.socket = null;
  state.ready = false;
  state.loadingOlder = false;
  stopHeartbeat();
  clearTimeout(state.joinTimer);
  for (const entry of state.pending.values()) {
    clearTimeout(entry.timer);
    if (!entry.li.classList.contains("failed")) deliveryLine(entry, "Waiting for connection…", false);
  }
  if (code === 4401) {
    location.assign("/login");
    return;
  }
  if (!opened && (await sessionGone())) {
    location.assign("/login");
    return;
  }
  if (!navigator.onLine) {
    showOffline();
    return;
  }
  if (RESTART_CODES.has(code)) reconnectSoon();
  else scheduleReconnect();
}

function showOffline() {
  cancelReconnect();
  setConnection("offline", "Offline – waiting for the network", true);
}

// A refused handshake (HTTP 401) looks like any failed connection to a page;
// asking for the chat page tells "logged out" apart from "server down".
async function sessionGone() {
  try {
    const response = await fetch(location.pathname, { redirect: "manual", cache: "no-store" });
    return response.type === "opaqueredirect" || response.status === 401;
  } catch {
    return false;
  }
}

// The server closed on purpose (restart, going away): come straight back, but
// spread over a second so thousands of tabs do not arrive in the same millisecond.
function reconnectSoon() {
  state.attempt = 0;
  setConnection("reconnecting", "Reconnecting…");
  state.reconnectTimer = setTimeout(connect, Math.random() * RESTART_JITTER_MS);
}

function scheduleReconnect() {
  // Exponential backoff with full jitter, so a server that is down is not hit by every tab at once.
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
  const delay = Math.random() * ceiling;
  state.attempt += 1;
  const due = Date.now() + delay;
  const tick = () => {
    const seconds = Math.max(1, Math.ceil((due - Date.now()) / 1000));
    setConnection("reconnecting", `Reconnecting in ${seconds}s…`, true);
  };
  tick();
  state.countdownTimer = setInterval(tick, 500);
  state.reconnectTimer = setTimeout(connect, delay);
}

function cancelReconnect() {
  clearTimeout(state.reconnectTimer);
  clearInterval(state.countdownTimer);
}

function handleFrame(data) {
  let frame;
  try {
    frame = JSON.parse(data);
  } catch {
    return;
  }
  switch (frame.type) {
    case "ready":
      onReady(frame);
      break;
    case "message":
      if (frame.room === ROOM) receiveLive(frame);
      break;
    case "history":
      if (frame.room === ROOM) receiveHistory(frame);
      break;
    case "presence":
      if (frame.room !== ROOM) break;
      if (frame.status === "online") state.online.set(frame.user.id, frame.user);
      else state.online.delete(frame.user.id);
      renderOnline();
      break;
    case "error":
      onError(frame);
      break;
  }
}

function onReady(frame) {
  state.ready = true;
  state.attempt = 0;
  state.me = frame.user;
  meLabel.textContent = frame.user.name;
  setConnection("connected", "Connected");
  state.online = new Map(frame.online.map((user) => [user.id, user]));
  renderOnline();
  state.joined = false;
  sendJoin();
  for (const entry of state.pending.values()) {
    if (!entry.li.classList.contains("failed")) transmit(entry.clientId);
  }
}

function sendJoin() {
  clearTimeout(state.joinTimer);
  if (!state.ready || state.joined) return;
  const join = { type: "join", room: ROOM };
  if (state.lastId !== null) join.after = state.lastId;
  else state.initialHistory = true;
  send(join);
}

const ERROR_TEXT = {
  too_long: "Too long.",
  rate_limited: "Too many messages; wait a moment.",
  not_allowed: "Not allowed.",
  bad_request: "The server could not read that.",
};

function onError(frame) {
  const text = ERROR_TEXT[frame.code] ?? frame.message ?? "Something went wrong.";
  if (frame.client_id && state.pending.has(frame.client_id)) fail(frame.client_id, text);
  else {
    // A refused `history` (or `join`): let the next scroll ask again.
    state.loadingOlder = false;
    if (frame.code === "rate_limited" && !state.joined) {
      const seconds = Number(frame.retry_after) || 5;
      state.joinTimer = setTimeout(sendJoin, seconds * 1000);
    }
    showNotice(frame.message || text);
  }
}

// ---- composer -----------------------------------------------------------------

function length(text) {
  return [...text].length; // code points, as the server counts them
}

function updateComposer() {
  textarea.style.height = "auto";
  textarea.style.height = `${Math.min(textarea.scrollHeight, 200)}px`;
  const used = length(textarea.value);
  const over = used > MAX_CHARS;
  counter.hidden = used < MAX_CHARS * 0.8;
  counter.textContent = over
    ? `${used - MAX_CHARS} characters over the limit of ${MAX_CHARS}`
    : `${used} / ${MAX_CHARS}`;
  counter.classList.toggle("over", over);
  textarea.setAttribute("aria-invalid", over ? "true" : "false");
  sendButton.disabled = over;
}

function submit() {
  const text = textarea.value.trim();
  if (!text || length(text) > MAX_CHARS) return;
  textarea.value = "";
  updateComposer();
  queueMessage(text);
}

composer.addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
  textarea.focus();
});
textarea.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submit();
  }
});
textarea.addEventListener("input", updateComposer);

scroller.addEventListener("scroll", () => {
  if (scroller.scrollTop < NEAR_TOP_PX) requestOlder();
  if (isNearBottom()) jumpLatest.hidden = true;
});
loadOlder.addEventListener("click", requestOlder);
jumpLatest.addEventListener("click", scrollToBottom);
reconnectNow.addEventListener("click", () => {
  state.attempt = Math.max(state.attempt, 1);
  connect();
});
// The browser knows before any heartbeat can: give up the socket at once, and
// come back as soon as the network does (`join after` fills the gap).
window.addEventListener("offline", () => {
  if (state.socket) abandon();
  else showOffline();
});
window.addEventListener("online", () => {
  if (state.ready) ping(); // the network changed under a live socket: is it still alive?
  else if (!state.socket) {
    state.attempt = 0;
    connect();
  }
});

setInterval(refreshTimes, 30_000);
updateComposer();
connect();
