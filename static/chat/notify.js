// Browser notifications: while the page is hidden, a new message in a direct
// conversation or one that mentions me raises a system notification; clicking
// it brings this window back with that room open. Permission is only ever asked
// from a click on "Enable notifications" (browsers ignore or punish asking
// unprompted), so the button shows while the choice is still open.

import { roomLabel } from "./format.js";

const BODY_CHARS = 200;

export class Notifier {
  // `store` knows rooms and me; `open(roomId)` shows a room.
  constructor(store, open, { button, note }) {
    this.store = store;
    this.open = open;
    this.button = button;
    this.note = note;
    this.supported = typeof window.Notification === "function";
    button.addEventListener("click", () => this.ask());
    this.render();
  }

  permission() {
    return this.supported ? window.Notification.permission : "unsupported";
  }

  async ask() {
    if (!this.supported) return;
    try {
      await window.Notification.requestPermission();
    } catch {
      // Old callback-only implementations: the state is read back below anyway.
    }
    this.render();
  }

  render() {
    const state = this.permission();
    this.button.hidden = state !== "default";
    this.note.hidden = state !== "denied";
  }

  // A live `message` frame (has text and the author object).
  message(frame) {
    const author = frame.user ?? {};
    const room = this.wanted(frame, author.id);
    if (!room) return;
    const title =
      room.kind === "direct" ? author.name || roomLabel(room) : `${roomLabel(room)} · ${author.name}`;
    this.show(room, title, truncate(frame.text ?? ""));
  }

  // An `unread` bump for a room the page has not joined: it carries no text.
  unread(frame) {
    const room = this.wanted(frame, frame.user);
    if (!room) return;
    this.show(room, roomLabel(room), `New message in ${roomLabel(room)}`);
  }

  // The room, if this frame deserves a notification now.
  wanted(frame, authorId) {
    if (this.permission() !== "granted" || document.visibilityState !== "hidden") return null;
    if (this.store.me === null || this.store.isMe(authorId)) return null;
    const room = this.store.rooms.get(frame.room);
    if (!room) return null;
    return room.kind === "direct" || this.store.mentionsMe(frame) ? room : null;
  }

  show(room, title, body) {
    let notification;
    try {
      // One tag per room: a burst in the same room replaces rather than stacks.
      notification = new window.Notification(title, { body, tag: `room:${room.id}` });
    } catch {
      return; // e.g. Android Chrome only allows notifications from a service worker
    }
    notification.onclick = () => {
      window.focus();
      this.open(room.id);
      notification.close();
    };
  }
}

function truncate(text) {
  const chars = [...text];
  return chars.length > BODY_CHARS ? `${chars.slice(0, BODY_CHARS - 1).join("")}…` : text;
}
