// Modal dialogs on the native <dialog>: showModal() keeps focus inside and
// makes the page behind inert, Escape closes, and focus returns to the control
// that opened the dialog.

import { avatar, button, debounce, el, roomLabel } from "./format.js";
import { GENERAL } from "./store.js";

const MAX_DM_OTHERS = 8;
let dialogCount = 0;

export function openDialog(title, build, { className = "" } = {}) {
  const opener = document.activeElement;
  const dialog = el("dialog", `dialog ${className}`.trim());
  const id = `dialog-title-${++dialogCount}`;
  dialog.setAttribute("aria-labelledby", id);
  const header = el("header", "dialog-header");
  const heading = el("h2", "dialog-title", title);
  heading.id = id;
  const close = () => dialog.close();
  header.append(heading, button("dialog-close", "Close", close));
  const body = el("div", "dialog-body");
  dialog.append(header, body);
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (opener && opener.isConnected) opener.focus();
  });
  dialog.addEventListener("keydown", (event) => keepFocusInside(dialog, event));
  document.body.append(dialog);
  build(body, close, dialog);
  dialog.showModal();
  const first =
    body.querySelector("[autofocus]") || body.querySelector("input, textarea, button, a");
  first?.focus();
  return dialog;
}

const FOCUSABLE =
  "a[href], button:not([disabled]), input:not([disabled]), textarea, select, [tabindex]";

// The page behind a modal is inert, but Tab past the last control would leave
// for the browser's own toolbar: wrap around instead, as the dialog pattern asks.
function keepFocusInside(dialog, event) {
  if (event.key !== "Tab") return;
  const controls = [...dialog.querySelectorAll(FOCUSABLE)].filter(
    (node) => node.tabIndex >= 0 && node.offsetParent !== null,
  );
  if (controls.length === 0) return;
  const first = controls[0];
  const last = controls[controls.length - 1];
  if (event.shiftKey && document.activeElement === first) {
    event.preventDefault();
    last.focus();
  } else if (!event.shiftKey && document.activeElement === last) {
    event.preventDefault();
    first.focus();
  }
}

function field(labelText, input, help) {
  const wrap = el("div", "field");
  input.id ||= `f-${Math.random().toString(36).slice(2)}`;
  const label = el("label", "", labelText);
  label.htmlFor = input.id;
  wrap.append(label, input);
  if (help) wrap.append(el("p", "help", help));
  return wrap;
}

function input(type, name, value = "") {
  const node = el("input");
  node.type = type;
  node.name = name;
  node.value = value;
  node.autocomplete = "off";
  return node;
}

function errorLine() {
  const line = el("p", "dialog-error");
  line.setAttribute("role", "alert");
  return line;
}

function statusLine() {
  const line = el("p", "dialog-status");
  line.setAttribute("role", "status");
  return line;
}

function showError(line, error) {
  line.textContent = error.message || "Something went wrong.";
}

function checkbox(name, labelText) {
  const label = el("label", "dialog-radio");
  const box = input("checkbox", name);
  label.append(box, ` ${labelText}`);
  return { label, box };
}

// Asks before something hard to undo; resolves true only when the action was
// chosen. Cancel has the focus, so Enter alone never confirms by accident.
export function confirmDialog(title, text, action) {
  return new Promise((resolve) => {
    let confirmed = false;
    const dialog = openDialog(
      title,
      (body, close, node) => {
        const question = el("p", "confirm-text", text);
        question.id = `${node.getAttribute("aria-labelledby")}-text`;
        node.setAttribute("aria-describedby", question.id);
        node.setAttribute("role", "alertdialog");
        const cancel = button("button secondary", "Cancel", close);
        cancel.autofocus = true;
        const confirm = button("button danger", action, () => {
          confirmed = true;
          close();
        });
        const actions = el("div", "info-actions");
        actions.append(cancel, confirm);
        body.append(question, actions);
      },
      { className: "confirm" },
    );
    dialog.addEventListener("close", () => resolve(confirmed));
  });
}

