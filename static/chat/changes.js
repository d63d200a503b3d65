// Messages that change (SPEC §9): edit in place, delete with a confirmation,
// reactions with a small picker and chips. Each message <li> keeps its
// reactions as emoji -> {count, users: Set}; every change frame is applied as a
// "set" (text, deleted, one person's reaction on or off), so a frame the page
// already holds (a replay after `join after`) changes nothing.

import { confirmDialog } from "./dialogs.js";
import { button, el, fullDate } from "./format.js";

// The picker's fixed set: common, and one code point sequence each.
export const PICKER_EMOJI = ["👍", "❤️", "😂", "🎉", "😮", "😢", "🙏", "👀"];
const DELETED_TEXT = "This message was deleted";

// Adds the change controls and the current state (edited, deleted, reactions) to
// a message's <li>; `message` is the message object of a frame.
export function decorate(view, li, message) {
  li.reactions = new Map();
  const body = li.querySelector(".msg-body");
  const chips = el("div", "msg-reactions");
  chips.setAttribute("role", "group");
  chips.setAttribute("aria-label", "Reactions");
  body.append(chips);
  body.append(actions(view, li));
  if (message.deleted) {
    tombstone(li);
    return;
  }
  if (message.edited_ts) markEdited(li, message.edited_ts);
  for (const reaction of message.reactions ?? []) {
    li.reactions.set(reaction.emoji, {
      count: reaction.count,
      users: new Set(reaction.users.map(String)),
      me: Boolean(reaction.me),
    });
  }
  renderChips(view, li);
}

function actions(view, li) {
  const bar = el("div", "msg-actions");
  const store = view.app.store;
  const own = store.isMe(li.dataset.user);
  const react = button("msg-action", "React", () => togglePicker(view, li, react));
  react.setAttribute("aria-label", "Add a reaction");
  react.setAttribute("aria-expanded", "false");
  bar.append(react);
  if (own) {
    bar.append(button("msg-action", "Edit", () => startEdit(view, li)));
  }
  if (own || store.me?.admin) {
    bar.append(button("msg-action msg-action-danger", "Delete", () => askDelete(view, li)));
  }
  return bar;
}

// ---- applying frames -----------------------------------------------------------------

// An `edit`, `delete` or `reaction` frame for a message this view shows.
export function applyChange(view, li, frame) {
  if (li.classList.contains("msg-deleted")) return;
  if (frame.type === "edit") {
    if (!li.editing) li.querySelector(".msg-text").textContent = frame.text;
    li.dataset.text = frame.text;
    markEdited(li, frame.ts);
  } else if (frame.type === "delete") {
    tombstone(li);
  } else if (frame.type === "reaction") {
    const userId = String(frame.user.id);
    const known = li.reactions.get(frame.emoji) ?? { count: 0, users: new Set(), me: false };
    if (frame.on && !known.users.has(userId)) {
      known.users.add(userId);
      known.count += 1;
    } else if (!frame.on && known.users.has(userId)) {
      known.users.delete(userId);
      known.count -= 1;
    }
    if (view.app.store.isMe(userId)) known.me = frame.on;
    if (known.count > 0) li.reactions.set(frame.emoji, known);
    else li.reactions.delete(frame.emoji);
    renderChips(view, li);
  }
}

function markEdited(li, ts) {
  let marker = li.querySelector(".msg-edited");
  if (!marker) {
    // Beside the text, not in the header, which a continued message hides.
    marker = el("span", "msg-edited", "(edited)");
    li.querySelector(".msg-text").after(marker);
  }
  marker.title = `Edited ${fullDate.format(ts)}`;
}

function tombstone(li) {
  stopEdit(li);
  li.classList.add("msg-deleted");
  li.querySelector(".msg-text").textContent = DELETED_TEXT;
  li.querySelector(".msg-edited")?.remove();
  li.querySelector(".msg-actions")?.remove();
  li.querySelector(".reaction-picker")?.remove();
  li.reactions.clear();
  li.querySelector(".msg-reactions").replaceChildren();
}

// ---- reactions ---------------------------------------------------------------------------

