// Small pure helpers shared by the chat modules: elements, ids, times, avatars.
// User text only ever reaches the page through textContent.

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function button(className, text, onClick) {
  const node = el("button", className, text);
  node.type = "button";
  if (onClick) node.addEventListener("click", onClick);
  return node;
}

// Stream ids are "<ms>-<seq>"; compared as numbers, never as strings.
export function compareIds(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined) return -1;
  if (b === null || b === undefined) return 1;
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am - bm || as - bs;
}

export function newClientId() {
  // crypto.randomUUID needs a secure context; getRandomValues works on plain http too.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Code points, as the server counts them.
export function length(text) {
  return [...text].length;
}

export const fullDate = new Intl.DateTimeFormat(undefined, {
  dateStyle: "full",
  timeStyle: "short",
});
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayAndClock = new Intl.DateTimeFormat(undefined, {
  weekday: "short",
  day: "numeric",
  month: "short",
  hour: "2-digit",
  minute: "2-digit",
});

export function relativeTime(ts, now = Date.now()) {
  const seconds = Math.round((now - ts) / 1000);
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const sameDay = new Date(ts).toDateString() === new Date(now).toDateString();
  if (sameDay) return clock.format(ts);
  return dayAndClock.format(ts);
}

// FNV-1a, so ids that differ in one character still land on different colours.
function paletteSlot(userId) {
  let h = 0x811c9dc5;
  for (const ch of String(userId)) h = Math.imul(h ^ ch.codePointAt(0), 0x01000193);
  return (h >>> 0) % 12;
}

export function avatar(user) {
  const node = el("span", "avatar", (user.name || "?").slice(0, 1).toUpperCase());
  node.setAttribute("aria-hidden", "true");
  node.dataset.hue = String(paletteSlot(user.id)); // 12 palette slots in app.css
  return node;
}

// What a room is called where it is listed: "#name" for rooms, the people for a DM.
export function roomLabel(room) {
  return room.kind === "direct" ? room.name : `#${room.name}`;
}

export function badgeText(count) {
  return count >= 99 ? "99+" : String(count);
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