// ---- admins: deactivate and reactivate people ---------------------------------------------------

// Deactivation logs the person out everywhere and stops their login codes, so
// it is confirmed first; true when it was done.
export async function deactivate(app, user, error) {
  const sure = await confirmDialog(
    `Deactivate ${user.name}?`,
    `${user.name} is logged out everywhere and cannot log in until reactivated. ` +
      "Their messages stay.",
    "Deactivate",
  );
  if (!sure) return false;
  try {
    await app.conn.request({ type: "user_deactivate", user: user.id });
    return true;
  } catch (failure) {
    showError(error, failure);
    return false;
  }
}

export function managePeopleDialog(app) {
  openDialog("Manage people", (body) => {
    const search = input("search", "people-q");
    search.autofocus = true;
    const { label, box: showDeactivated } = checkbox("deactivated", "Show deactivated people");
    const list = el("ul", "browse-list manage-list");
    list.setAttribute("aria-label", "People");
    const error = errorLine();
    const status = statusLine();
    body.append(field("Search people", search), label, error, status, list);
    let asked = 0;
    const load = async () => {
      const ticket = ++asked;
      const deactivated = showDeactivated.checked;
      try {
        const frame = await app.conn.request({
          type: "people",
          q: search.value.trim(),
          deactivated,
        });
        if (ticket !== asked) return;
        error.textContent = "";
        const users = frame.users.filter((user) => !app.store.isMe(user.id));
        list.replaceChildren(...users.map((user) => personItem(user)));
        if (users.length === 0) list.append(el("li", "browse-empty", "Nobody by that name."));
      } catch (failure) {
        showError(error, failure);
      }
    };
    const personItem = (user) => {
      const li = el("li", "browse-room");
      const text = el("div", "browse-text");
      text.append(el("span", "browse-name", user.name));
      if (user.deactivated) text.append(el("span", "browse-meta", "Deactivated"));
      const verb = user.deactivated ? "Reactivate" : "Deactivate";
      const action = button("button secondary", verb, async () => {
        error.textContent = status.textContent = "";
        if (user.deactivated) {
          try {
            await app.conn.request({ type: "user_reactivate", user: user.id });
          } catch (failure) {
            showError(error, failure);
            return;
          }
        } else if (!(await deactivate(app, user, error))) {
          return;
        }
        status.textContent = `${user.name} was ${verb.toLowerCase()}d.`;
        app.people.forget();
        await load();
        search.focus();
      });
      action.setAttribute("aria-label", `${verb} ${user.name}`);
      li.append(text, action);
      return li;
    };
    search.addEventListener("input", debounce(load, 200));
    showDeactivated.addEventListener("change", load);
    load();
  });
}

// ---- people picker -----------------------------------------------------------------

// A search box over the directory (`people {q}`) and the people picked so far.
class PeoplePicker {
  constructor(app, { label, limit, exclude = new Set(), onPick = null }) {
    this.app = app;
    this.limit = limit;
    this.exclude = exclude;
    this.onPick = onPick;
    this.picked = new Map();
    this.root = el("div", "picker");
    this.search = input("search", "people-search");
    this.chips = el("ul", "picker-chips");
    this.chips.setAttribute("aria-label", "Picked");
    this.results = el("ul", "picker-results");
    this.results.setAttribute("aria-label", "People found");
    this.root.append(field(label, this.search), this.chips, this.results);
    const lookup = debounce(() => this.lookup(), 200);
    this.search.addEventListener("input", lookup);
    this.lookup();
  }

  async lookup() {
    let found;
    try {
      found = await this.app.people.search(this.search.value);
    } catch (error) {
      this.results.replaceChildren(el("li", "picker-empty", error.message));
      return;
    }
    const users = found.filter(
      (user) => !this.app.store.isMe(user.id) && !this.exclude.has(String(user.id)),
    );
    const items = users.map((user) => {
      const li = el("li", "picker-person");
      const pick = button("picker-pick", "", () => this.pick(user));
      pick.append(avatar(user), el("span", "picker-name", user.name));
      pick.setAttribute("aria-pressed", String(this.picked.has(String(user.id))));
      li.append(pick);
      return li;
    });
    if (items.length === 0) items.push(el("li", "picker-empty", "Nobody by that name."));
    this.results.replaceChildren(...items);
  }

