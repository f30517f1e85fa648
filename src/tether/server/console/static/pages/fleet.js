// The fleet: a searched, paged table that refreshes itself every few seconds.
import { get, query } from "../api.js";
import { add, ago, errorBox, h, put, status, table, tags } from "../dom.js";

const PAGE = 50;
const REFRESH_MS = 3000;

export function address(n) {
  if (!n.primary_address) return h("span", { class: "muted" }, "none reported");
  return h("span", {}, h("span", { class: "mono" }, n.primary_address),
    n.primary_interface ? h("span", { class: n.point_to_point ? "badge p2p" : "badge",
      title: n.point_to_point ? "point-to-point interface" : "interface" },
    n.primary_interface + (n.point_to_point ? " · point-to-point" : "")) : null);
}

export async function render(main, _m, params) {
  let q = params.get("q") || "";
  let ping = params.get("ping_status") || "";
  let offset = Number(params.get("offset") || 0);
  const search = h("input", { type: "search", id: "search", value: q, size: 50,
    placeholder: "name, node id, address, activation id or key=value",
    "aria-label": "Search nodes" });
  const pingSel = h("select", { id: "ping", "aria-label": "Ping status" },
    ["", "Online", "ConnectionLost"].map((v) => h("option", { value: v, selected: v === ping },
      v || "any status")));
  const counter = h("span", { class: "muted", id: "count" });
  const prev = h("button", { type: "button", onclick: () => { offset = Math.max(0, offset - PAGE); refresh(); } }, "Previous");
  const next = h("button", { type: "button", onclick: () => { offset += PAGE; refresh(); } }, "Next");
  const body = h("div");
  add(main, h("h1", {}, "Fleet"),
    h("div", { class: "toolbar" }, search, pingSel, prev, next, counter), body);

  let timer = null;
  let typing = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      const page = await get(`/nodes/search${query({ q, ping_status: ping, limit: PAGE, offset })}`);
      const last = Math.min(page.total, offset + page.nodes.length);
      put(counter, page.total ? `${offset + 1}–${last} of ${page.total}` : "no nodes match");
      prev.disabled = offset === 0;
      next.disabled = last >= page.total;
      put(body, table(
        ["Name", "Node id", "Ping status", "Primary address", "Peer address", "OS", "Agent", "Tags", "Last seen"],
        page.nodes.map((n) => h("tr", { class: "link", "data-node": n.node_id,
          onclick: () => { location.hash = `#/nodes/${n.node_id}`; } },
        h("td", {}, n.name || "-"), h("td", { class: "mono" }, n.node_id),
        h("td", {}, status(n.ping_status)), h("td", {}, address(n)),
        h("td", { class: "mono" }, n.peer_address || "-"), h("td", {}, n.os || "-"),
        h("td", {}, n.agent_version || "-"), h("td", {}, tags(n.tags)),
        h("td", { title: n.last_seen_at ? new Date(n.last_seen_at * 1000).toISOString() : "" },
          n.ping_status === "Online" ? "now" : ago(n.last_seen_at))))));
    } catch (err) {
      put(body, errorBox(err));
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { q = search.value.trim(); offset = 0; refresh(); }, 250);
  });
  pingSel.addEventListener("change", () => { ping = pingSel.value; offset = 0; refresh(); });
  await refresh();
  search.focus();
  return () => { clearTimeout(timer); clearTimeout(typing); };
}
