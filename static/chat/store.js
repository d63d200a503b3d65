// What the page knows about the user, their rooms and who is online: one
// place the frames update and the sidebar, header and switcher read.

import { compareIds } from "./format.js";

export const GENERAL = "general";
const UNREAD_CAP = 99;
const VIEWER_FIELDS = ["unread", "mentions", "last_id", "read_id"];

export class Store {
  constructor() {
    this.me = null; // {id, name, admin}
    this.rooms = new Map(); // room id -> room object with the viewer fields
    this.online = new Map(); // user id -> {id, name}
    this.listeners = new Set();
  }

  subscribe(listener) {
    this.listeners.add(listener);
  }

  changed(what) {
    for (const listener of this.listeners) listener(what);
  }

  isMe(userId) {
    return this.me !== null && String(userId) === String(this.me.id);
  }

  // `ready` carries every room the user is in: anything else is gone.
  resetRooms(rooms) {
    const gone = [...this.rooms.keys()].filter((id) => !rooms.some((room) => room.id === id));
    this.rooms = new Map(rooms.map((room) => [room.id, { ...room }]));
    this.changed("rooms");
    return gone;
  }

  // A `room` frame: new rooms come whole; changes on the room channel lack the
  // viewer fields, so what the page already counted stays.
  mergeRoom(room) {
    const known = this.rooms.get(room.id);
    const merged = { unread: 0, mentions: 0, last_id: null, read_id: null, ...known, ...room };
    for (const field of VIEWER_FIELDS) {
      if (room[field] === undefined && known) merged[field] = known[field];
    }
    this.rooms.set(room.id, merged);
    this.changed("rooms");
    return merged;
  }

  removeRoom(roomId) {
    const had = this.rooms.delete(roomId);
    if (had) this.changed("rooms");
    return had;
  }

  // A message this page saw (live or as an `unread` bump) in one of its rooms.
  noteMessage(roomId, id, authorId, { counts }) {
    const room = this.rooms.get(roomId);
    if (!room) return;
    if (room.last_id && compareIds(id, room.last_id) <= 0) return;
    room.last_id = id;
    if (this.isMe(authorId)) {
      // Posting moves the poster's read marker (server-side) to their message.
      room.read_id = id;
      room.unread = 0;
    } else if (counts) {
      room.unread = Math.min(UNREAD_CAP, (room.unread || 0) + 1);
    }
    this.changed("rooms");
  }

  // Read up to `id` on this page; the server's `read` frame confirms the count.
  markRead(roomId, id, unread = 0, mentions = 0) {
    const room = this.rooms.get(roomId);
    if (!room) return;
    if (room.read_id && compareIds(id, room.read_id) < 0) return;
    room.read_id = id;
    room.unread = unread;
    room.mentions = mentions;
    this.changed("rooms");
  }

  renameUser(user) {
    if (this.isMe(user.id)) this.me = { ...this.me, name: user.name };
    if (this.online.has(user.id)) this.online.set(user.id, user);
    for (const room of this.rooms.values()) {
      if (room.kind !== "direct" || !room.members) continue;
      const member = room.members.find((m) => String(m.id) === String(user.id));
      if (!member) continue;
      member.name = user.name;
      room.name = directName(room, this.me);
    }
    this.changed("users");
    this.changed("rooms");
  }

  // For the tab title: unread messages over all rooms, "99+" past the cap (a
  // room at the cap has at least that many); "" when there are none.
  unreadTotal() {
    let total = 0;
    let over = false;
    for (const room of this.rooms.values()) {
      const unread = room.unread || 0;
      total += unread;
      over ||= unread >= UNREAD_CAP;
    }
    if (over || total > UNREAD_CAP) return `${UNREAD_CAP}+`;
    return total ? String(total) : "";
  }

  sorted(kind) {
    const rooms = [...this.rooms.values()].filter((room) =>
      kind === "direct" ? room.kind === "direct" : room.kind !== "direct",
    );
    return rooms.sort((a, b) => {
      if (a.id === GENERAL) return -1;
      if (b.id === GENERAL) return 1;
      return a.name.localeCompare(b.name);
    });
  }
}

// A DM is called by its other members' names, as the server names it for each viewer.
export function directName(room, me) {
  const others = room.members.filter((m) => !me || String(m.id) !== String(me.id));
  return others.map((m) => m.name).join(", ") || (me ? me.name : "");
}