function renderChips(view, li) {
  const chips = li.querySelector(".msg-reactions");
  chips.replaceChildren();
  for (const [emoji, known] of li.reactions) {
    const chip = button("reaction-chip", `${emoji} ${known.count}`, () =>
      react(view, li, emoji, !known.me),
    );
    chip.setAttribute("aria-pressed", known.me ? "true" : "false");
    chip.dataset.emoji = emoji;
    const names = [...known.users].map((id) => view.nameOf(id));
    const more = known.count - names.length;
    chip.title = `${names.join(", ")}${more > 0 ? ` and ${more} more` : ""} reacted with ${emoji}`;
    chip.setAttribute("aria-label", `${emoji} ${known.count}: ${chip.title}`);
    chips.append(chip);
  }
}

function react(view, li, emoji, on) {
  view.app.conn
    .request({ type: "react", room: view.roomId, id: li.dataset.id, emoji, on })
    .catch((error) => view.app.notice(error.message));
}

function togglePicker(view, li, opener) {
  const open = li.querySelector(".reaction-picker");
  if (open) {
    closePicker(li, opener);
    return;
  }
  const picker = el("div", "reaction-picker");
  picker.setAttribute("role", "group");
  picker.setAttribute("aria-label", "Pick a reaction");
  for (const emoji of PICKER_EMOJI) {
    const choice = button("reaction-choice", emoji, () => {
      closePicker(li, opener);
      react(view, li, emoji, !li.reactions.get(emoji)?.me);
    });
    choice.setAttribute("aria-label", `React with ${emoji}`);
    picker.append(choice);
  }
  picker.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      closePicker(li, opener);
    }
  });
  opener.setAttribute("aria-expanded", "true");
  li.querySelector(".msg-body").append(picker);
  picker.querySelector("button").focus();
}

function closePicker(li, opener) {
  li.querySelector(".reaction-picker")?.remove();
  opener.setAttribute("aria-expanded", "false");
  opener.focus();
}

// ---- edit and delete ----------------------------------------------------------------------

// Edit in place: the text becomes a box; Enter saves, Escape cancels.
export function startEdit(view, li) {
  if (li.editing || li.classList.contains("msg-deleted")) return;
  const text = li.querySelector(".msg-text");
  const box = el("textarea", "msg-edit");
  box.value = li.dataset.text ?? text.textContent;
  box.rows = Math.min(8, box.value.split("\n").length);
  box.setAttribute("aria-label", "Edit message");
  const hint = el("p", "msg-edit-hint", "Enter to save · Escape to cancel");
  text.hidden = true;
  text.after(box, hint);
  li.editing = true;
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      stopEdit(li);
      view.app.composer?.textarea.focus();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      saveEdit(view, li, box.value.trim());
    }
  });
  box.focus();
  box.setSelectionRange(box.value.length, box.value.length);
}

function saveEdit(view, li, text) {
  if (!text || text === (li.dataset.text ?? li.querySelector(".msg-text").textContent)) {
    stopEdit(li);
    return;
  }
  view.app.conn
    .request({ type: "edit", room: view.roomId, id: li.dataset.id, text })
    .then(() => {
      li.querySelector(".msg-text").textContent = text;
      li.dataset.text = text;
      stopEdit(li);
      view.app.composer?.textarea.focus();
    })
    .catch((error) => view.app.notice(error.message));
}

function stopEdit(li) {
  if (!li.editing) return;
  li.editing = false;
  li.querySelector(".msg-edit")?.remove();
  li.querySelector(".msg-edit-hint")?.remove();
  li.querySelector(".msg-text").hidden = false;
}

async function askDelete(view, li) {
  const sure = await confirmDialog(
    "Delete this message?",
    "Everyone will see that a message was deleted, but not what it said.",
    "Delete",
  );
  if (!sure) return;
  view.app.conn
    .request({ type: "delete", room: view.roomId, id: li.dataset.id })
    .catch((error) => view.app.notice(error.message));
}

// The user's newest message that can still be edited, for Up in an empty composer.
export function lastOwn(view) {
  const items = view.list.querySelectorAll("li.msg-own[data-id]:not(.msg-deleted)");
  return items.length ? items[items.length - 1] : null;
}
