// The composer: one form, bound to whichever room is open. Each room keeps its
// own unsent text (RoomView.draft), restored when the room is opened again.

import { length } from "./format.js";

export class Composer {
  constructor(form, maxChars) {
    this.form = form;
    this.maxChars = maxChars;
    this.textarea = form.querySelector("textarea");
    this.label = form.querySelector("label");
    this.counter = form.querySelector(".composer-counter");
    this.sendButton = form.querySelector("button[type=submit]");
    this.view = null;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
      this.textarea.focus();
    });
    this.textarea.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    this.textarea.addEventListener("input", () => {
      if (this.view) this.view.draft = this.textarea.value;
      // Only while there is something being written: clearing the box is not typing.
      if (this.view && this.textarea.value.trim()) this.view.typed();
      this.update();
    });
    this.update();
  }

  // Binds the composer to `view` (null: nothing to write to), named `label`.
  bind(view, label) {
    if (this.view) this.view.draft = this.textarea.value;
    this.view = view;
    this.form.hidden = view === null;
    this.textarea.value = view ? view.draft : "";
    this.relabel(label);
    this.update();
  }

  // The open room was renamed: only its name changes, not what is being typed.
  relabel(label) {
    this.label.textContent = `Message ${label}`;
    this.textarea.placeholder = `Message ${label}`;
  }

  update() {
    const textarea = this.textarea;
    textarea.style.height = "auto";
    textarea.style.height = `${Math.min(textarea.scrollHeight, 200)}px`;
    const used = length(textarea.value);
    const over = used > this.maxChars;
    this.counter.hidden = used < this.maxChars * 0.8;
    this.counter.textContent = over
      ? `${used - this.maxChars} characters over the limit of ${this.maxChars}`
      : `${used} / ${this.maxChars}`;
    this.counter.classList.toggle("composer-over", over);
    textarea.setAttribute("aria-invalid", over ? "true" : "false");
    this.sendButton.disabled = over;
  }

  submit() {
    const text = this.textarea.value.trim();
    if (!this.view || !text || length(text) > this.maxChars) return;
    this.textarea.value = "";
    this.view.draft = "";
    this.update();
    this.view.queue(text);
  }
}
