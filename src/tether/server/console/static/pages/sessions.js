// Sessions, and a shell's recording replayed in the page (asciicast v2).
import { get, post, query, text } from "../api.js";
import { add, addFirst, bytesText, errorBox, h, status, table, when } from "../dom.js";
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

export async function replay(main, [sessionId]) {
  const s = await get(`/sessions/${sessionId}`);
  const cast = (await text(`/sessions/${sessionId}/recording`)).split("\n").filter(Boolean);
  const header = JSON.parse(cast[0]);
  const events = cast.slice(1).map((l) => JSON.parse(l));
  const box = h("div", { class: "terminal", id: "replay" });
  const speed = h("select", { "aria-label": "Speed" }, [1, 2, 8, 0].map((v) =>
    h("option", { value: v }, v ? `${v}x` : "at once")));
  const play = h("button", { type: "button", class: "primary" }, "Play");
  add(main, h("h1", {}, "Recording of ", h("span", { class: "mono" }, sessionId)),
    h("p", { class: "muted" }, `${s.operator} on ${s.node_id}, ${when(s.started_at)}; `,
      `${s.status}: ${s.end_reason || "open"}`),
    h("div", { class: "toolbar" }, play, speed), box);
  const term = new Terminal({ cols: header.width, rows: header.height, fontSize: 14 });
  term.open(box);
  let timer = null;
  const run = () => {
    clearTimeout(timer);
    term.reset();
    const factor = Number(speed.value);
    let i = 0;
    const step = () => {
      while (i < events.length) {
        const [at, code, data] = events[i];
        if (factor && i > 0 && at > events[i - 1][0]) {
          const wait = Math.min(2, (at - events[i - 1][0]) / factor) * 1000;
          if (wait > 5 && !step.waited) { step.waited = true; timer = setTimeout(step, wait); return; }
        }
        step.waited = false;
        if (code === "o") term.write(data);
        else if (code === "r") { const [c, r] = data.split("x").map(Number); term.resize(c, r); }
        i += 1;
      }
    };
    step();
  };
  play.addEventListener("click", run);
  run();
  return () => { clearTimeout(timer); term.dispose(); };
}