  pick(user) {
    if (this.onPick) {
      this.onPick(user);
      return;
    }
    const id = String(user.id);
    if (this.picked.has(id)) this.picked.delete(id);
    else if (this.picked.size < this.limit) this.picked.set(id, user);
    this.renderChips();
    this.lookup();
  }

  renderChips() {
    this.chips.replaceChildren(
      ...[...this.picked.values()].map((user) => {
        const li = el("li", "picker-chip");
        li.append(el("span", "", user.name));
        const remove = button("picker-unpick", "×", () => {
          this.picked.delete(String(user.id));
          this.renderChips();
          this.search.focus();
          this.lookup();
        });
        remove.setAttribute("aria-label", `Remove ${user.name}`);
        li.append(remove);
        return li;
      }),
    );
  }

  ids() {
    return [...this.picked.keys()];
  }
}

// ---- create a room ---------------------------------------------------------------------

export function createRoomDialog(app) {
  openDialog("Create a room", (body, close) => {
    const form = el("form", "dialog-form");
    const name = input("text", "name");
    name.required = true;
    name.maxLength = 80;
    name.autofocus = true;
    const topic = input("text", "topic");
    topic.maxLength = 250;
    const kinds = el("fieldset", "dialog-choice");
    kinds.append(el("legend", "", "Who can find it"));
    for (const [value, text] of [
      ["public", "Public – anyone can browse and join"],
      ["private", "Private – only people invited"],
    ]) {
      const label = el("label", "dialog-radio");
      const radio = input("radio", "kind", value);
      radio.checked = value === "public";
      label.append(radio, ` ${text}`);
      kinds.append(label);
    }
    const picker = new PeoplePicker(app, { label: "Invite people", limit: 50 });
    const error = errorLine();
    const create = el("button", "button", "Create room");
    create.type = "submit";
    form.append(
      field("Name", name),
      field("Topic (optional)", topic),
      kinds,
      picker.root,
      error,
      create,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      create.disabled = true;
      try {
        const frame = await app.conn.request({
          type: "room_create",
          kind: form.elements.namedItem("kind").value,
          name: name.value.trim(),
          topic: topic.value.trim(),
          members: picker.ids(),
        });
        app.store.mergeRoom(frame.room);
        close();
        app.open(frame.room.id);
      } catch (failure) {
        showError(error, failure);
        create.disabled = false;
      }
    });
    body.append(form);
  });
}

// ---- browse public rooms ------------------------------------------------------------------

// Public rooms to join; with "Show archived rooms", the archived rooms this
// person may restore (the ones they created; every one for an admin).
export function browseRoomsDialog(app) {
  openDialog("Browse rooms", (body, close) => {
    const search = input("search", "q");
    search.autofocus = true;
    const { label, box: showArchived } = checkbox("archived", "Show archived rooms");
    const list = el("ul", "browse-list");
    const error = errorLine();
    const status = statusLine();
    body.append(field("Search rooms", search), label, error, status, list);
    let asked = 0;
    const load = async () => {
      const ticket = ++asked;
      const archived = showArchived.checked;
      try {
        const frame = await app.conn.request({
          type: "rooms_browse",
          q: search.value.trim(),
          archived,
        });
        if (ticket !== asked) return;
        error.textContent = "";
        const item = archived
          ? (room) => archivedItem(app, room, { close, error, status, reload: load })
          : (room) => browseItem(app, room, close, error);
        list.replaceChildren(...frame.rooms.map(item));
        if (frame.rooms.length === 0) list.append(el("li", "browse-empty", "No rooms found."));
      } catch (failure) {
        showError(error, failure);
      }
    };
    search.addEventListener("input", debounce(load, 200));
    showArchived.addEventListener("change", () => {
      status.textContent = "";
      load();
    });
    load();
  });
}

