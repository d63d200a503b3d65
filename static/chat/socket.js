// The one WebSocket (SPEC §5): connect, heartbeat, reconnect with backoff, and
// requests tied to their replies by `ref`.

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
const REQUEST_TIMEOUT_MS = 10_000;

export class RequestError extends Error {
  constructor(frame) {
    super(frame.message || frame.code);
    this.code = frame.code;
    this.frame = frame;
  }
}

export class Connection {
  // hooks: {frame(frame), ready(frame), status(kind, text, canRetryNow), lost(), loggedOut()}
  constructor(path, hooks) {
    this.path = path;
    this.hooks = hooks;
    this.socket = null;
    this.ready = false;
    this.everReady = false;
    this.attempt = 0;
    this.reconnectTimer = null;
    this.countdownTimer = null;
    this.heartbeatTimer = null;
    this.pongTimer = null; // set while a ping waits for any frame
    this.refs = new Map(); // ref -> {resolve, reject, timer}
    this.nextRef = 1;
    window.addEventListener("offline", () => {
      // The browser knows before any heartbeat can: give up the socket at once.
      if (this.socket) this.abandon();
      else this.showOffline();
    });
    window.addEventListener("online", () => {
      if (this.ready)
        this.ping(); // the network changed under a live socket: still alive?
      else if (!this.socket) {
        this.attempt = 0;
        this.connect();
      }
    });
  }

  send(frame) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  // Sends `frame` with a fresh ref; resolves with the reply carrying it, or
  // rejects with a RequestError for the error carrying it (or a timeout).
  request(frame) {
    return new Promise((resolve, reject) => {
      if (!this.ready) {
        reject(
          new RequestError({
            code: "unavailable",
            message: "Not connected. Try again in a moment.",
          }),
        );
        return;
      }
      const ref = `r${this.nextRef++}`;
      const timer = setTimeout(() => {
        this.refs.delete(ref);
        reject(new RequestError({ code: "timeout", message: "No answer from the server." }));
      }, REQUEST_TIMEOUT_MS);
      this.refs.set(ref, { resolve, reject, timer });
      this.send({ ...frame, ref });
    });
  }

  // A frame with a ref we are waiting for settles its request; true if it did.
  settle(frame) {
    const waiting = frame.ref !== undefined && this.refs.get(frame.ref);
    if (!waiting) return false;
    this.refs.delete(frame.ref);
    clearTimeout(waiting.timer);
    if (frame.type === "error") waiting.reject(new RequestError(frame));
    else waiting.resolve(frame);
    return true;
  }

  failRequests() {
    for (const [ref, waiting] of this.refs) {
      clearTimeout(waiting.timer);
      waiting.reject(
        new RequestError({ code: "unavailable", message: "The connection was lost." }),
      );
      this.refs.delete(ref);
    }
  }

  connect() {
    this.cancelReconnect();
    if (this.socket) return;
    if (!this.everReady && this.attempt === 0) this.hooks.status("connecting", "Connecting…");
    else this.hooks.status("reconnecting", "Reconnecting…");
    const url = new URL(this.path, location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url);
    let opened = false;
    this.socket = socket;
    // A socket that was dropped (see abandon) may still report events: ignore them.
    socket.addEventListener("open", () => {
      opened = true;
      if (socket === this.socket) this.startHeartbeat();
    });
    socket.addEventListener("message", (event) => {
      if (socket !== this.socket) return;
      this.heard();
      this.receive(event.data);
    });
    socket.addEventListener("close", (event) => {
      if (socket === this.socket) this.closed(event.code, opened);
    });
  }

  receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.type === "ready") {
      this.ready = true;
      this.everReady = true;
      this.attempt = 0;
      this.hooks.status("connected", "Connected");
      this.hooks.ready(frame);
      return;
    }
    if (frame.type === "pong") return;
    const settled = this.settle(frame);
    this.hooks.frame(frame, settled);
  }

  // ---- heartbeat: a socket can die without closing --------------------------
  // A laptop that sleeps or changes network leaves a socket neither side has
  // closed: the page would say "Connected" for minutes while nothing arrives. The
  // server answers a ping with a pong; any frame at all proves the socket alive.

  startHeartbeat() {
    this.stopHeartbeat();
    this.heartbeatTimer = setInterval(() => this.ping(), HEARTBEAT_MS);
  }

  stopHeartbeat() {
    clearInterval(this.heartbeatTimer);
    this.heard();
  }

  ping() {
    this.send({ type: "ping" });
    if (this.pongTimer === null) this.pongTimer = setTimeout(() => this.abandon(), PONG_TIMEOUT_MS);
  }

  heard() {
    clearTimeout(this.pongTimer);
    this.pongTimer = null;
  }

  // Drops the current socket without waiting for its closing handshake, which a
  // dead network never completes.
  abandon() {
    const socket = this.socket;
    if (!socket) return;
    this.socket = null;
    socket.close();
    this.closed(CLOSE_ABNORMAL, true);
  }

  async closed(code, opened) {
    this.socket = null;
    this.ready = false;
    this.stopHeartbeat();
    this.failRequests();
    this.hooks.lost();
    if (code === 4401 || (!opened && (await sessionGone()))) {
      this.hooks.loggedOut();
      return;
    }
    if (!navigator.onLine) {
      this.showOffline();
      return;
    }
    if (RESTART_CODES.has(code)) this.reconnectSoon();
    else this.scheduleReconnect();
  }

  showOffline() {
    this.cancelReconnect();
    this.hooks.status("offline", "Offline – waiting for the network", true);
  }

  retryNow() {
    this.attempt = Math.max(this.attempt, 1);
    this.connect();
  }

  // The server closed on purpose (restart, going away): come straight back, but
  // spread over a second so thousands of tabs do not arrive in the same millisecond.
  reconnectSoon() {
    this.attempt = 0;
    this.hooks.status("reconnecting", "Reconnecting…");
    this.reconnectTimer = setTimeout(() => this.connect(), Math.random() * RESTART_JITTER_MS);
  }

  scheduleReconnect() {
    // Exponential backoff with full jitter, so a server that is down is not hit by every tab at once.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    const delay = Math.random() * ceiling;
    this.attempt += 1;
    const due = Date.now() + delay;
    const tick = () => {
      const seconds = Math.max(1, Math.ceil((due - Date.now()) / 1000));
      this.hooks.status("reconnecting", `Reconnecting in ${seconds}s…`, true);
    };
    tick();
    this.countdownTimer = setInterval(tick, 500);
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  cancelReconnect() {
    clearTimeout(this.reconnectTimer);
    clearInterval(this.countdownTimer);
  }
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
