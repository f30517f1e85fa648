// Small helpers to build pages. Text always goes in as text (never as HTML),
// so nothing a device or an operator wrote can become markup.

// Characters that move, hide or stand for other text: C0 controls but tab, line
// feed and carriage return (ESC: Chromium draws nothing for it, so "a\x1b[2Jb"
// would read "a[2Jb"), DEL and C1 controls, the bidi embeddings, overrides and
// isolates (U+202A-202E, U+2066-2069: a device named "\u202Etxt.exe" would read
// as "exe.txt"), the direction marks, zero-width and other format characters,
// line/paragraph separators, tag characters, lone surrogates. The same set as
// tether.protocol.terminal.UNSAFE_RANGES minus KEPT_IN_OUTPUT (tab, LF and CR
// are laid out by the DOM and <pre> output needs them); tests/unit/test_terminal.py
// checks that both agree.
const INVISIBLE = /[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\u00AD\u0600-\u0605\u061C\u06DD\u070F\u0890\u0891\u08E2\u180E\u200B\u200E\u200F\u2028-\u202E\u2060-\u2064\u2066-\u206F\uD800-\uDFFF\uFEFF\uFFF9-\uFFFB\u{110BD}\u{110CD}\u{13430}-\u{1343F}\u{1BCA0}-\u{1BCA3}\u{1D173}-\u{1D17A}\u{E0001}\u{E0020}-\u{E007F}]/gu;

// Text as shown to people: each character above becomes \x1b (\u202e,
// \U000e0041), written as tether.protocol.terminal.visible writes it. The
// backslash itself is left alone (a Windows path reads as it is), so the text
// "\u202e" and the character U+202E look alike; neither can reorder anything.
export function visibleText(value) {
  return String(value).replace(INVISIBLE, (ch) => {
    const code = ch.codePointAt(0);
    if (code < 0x100) return `\\x${code.toString(16).padStart(2, "0")}`;
    return code > 0xFFFF ? `\\U${code.toString(16).padStart(8, "0")}`
      : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

// Attributes people read (a tooltip, what a screen reader says, a hint in an
// empty field): shown as visibleText too. Others (value, href, data-*) are data.
const SHOWN_ATTRIBUTES = new Set(["title", "aria-label", "placeholder", "alt"]);

// Children as DOM nodes: elements as they are, anything else as a text node of its
// visibleText. The one place a page's text enters the DOM (h, put, add, addFirst).
function nodes(children) {
  const out = [];
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    out.push(c instanceof Node ? c : document.createTextNode(visibleText(c)));
  }
  return out;
}

// An element. Every text child goes through visibleText, so no page can forget it.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (SHOWN_ATTRIBUTES.has(k)) el.setAttribute(k, visibleText(v));
    else el.setAttribute(k, v === true ? "" : v);
  }
  el.append(...nodes(children));
  return el;
}

// An element's children replaced, added after or before its own. Pages use these,
// never the DOM's replaceChildren/append/prepend/textContent, which take a string
// as it is (tests/unit/test_terminal.py fails on them outside this file).
export function put(el, ...children) { el.replaceChildren(...nodes(children)); return el; }
export function add(el, ...children) { el.append(...nodes(children)); return el; }
export function addFirst(el, ...children) { el.prepend(...nodes(children)); return el; }

export function when(ts) {
  if (!ts) return "-";
  return new Date(ts * 1000).toLocaleString(undefined, { hour12: false });
}

export function ago(ts) {
  if (!ts) return "-";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function status(value) {
  return h("span", { class: `status-${value}` }, value);
}

export function tags(map) {
  return Object.entries(map || {}).map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`));
}

// What ran, for a table of commands: the script's line (the server cuts it,
// protocol/script_line.py) and, under it, the comment.
export function whatRan(c) {
  return h("td", { class: "what-ran" }, h("div", { class: "mono script-line" }, c.script_line || ""),
    c.comment ? h("div", { class: "muted comment" }, c.comment) : null);
}

export function table(headers, rows) {
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows));
}

export function errorBox(err) {
  return h("div", { class: "error", role: "alert" }, err.message || String(err));
}

export function download(name, data, type = "application/octet-stream") {
  const url = URL.createObjectURL(new Blob([data], { type }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function bytesText(n) {
  if (n === null || n === undefined) return "-";
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 ** 2).toFixed(1)} MiB`;
}
