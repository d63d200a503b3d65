// Mentions on the page: completion while typing `@` in the composer, and the
// `@name` parts of a message marked (the server resolved who is mentioned; the
// page only finds where, by the names it knows).

import { el } from "./format.js";

const MAX_SHOWN = 8;
const MAX_QUERY = 40;
const SPECIAL = [
  { id: "@everyone", name: "everyone", note: "everyone in this room" },
  { id: "@here", name: "here", note: "everyone in this room" },
];

// The `@query` right before the caret, or null: an `@` that starts a word,
// then up to MAX_QUERY characters without a new line or another `@`.
export function mentionQuery(text, caret) {
  const before = text.slice(0, caret);
  const at = before.lastIndexOf("@");
  if (at < 0) return null;
  if (at > 0 && /[\p{L}\p{N}]/u.test(before[at - 1])) return null;
  const query = before.slice(at + 1);
  if (query.length > MAX_QUERY || /[\n@]/.test(query)) return null;
  // A finished name is followed by a space; two spaces end the query.
  if (/\s\s/.test(query) || /^\s/.test(query)) return null;
  return { at, query };
}

// The text split into plain strings and {mention, name} parts: an `@` that starts
// a word followed by the longest of `names` (or everyone/here), case-insensitively.
export function mentionParts(text, names) {
  const folded = [...new Set(["everyone", "here", ...names])]
    .filter(Boolean)
    .map((name) => name.toLowerCase())
    .sort((a, b) => b.length - a.length);
  const lower = text.toLowerCase();
  const parts = [];
  let plain = 0;
  for (let i = 0; i < text.length; i++) {
    if (text[i] !== "@" || (i > 0 && /[\p{L}\p{N}]/u.test(text[i - 1]))) continue;
    const name = folded.find(
      (n) =>
        lower.startsWith(n, i + 1) &&
        (i + 1 + n.length === text.length || !/[\p{L}\p{N}]/u.test(text[i + 1 + n.length])),
    );
    // toLowerCase keeps lengths for the names people use; a name whose lower case
    // does not is simply not marked.
    if (!name || lower.length !== text.length) continue;
    if (i > plain) parts.push(text.slice(plain, i));
    parts.push({ mention: text.slice(i, i + 1 + name.length), name });
    plain = i + 1 + name.length;
    i = plain - 1;
  }
  if (plain < text.length) parts.push(text.slice(plain));
  return parts;
}

// Fills `node` with the text, each mention a <mark> (`mention-me` for the reader's).
export function renderMentions(node, text, names, myName) {
  const mine = (myName || "").toLowerCase();
  for (const part of mentionParts(text, names)) {
    if (typeof part === "string") {
      node.append(part);
      continue;
    }
    const me = part.name === mine || part.name === "everyone" || part.name === "here";
    node.append(el("mark", me ? "mention mention-me" : "mention", part.mention));
  }
}

// Completion for the composer's textarea: a listbox of the room's members whose
// names start with what follows `@` (ARIA: the textarea owns the list through
// aria-controls / aria-activedescendant; Up/Down move, Enter/Tab pick, Escape closes).
export class MentionCompleter {
  // members(): a promise of the open room's members [{id, name}].
  constructor(textarea, members) {
    this.textarea = textarea;
    this.members = members;
    this.list = el("ul", "mention-list");
    this.list.id = "mention-list";
    this.list.setAttribute("role", "listbox");
    this.list.setAttribute("aria-label", "People to mention");
    this.list.hidden = true;
    textarea.insertAdjacentElement("beforebegin", this.list);
    textarea.setAttribute("aria-autocomplete", "list");
    textarea.setAttribute("aria-controls", this.list.id);
    this.options = [];
    this.active = -1;
    this.span = null;
    this.generation = 0;
    // Capture: the composer's own Enter-to-send must not see a pick.
    textarea.addEventListener("keydown", (event) => this.onKey(event), true);
    textarea.addEventListener("input", () => this.refresh());
    textarea.addEventListener("click", () => this.refresh());
    textarea.addEventListener("blur", () => setTimeout(() => this.close(), 150));
  }

  get isOpen() {
    return !this.list.hidden;
  }

  async refresh() {
    const found = mentionQuery(this.textarea.value, this.textarea.selectionStart);
    if (!found) return this.close();
    const generation = ++this.generation;
    let people;
    try {
      people = await this.members();
    } catch {
      return this.close();
    }
    if (generation !== this.generation) return;
    const wanted = found.query.toLowerCase();
    const matches = [...SPECIAL, ...people]
      .filter((person) => person.name.toLowerCase().startsWith(wanted))
      .slice(0, MAX_SHOWN);
    if (!matches.length) return this.close();
    this.span = { at: found.at, end: found.at + 1 + found.query.length };
    this.show(matches);
  }

  show(matches) {
    this.options = matches;
    this.list.replaceChildren(
      ...matches.map((person, index) => {
        const li = el("li", "mention-option", person.name);
        li.id = `mention-option-${index}`;
        li.setAttribute("role", "option");
        if (person.note) li.append(el("span", "mention-note", ` ${person.note}`));
        li.addEventListener("mousedown", (event) => {
          event.preventDefault(); // keep the focus in the textarea
          this.pick(index);
        });
        return li;
      }),
    );
    this.list.hidden = false;
    this.textarea.setAttribute("aria-expanded", "true");
    this.select(0);
  }

  select(index) {
    this.active = (index + this.options.length) % this.options.length;
    [...this.list.children].forEach((li, i) =>
      li.setAttribute("aria-selected", i === this.active ? "true" : "false"),
    );
    this.textarea.setAttribute("aria-activedescendant", `mention-option-${this.active}`);
  }

  close() {
    this.generation++;
    this.list.hidden = true;
    this.options = [];
    this.textarea.setAttribute("aria-expanded", "false");
    this.textarea.removeAttribute("aria-activedescendant");
  }

  pick(index) {
    const person = this.options[index];
    if (!person || !this.span) return this.close();
    const value = this.textarea.value;
    const inserted = `@${person.name} `;
    this.textarea.value = value.slice(0, this.span.at) + inserted + value.slice(this.span.end);
    const caret = this.span.at + inserted.length;
    this.textarea.setSelectionRange(caret, caret);
    this.close();
    this.textarea.dispatchEvent(new Event("input"));
    this.close();
  }

  onKey(event) {
    if (!this.isOpen || event.isComposing) return;
    const moves = { ArrowDown: 1, ArrowUp: -1 };
    if (event.key in moves) {
      this.select(this.active + moves[event.key]);
    } else if (event.key === "Enter" || event.key === "Tab") {
      this.pick(this.active);
    } else if (event.key === "Escape") {
      this.close();
    } else {
      return;
    }
    event.preventDefault();
    event.stopImmediatePropagation();
  }
}
