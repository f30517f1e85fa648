// A shell in the browser: the same session relay and recording as `tether shell`.
import { post, stream } from "../api.js";
import { add, errorBox, h, put } from "../dom.js";
import { Terminal } from "../vendor/xterm/xterm.mjs";
import { FitAddon } from "../vendor/xterm/addon-fit.mjs";

const encoder = new TextEncoder();

export async function render(main, [nodeId]) {
  const box = h("div", { class: "terminal", id: "terminal" });
  const state = h("p", { class: "muted", id: "shell-state" }, "Connecting…");
  add(main, h("h1", {}, "Shell on ", h("a", { href: `#/nodes/${nodeId}`, class: "mono" }, nodeId)),
    state, box);
  const term = new Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  let session;
  try {
    session = await post("/sessions", { node_id: nodeId, kind: "shell", rows: term.rows, cols: term.cols,
      term: "xterm-256color" });
  } catch (err) {
    put(state, errorBox(err));
    term.dispose();
    return null;
  }
  const ws = stream(session.session_id);
  let said = false;  // the relay said opened or closed: a close then is no news
  const send = (data) => { if (ws.readyState === WebSocket.OPEN) ws.send(data); };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") { term.write(new Uint8Array(ev.data)); return; }
    const control = JSON.parse(ev.data);
    if (control.t === "opened" || control.t === "closed") said = true;
    if (control.t === "opened") {
      put(state, `Session ${session.session_id} (recorded). `,
        h("a", { href: `#/sessions/${session.session_id}` }, "Replay"));
      term.focus();
    } else if (control.t === "closed") {
      put(state, control.error ? `Session ended: ${control.error}`
        : `Session ended: the shell exited with ${control.exit_code}.`, " ",
      h("a", { href: `#/sessions/${session.session_id}` }, "Replay"));
    }
  };
  ws.onclose = () => { if (!said) put(state, "Disconnected."); };
  const input = term.onData((d) => send(encoder.encode(d)));
  const binary = term.onBinary((d) => send(Uint8Array.from(d, (c) => c.charCodeAt(0))));
  const resized = term.onResize(({ rows, cols }) => send(JSON.stringify({ t: "resize", rows, cols })));
  const onWindow = () => fit.fit();
  window.addEventListener("resize", onWindow);
  return () => {
    window.removeEventListener("resize", onWindow);
    input.dispose(); binary.dispose(); resized.dispose();
    ws.close();
    term.dispose();
  };
}
