// One node: what it is, every interface (point-to-point ones included), what ran there.
import { get, query } from "../api.js";
import { add, ago, h, status, table, tags, whatRan, when } from "../dom.js";
import { address } from "./fleet.js";

export async function render(main, [nodeId]) {
  const n = await get(`/nodes/${nodeId}`);
  const inv = n.inventory || {};
  // The search row says which interface holds the primary address (and if it is point-to-point).
  const page = await get(`/nodes/search${query({ q: nodeId, limit: 1 })}`);
  const summary = page.nodes[0] || n;
  add(main,
    h("h1", {}, n.name || n.node_id, " ", status(n.ping_status)),
    h("div", { class: "toolbar" },
      h("button", { class: "primary", type: "button", disabled: n.ping_status !== "Online",
        onclick: () => { location.hash = `#/shell/${nodeId}`; } }, "Open shell"),
      h("button", { type: "button", onclick: () => { location.hash = `#/run?target=${nodeId}`; } },
        "Run command")),
    h("div", { class: "grid" },
      h("b", {}, "Node id"), h("span", { class: "mono" }, n.node_id),
      h("b", {}, "Primary address"), address(summary),
      h("b", {}, "Peer address"), h("span", { class: "mono" }, n.peer_address || "-"),
      h("b", {}, "Host name"), h("span", {}, inv.computer_name || "-"),
      h("b", {}, "OS"), h("span", {}, [inv.os_name, inv.os_version].filter(Boolean).join(" ") || "-"),
      h("b", {}, "Kernel"), h("span", {}, [inv.kernel, inv.arch].filter(Boolean).join(" ") || "-"),
      h("b", {}, "Agent"), h("span", {}, `${n.agent_version || "-"} (Python ${inv.python_version || "?"})`),
      h("b", {}, "Tags"), h("span", {}, tags(n.tags)),
      h("b", {}, "Activation"), h("span", { class: "mono" }, n.activation_id),
      h("b", {}, "Registered"), h("span", {}, when(n.registered_at)),
      h("b", {}, "Last seen"), h("span", {}, n.ping_status === "Online" ? "now" : ago(n.last_seen_at))),
    h("h2", {}, "Interfaces"),
    table(["Name", "Flags", "Addresses"], (inv.interfaces || []).map((i) => h("tr", {},
      h("td", { class: "mono" }, i.name,
        (i.flags || []).includes("pointopoint") ? h("span", { class: "badge p2p" }, "point-to-point") : null),
      h("td", {}, (i.flags || []).join(" ")),
      h("td", { class: "mono" }, (i.addresses || []).map((a) =>
        h("div", {}, `${a.address}/${a.prefixlen}`, a.peer ? ` peer ${a.peer}` : "")))))));
  const [cmds, sess] = await Promise.allSettled([
    get(`/commands${query({ node_id: nodeId, limit: 20 })}`),
    get(`/sessions${query({ node_id: nodeId, limit: 20 })}`)]);
  add(main, h("h2", {}, "Recent commands"), cmds.status === "fulfilled"
    ? table(["Command", "Status", "Script / comment", "By", "When"], cmds.value.map((c) =>
      h("tr", { class: "link", onclick: () => { location.hash = `#/commands/${c.command_id}`; } },
        h("td", { class: "mono" }, c.command_id.slice(0, 8)), h("td", {}, status(c.status)),
        whatRan(c), h("td", {}, c.created_by), h("td", {}, when(c.created_at)))))
    : h("p", { class: "muted" }, cmds.reason.message));
  add(main, h("h2", {}, "Sessions"), sess.status === "fulfilled"
    ? table(["Session", "Kind", "Operator", "Status", "Started", "Ended"], sess.value.map((s) =>
      h("tr", { class: s.recording ? "link" : "",
        onclick: () => { if (s.recording) location.hash = `#/sessions/${s.session_id}`; } },
      h("td", { class: "mono" }, s.session_id), h("td", {}, s.kind), h("td", {}, s.operator),
      h("td", {}, status(s.status)), h("td", {}, when(s.started_at)), h("td", {}, when(s.ended_at)))))
    : h("p", { class: "muted" }, sess.reason.message));
}