function archivedItem(app, room, { close, error, status, reload }) {
  const li = el("li", "browse-room");
  const text = el("div", "browse-text");
  text.append(el("span", "browse-name", `#${room.name}`));
  const members = `${room.member_count} member${room.member_count === 1 ? "" : "s"}`;
  text.append(el("span", "browse-meta", `Archived · ${members}`));
  const restore = button("button secondary", "Restore", async () => {
    error.textContent = status.textContent = "";
    try {
      await app.conn.request({ type: "room_update", room: room.id, archived: false });
    } catch (failure) {
      showError(error, failure);
      return;
    }
    if (room.member) {
      // Its `room` frame is on the way; the page opens it as soon as it lands.
      close();
      app.open(room.id);
    } else {
      status.textContent = `#${room.name} was restored.`;
      reload();
    }
  });
  restore.setAttribute("aria-label", `Restore #${room.name}`);
  li.append(text, restore);
  return li;
}

function browseItem(app, room, close, error) {
  const li = el("li", "browse-room");
  const text = el("div", "browse-text");
  text.append(el("span", "browse-name", `#${room.name}`));
  const members = `${room.member_count} member${room.member_count === 1 ? "" : "s"}`;
  text.append(el("span", "browse-meta", room.topic ? `${members} · ${room.topic}` : members));
  const member = room.member || app.store.rooms.has(room.id);
  const action = button("button secondary", member ? "Open" : "Join", async () => {
    if (!member) {
      try {
        const frame = await app.conn.request({ type: "room_join", room: room.id });
        app.store.mergeRoom(frame.room);
      } catch (failure) {
        showError(error, failure);
        return;
      }
    }
    close();
    app.open(room.id);
  });
  action.setAttribute("aria-label", `${member ? "Open" : "Join"} #${room.name}`);
  li.append(text, action);
  return li;
}

// ---- direct messages ------------------------------------------------------------------------

export async function openDirect(app, userIds) {
  const frame = await app.conn.request({ type: "dm_open", users: userIds });
  app.store.mergeRoom(frame.room);
  app.open(frame.room.id);
}

export function newDirectDialog(app) {
  openDialog("New direct message", (body, close) => {
    const form = el("form", "dialog-form");
    const picker = new PeoplePicker(app, { label: "Find people", limit: MAX_DM_OTHERS });
    picker.search.autofocus = true;
    const error = errorLine();
    const start = el("button", "button", "Start conversation");
    start.type = "submit";
    form.append(picker.root, error, start);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (picker.ids().length === 0) {
        error.textContent = "Pick at least one person.";
        return;
      }
      try {
        await openDirect(app, picker.ids());
        close();
      } catch (failure) {
        showError(error, failure);
      }
    });
    body.append(form);
  });
}

// ---- your display name ------------------------------------------------------------------------

export function profileDialog(app) {
  openDialog("Your display name", (body, close) => {
    const form = el("form", "dialog-form");
    const name = input("text", "name", app.store.me?.name ?? "");
    name.required = true;
    name.maxLength = 64;
    name.autofocus = true;
    const error = errorLine();
    const save = el("button", "button", "Save");
    save.type = "submit";
    form.append(
      field("Display name", name, "Everyone sees this name next to your messages."),
      error,
      save,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        const frame = await app.conn.request({ type: "profile", name: name.value.trim() });
        app.renameUser(frame.user);
        close();
      } catch (failure) {
        showError(error, failure);
      }
    });
    body.append(form);
  });
}

// ---- a room's members and settings ----------------------------------------------------------------

