// The login page: ask for a code, then log in with it. Plain module, no build step.
// Every error the server can answer with gets a message a person can act on.

const root = document.getElementById("login");
const emailForm = document.getElementById("email-form");
const codeForm = document.getElementById("code-form");
const emailInput = document.getElementById("email");
const codeInput = document.getElementById("code");
const codeSent = document.getElementById("code-sent");
const resendButton = document.getElementById("resend");
const changeButton = document.getElementById("change-email");
const message = document.getElementById("message");
const ttlMinutes = Number(root.dataset.codeTtlMinutes);

let resendTimer = null;

// Errors appear right under the field they are about, which is marked invalid.
function say(text, kind = "info") {
  const form = codeForm.hidden ? emailForm : codeForm;
  const input = form === codeForm ? codeInput : emailInput;
  form.querySelector(".field").after(message);
  message.textContent = text;
  message.className = kind === "error" ? "form-message error" : "form-message";
  input.setAttribute("aria-invalid", kind === "error" ? "true" : "false");
}

// While rate limited, the submit button says how long to wait and stays disabled.
let waitTimer = null;

function holdSubmit(form, seconds) {
  const submit = form.querySelector("button[type=submit]");
  const label = submit.dataset.label ?? submit.textContent;
  submit.dataset.label = label;
  clearInterval(waitTimer);
  const until = Date.now() + seconds * 1000;
  const tick = () => {
    const left = Math.ceil((until - Date.now()) / 1000);
    if (left <= 0) {
      clearInterval(waitTimer);
      submit.disabled = false;
      submit.textContent = label;
      return;
    }
    submit.disabled = true;
    submit.textContent = `${label} (wait ${describeWait(left)})`;
  };
  tick();
  waitTimer = setInterval(tick, 1000);
}

function describeWait(seconds) {
  if (seconds < 90) return `${seconds} seconds`;
  const minutes = Math.ceil(seconds / 60);
  return minutes === 1 ? "a minute" : `${minutes} minutes`;
}

function describeError(status, body) {
  const code = body && body.error;
  if (code === "invalid_email") return "That does not look like an email address. Check it and try again.";
  if (code === "invalid_code") {
    return "That code is wrong, expired or already used. Check the newest email, or send a new code.";
  }
  if (code === "rate_limited") {
    const wait = Number(body.retry_after) || 60;
    return `Too many attempts from your network. Try again in ${describeWait(wait)}.`;
  }
  if (code === "forbidden_origin") {
    return "The server refused this request because it came from another site. Open the login page directly.";
  }
  return `Something went wrong (HTTP ${status}). Try again in a moment.`;
}

async function post(url, payload) {
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(payload),
      credentials: "same-origin",
    });
  } catch {
    return { ok: false, status: 0, body: null, text: "Cannot reach the server. Check your connection and try again." };
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  return { ok: response.ok, status: response.status, body, text: response.ok ? "" : describeError(response.status, body) };
}

function startResendCountdown(seconds) {
  clearInterval(resendTimer);
  let left = seconds;
  const tick = () => {
    if (left <= 0) {
      clearInterval(resendTimer);
      resendButton.disabled = false;
      resendButton.textContent = "Send a new code";
      return;
    }
    resendButton.disabled = true;
    resendButton.textContent = `Send a new code (${left} s)`;
    left -= 1;
  };
  tick();
  resendTimer = setInterval(tick, 1000);
}

async function requestCode() {
  const email = emailInput.value.trim();
  if (!email.includes("@")) {
    say("Enter your email address, like ada@example.com.", "error");
    emailInput.focus();
    return;
  }
  const submit = emailForm.querySelector("button[type=submit]");
  submit.disabled = true;
  say("Sending…");
  const result = await post("/login/code", { email });
  submit.disabled = false;
  if (!result.ok) {
    say(result.text, "error");
    if (result.status === 429) holdSubmit(codeForm.hidden ? emailForm : codeForm, retryAfter(result));
    (codeForm.hidden ? emailInput : codeInput).focus();
    return;
  }
  codeSent.textContent =
    `If ${email} may use this chat, a 6-digit code is on its way to it. ` +
    `It works once and expires in ${ttlMinutes} minutes.`;
  emailForm.hidden = true;
  codeForm.hidden = false;
  say("");
  codeInput.value = "";
  codeInput.focus();
  startResendCountdown(Number(result.body && result.body.resend_after) || 0);
}

async function logIn() {
  const code = codeInput.value.replace(/\s+/g, "");
  if (!/^[0-9]{6}$/.test(code)) {
    say("The code is 6 digits, like 123456.", "error");
    codeInput.focus();
    return;
  }
  const submit = codeForm.querySelector("button[type=submit]");
  submit.disabled = true;
  say("Checking…");
  const next = codeForm.elements.namedItem("next").value;
  const result = await post("/login", { email: emailInput.value.trim(), code, next });
  if (result.ok) {
    say("Logged in. Opening the chat…");
    window.location.assign(result.body.redirect);
    return;
  }
  submit.disabled = false;
  say(result.text, "error");
  if (result.status === 429) holdSubmit(codeForm, retryAfter(result));
  codeInput.select();
  codeInput.focus();
}

function retryAfter(result) {
  return Number(result.body && result.body.retry_after) || 60;
}

emailForm.addEventListener("submit", (event) => {
  event.preventDefault();
  requestCode();
});

codeForm.addEventListener("submit", (event) => {
  event.preventDefault();
  logIn();
});

resendButton.addEventListener("click", () => requestCode());

// Codes arrive by mail and get pasted, often with spaces or a trailing newline:
// keep the digits, and a complete pasted code logs in at once.
codeInput.addEventListener("paste", (event) => {
  const pasted = (event.clipboardData?.getData("text") ?? "").replace(/\D/g, "");
  if (!pasted) return;
  event.preventDefault();
  codeInput.value = pasted.slice(0, 6);
  if (codeInput.value.length === 6) logIn();
});
codeInput.addEventListener("input", () => {
  const digits = codeInput.value.replace(/\D/g, "").slice(0, 6);
  if (digits !== codeInput.value) codeInput.value = digits;
});

changeButton.addEventListener("click", () => {
  clearInterval(resendTimer);
  codeForm.hidden = true;
  emailForm.hidden = false;
  say("");
  emailInput.select();
  emailInput.focus();
});
