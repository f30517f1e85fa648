// Sessions, and a shell's recording replayed in the page (asciicast v2).
import { get, post, query, text } from "../api.js";
import { add, addFirst, bytesText, errorBox, h, put, status, table, when } from "../dom.js";
import { Terminal } from "../vendor/xterm/xterm.mjs";

export async function render(main) {
  const rows = await get(`/sessions${query({ limit: 200 })}`);
  add(main, h("h1", {}, "Sessions"), table(
    ["Session", "Node", "Operator", "Kind", "Status", "Started", "Ended", "Reason", "Traffic", ""],
    rows.map((s) => h("tr", {},
      h("td", { class: "mono" }, s.recording ? h("a", { href: `#/sessions/${s.session_id}` }, s.session_id) : s.session_id),
      h("td", { class: "mono" }, h("a", { href: `#/nodes/${s.node_id}` }, s.node_id)),
      h("td", {}, s.operator), h("td", {}, s.kind), h("td", {}, status(s.status)),
      h("td", {}, when(s.started_at)), h("td", {}, when(s.ended_at)), h("td", {}, s.end_reason || ""),
      h("td", {}, `${bytesText(s.bytes_to_node)} in, ${bytesText(s.bytes_from_node)} out`),
      h("td", {}, s.ended_at ? "" : h("button", { type: "button", class: "danger", onclick: async (e) => {
        try { await post(`/sessions/${s.session_id}/terminate`); e.target.disabled = true; } catch (err) { addFirst(main, errorBox(err)); }
      } }, "Terminate"))))));
}

// When each event of a recording is shown, in seconds from its start: as recorded,
// but an idle gap counts at most MAX_GAP (a shell left open over lunch replays in
// seconds). The seek bar and the clock are in this time.
const MAX_GAP = 2;
export function timeline(events) {
  const out = [];
  for (let i = 0; i < events.length; i += 1) {
    const gap = i ? Math.max(0, events[i][0] - events[i - 1][0]) : Math.max(0, events[0][0]);
    out.push((i ? out[i - 1] : 0) + Math.min(MAX_GAP, gap));
  }
  return out;
}

function clock(t) {
  const s = Math.floor(t);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

// The recording played into a terminal that can pause, seek (back: from the start
// again, which xterm.js writes fast) and change speed while it plays.
export async function replay(main, [sessionId]) {
  const s = await get(`/sessions/${sessionId}`);
  const cast = (await text(`/sessions/${sessionId}/recording`)).split("\n").filter(Boolean);
  const header = JSON.parse(cast[0]);
  const events = cast.slice(1).map((l) => JSON.parse(l));
  const times = timeline(events);
  const duration = times.length ? times[times.length - 1] : 0;
  const box = h("div", { class: "terminal", id: "replay" });
  const speed = h("select", { id: "replay-speed", "aria-label": "Speed" }, [1, 2, 8, 0].map((v) =>
    h("option", { value: v }, v ? `${v}x` : "at once")));
  const play = h("button", { type: "button", class: "primary", id: "replay-play" }, "Pause");
  const seek = h("input", { type: "range", id: "replay-seek", min: 0, max: duration || 0,
    step: "any", value: 0, "aria-label": "Position" });
  const shown = h("span", { class: "mono", id: "replay-time" });
  add(main, h("h1", {}, "Recording of ", h("span", { class: "mono" }, sessionId)),
    h("p", { class: "muted" }, `${s.operator} on ${s.node_id}, ${when(s.started_at)}; `,
      `${s.status}: ${s.end_reason || "open"}`),
    h("div", { class: "toolbar" }, play, seek, shown, speed), box);
  const term = new Terminal({ cols: header.width, rows: header.height, fontSize: 14 });
  term.open(box);

  let at = 0;       // the position, in timeline seconds
  let next = 0;     // the first event not written yet
  let playing = false;
  let timer = null;
  let last = 0;     // performance.now() of the last tick

  function writeUpTo(t) {
    // Back: from the start again. RIS (ESC c) rather than term.reset(), so it is
    // queued behind what was written before, as the events after it are.
    if (t < at) { term.write("\x1bc"); next = 0; }
    while (next < events.length && times[next] <= t) {
      const [, code, data] = events[next];
      if (code === "o") term.write(data);
      else if (code === "r") { const [c, r] = data.split("x").map(Number); term.resize(c, r); }
      next += 1;
    }
    at = t;
    seek.value = String(t);
    put(shown, `${clock(t)} / ${clock(duration)}`);
  }
  function setPlaying(on) {
    playing = on;
    put(play, on ? "Pause" : "Play");
    clearTimeout(timer);
    if (on) { last = performance.now(); tick(); }
  }
  function tick() {
    const factor = Number(speed.value);
    const now = performance.now();
    const t = factor ? Math.min(duration, at + ((now - last) / 1000) * factor) : duration;
    last = now;
    writeUpTo(t);
    if (t >= duration) { setPlaying(false); return; }
    timer = setTimeout(tick, 40);
  }
  play.addEventListener("click", () => {
    if (!playing && at >= duration) writeUpTo(0);  // at the end: play from the start
    setPlaying(!playing);
  });
  seek.addEventListener("input", () => { writeUpTo(Number(seek.value)); last = performance.now(); });
  speed.addEventListener("change", () => { if (playing) { clearTimeout(timer); tick(); } });
  writeUpTo(0);
  setPlaying(true);
  return () => { clearTimeout(timer); term.dispose(); };
}