export function roomInfoDialog(app, roomId) {
  const room = app.store.rooms.get(roomId);
  if (!room) return;
  openDialog(`About ${roomLabel(room)}`, (body, close, dialog) => {
    dialog.dataset.room = room.id; // renamed or removed meanwhile: see App.onRoom*
    const me = app.store.me;
    const manager =
      room.id !== GENERAL && (me?.admin || String(room.created_by) === String(me?.id));
    const canChange = room.kind !== "direct" && manager;
    const facts = el("p", "info-facts");
    const kind = { public: "Public room", private: "Private room", direct: "Direct message" }[
      room.kind
    ];
    facts.textContent = `${kind} · ${room.member_count} member${room.member_count === 1 ? "" : "s"}`;
    body.append(facts);

    if (canChange) body.append(settingsForm(app, room));

    const membersTitle = el("h3", "info-heading", "Members");
    const members = el("ul", "info-members");
    const membersError = errorLine();
    body.append(membersTitle, membersError, members);
    const canRemove = manager && room.kind !== "direct";
    const loadMembers = async () => {
      try {
        const frame = await app.conn.request({ type: "members", room: room.id });
        members.replaceChildren(
          ...frame.users.map((user) =>
            memberItem(app, room, user, canRemove, loadMembers, membersError),
          ),
        );
        return frame.users;
      } catch (failure) {
        showError(membersError, failure);
        return [];
      }
    };
    const loaded = loadMembers();

    if (room.id !== GENERAL && room.kind !== "direct") {
      const inviteError = errorLine();
      const inviteStatus = statusLine();
      const inviteWrap = el("div", "info-invite");
      loaded.then((users) => {
        const picker = new PeoplePicker(app, {
          label: "Invite someone",
          limit: 1,
          exclude: new Set(users.map((u) => String(u.id))),
          onPick: async (user) => {
            inviteError.textContent = inviteStatus.textContent = "";
            try {
              await app.conn.request({ type: "room_invite", room: room.id, user: user.id });
              inviteStatus.textContent = `${user.name} was invited.`;
              picker.exclude.add(String(user.id));
              picker.lookup();
              loadMembers();
            } catch (failure) {
              showError(inviteError, failure);
            }
          },
        });
        inviteWrap.append(picker.root, inviteError, inviteStatus);
      });
      body.append(inviteWrap);
    }

    const actions = el("div", "info-actions");
    const actionError = errorLine();
    if (canChange) {
      actions.append(
        button("button secondary", "Archive room", async (event) => {
          // A second press confirms: archiving takes the room away from everyone.
          const control = event.currentTarget;
          if (!control.dataset.armed) {
            control.dataset.armed = "1";
            control.textContent = "Archive for everyone?";
            actionError.textContent = `Members lose access to ${roomLabel(room)}. Press again to archive.`;
            return;
          }
          try {
            await app.conn.request({ type: "room_update", room: room.id, archived: true });
            close();
          } catch (failure) {
            showError(actionError, failure);
          }
        }),
      );
    }
    if (room.id !== GENERAL && room.kind !== "direct") {
      actions.append(
        button("button secondary", "Leave room", async () => {
          try {
            await app.conn.request({ type: "room_leave", room: room.id });
            close();
          } catch (failure) {
            showError(actionError, failure);
          }
        }),
      );
    }
    if (actions.childElementCount) body.append(actionError, actions);
  });
}

function settingsForm(app, room) {
  const form = el("form", "dialog-form info-settings");
  const name = input("text", "name", room.name);
  name.required = true;
  name.maxLength = 80;
  const topic = input("text", "topic", room.topic || "");
  topic.maxLength = 250;
  const error = errorLine();
  const status = statusLine();
  const save = el("button", "button", "Save changes");
  save.type = "submit";
  form.append(field("Room name", name), field("Topic", topic), error, status, save);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const change = { type: "room_update", room: room.id };
    if (name.value.trim() !== room.name) change.name = name.value.trim();
    if (topic.value.trim() !== (room.topic || "")) change.topic = topic.value.trim();
    if (change.name === undefined && change.topic === undefined) return;
    error.textContent = status.textContent = "";
    try {
      await app.conn.request(change);
      status.textContent = "Saved.";
    } catch (failure) {
      showError(error, failure);
    }
  });
  return form;
}

