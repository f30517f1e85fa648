// One command: per-node status updating live (long poll), exit codes, outputs, cancel.
import { bytes, get, post, query } from "../api.js";
import { add, addFirst, bytesText, download, errorBox, h, put, status, table, when } from "../dom.js";

const PREVIEW = 4096;
const decoder = new TextDecoder();

async function output(commandId, inv, stream) {
  const data = await bytes(`/commands/${commandId}/invocations/${inv.node_id}/${stream}`);
  return data;
}

// What the output cap cut off, as the CLI says it (cli/commands.py cut()): the server
// kept the stream's first *_size bytes and marks it *_truncated.
function cut(inv, stream) {
  if (!inv[`${stream}_truncated`]) return null;
  return h("div", { class: "truncated", "data-stream": stream, role: "note" },
    `${stream} cut at ${inv[`${stream}_size`]} bytes (the output cap)`);
}

function outputCell(commandId, inv) {
  const cell = h("td", {});
  const show = async () => {
    put(cell);
    for (const stream of ["stdout", "stderr"]) {
      if (!inv[`${stream}_size`]) continue;
      try {
        const data = await output(commandId, inv, stream);
        const shown = decoder.decode(data.slice(0, PREVIEW));
        add(cell, h("div", { class: "muted" }, `${stream} (${bytesText(data.length)})`,
          h("button", { type: "button", onclick: () => download(`${inv.node_id}.${stream}`, data) }, "Download")),
        h("pre", { class: `out-${stream}` }, shown + (data.length > PREVIEW ? "\n…" : "")),
        cut(inv, stream));
      } catch (err) {
        add(cell, errorBox(err));
      }
    }
    if (!cell.childElementCount) add(cell, h("span", { class: "muted" }, "no output"));
  };
  return { cell, show };
}

export async function render(main, [commandId]) {
  let stopped = false;
  const head = h("div");
  const body = h("div");
  add(main, head, body);
  const shown = new Map();  // node -> status already rendered with its output

  async function draw(cmd) {
    const total = Object.values(cmd.counts).reduce((a, b) => a + b, 0);
    put(head,
      h("h1", {}, "Command ", h("span", { class: "mono" }, commandId.slice(0, 8)), " ", status(cmd.status)),
      h("div", { class: "grid" },
        h("b", {}, "Targets"), h("span", { class: "mono" }, cmd.targets.join(" ")),
        h("b", {}, "Nodes"), h("span", {}, `${total}: `, Object.entries(cmd.counts).map(([k, v]) => `${v} ${k}`).join(", ")),
        h("b", {}, "By"), h("span", {}, `${cmd.created_by}, ${when(cmd.created_at)}`),
        h("b", {}, "Comment"), h("span", {}, cmd.comment || "-"),
        h("b", {}, "Script"), h("pre", {}, cmd.script)),
      h("div", { class: "toolbar" }, h("button", { class: "danger", type: "button",
        disabled: !["Pending", "InProgress"].includes(cmd.status),
        onclick: async () => { try { await post(`/commands/${commandId}/cancel`); } catch (err) { add(head, errorBox(err)); } } },
      "Cancel")));
    const rows = [];
    for (const inv of cmd.invocations) {
      const key = [inv.node_id, inv.status, inv.stdout_size, inv.stderr_size,
        inv.stdout_truncated, inv.stderr_truncated].join(":");
      let row = shown.get(inv.node_id);
      if (!row || row.key !== key) {
        const out = outputCell(commandId, inv);
        row = { key, tr: h("tr", { "data-node": inv.node_id },
          h("td", { class: "mono" }, h("a", { href: `#/nodes/${inv.node_id}` }, inv.node_id)),
          h("td", {}, status(inv.status)), h("td", {}, inv.exit_code ?? "-"),
          h("td", {}, inv.reason || ""), out.cell) };
        shown.set(inv.node_id, row);
        if (inv.stdout_size || inv.stderr_size) out.show();
      }
      rows.push(row.tr);
    }
    put(body, table(["Node", "Status", "Exit code", "Reason", "Output"], rows));
  }

  let cmd = await get(`/commands/${commandId}`);
  await draw(cmd);
  (async () => {
    while (!stopped) {
      try {
        cmd = await get(`/commands/${commandId}${query({ after: cmd.version, wait: 25 })}`);
        if (!stopped) await draw(cmd);
      } catch (err) {
        if (!stopped) addFirst(body, errorBox(err));
        await new Promise((r) => setTimeout(r, 3000));
      }
    }
  })();
  return () => { stopped = true; };
}