function memberItem(app, room, user, canRemove, reload, error) {
  const li = el("li", "info-member");
  li.append(avatar(user), el("span", "info-name", user.name));
  if (app.store.isMe(user.id)) li.append(el("span", "msg-you", "you"));
  else {
    const dm = button("link-button", "Message", () =>
      openDirect(app, [user.id]).catch((f) => showError(error, f)),
    );
    dm.setAttribute("aria-label", `Direct message ${user.name}`);
    li.append(dm);
    if (canRemove) {
      const remove = button("link-button", "Remove", async () => {
        try {
          await app.conn.request({ type: "room_remove", room: room.id, user: user.id });
          reload();
        } catch (failure) {
          showError(error, failure);
        }
      });
      remove.setAttribute("aria-label", `Remove ${user.name}`);
      li.append(remove);
    }
    if (app.store.me?.admin) {
      const off = button("link-button", "Deactivate", async () => {
        if (await deactivate(app, user, error)) reload();
      });
      off.setAttribute("aria-label", `Deactivate ${user.name}`);
      li.append(off);
    }
  }
  return li;
}

// ---- Ctrl/Cmd+K: jump to a room or a person ---------------------------------------------------------

export function switcherDialog(app) {
  openDialog(
    "Jump to",
    (body, close) => {
      const search = input("text", "jump");
      search.autofocus = true;
      search.setAttribute("role", "combobox");
      search.setAttribute("aria-expanded", "true");
      search.setAttribute("aria-controls", "jump-results");
      search.setAttribute("aria-autocomplete", "list");
      const list = el("ul", "jump-list");
      list.id = "jump-results";
      list.setAttribute("role", "listbox");
      list.setAttribute("aria-label", "Rooms and people");
      body.append(field("Room or person", search, "↑ ↓ to choose, Enter to open"), list);
      let options = [];
      let active = 0;
      let asked = 0;

      const choose = async (option) => {
        close();
        if (option.room) app.open(option.room.id);
        else
          await openDirect(app, [option.user.id]).catch((failure) => app.notice(failure.message));
      };
      const render = () => {
        list.replaceChildren(
          ...options.map((option, index) => {
            const li = el("li", "jump-option", option.label);
            li.id = `jump-option-${index}`;
            li.setAttribute("role", "option");
            li.setAttribute("aria-selected", String(index === active));
            li.dataset.kind = option.room ? "room" : "person";
            li.addEventListener("click", () => choose(option));
            return li;
          }),
        );
        if (options.length === 0) list.append(el("li", "jump-empty", "Nothing matches."));
        if (options[active]) search.setAttribute("aria-activedescendant", `jump-option-${active}`);
        else search.removeAttribute("aria-activedescendant");
      };
      let rooms = [];
      // Rooms are known locally: shown at every key. People may need the server: debounced.
      const update = () => {
        const q = search.value.trim().toLowerCase();
        rooms = [...app.store.rooms.values()]
          .filter((room) => room.name.toLowerCase().includes(q))
          .map((room) => ({ room, label: roomLabel(room) }));
        options = rooms;
        active = 0;
        render();
        findPeople(q, ++asked);
      };
      const findPeople = debounce(async (q, ticket) => {
        try {
          const found = await app.people.search(q);
          if (ticket !== asked) return;
          const people = found
            .filter((user) => !app.store.isMe(user.id))
            .map((user) => ({ user, label: `${user.name} (person)` }));
          options = [...rooms, ...people];
          render();
        } catch {
          // Rooms alone still work without the directory.
        }
      }, 250);
      search.addEventListener("input", update);
      search.addEventListener("keydown", (event) => {
        if (event.key === "ArrowDown" || event.key === "ArrowUp") {
          event.preventDefault();
          if (options.length === 0) return;
          active =
            (active + (event.key === "ArrowDown" ? 1 : -1) + options.length) % options.length;
          render();
        } else if (event.key === "Enter") {
          event.preventDefault();
          if (options[active]) choose(options[active]);
        }
      });
      update();
    },
    { className: "jump" },
  );
}
