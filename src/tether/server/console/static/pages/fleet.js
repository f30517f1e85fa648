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

const STATES = ["Online", "ConnectionLost", "Deregistered"];

// The tag key a search filters on (its first KEY=VALUE word): what the summary counts
// by when the operator names no key of their own.
export function filteredKey(q) {
  const word = q.split(/\s+/).find((w) => /^[^=]+=/.test(w));
  return word ? word.split("=", 1)[0] : "";
}

// The summary of GET /nodes/counts: how many nodes the search matches in each state
// (deregistered ones too), then the same for each value of the tag counted by.
function summaryOf(c) {
  const line = (counts) => STATES.flatMap((st, i) => [i ? " " : null,
    h("span", { class: `count status-${st}`, "data-state": st }, `${st} ${counts[st]}`)]);
  return [h("div", { class: "summary-total" }, line(c.total)),
    c.by ? h("div", { class: "summary-by" }, c.values.map((v) =>
      h("div", { class: "summary-value", "data-value": v.value ?? "" },
        h("span", { class: "tag" }, v.value === null ? `no ${c.by} tag` : `${c.by}=${v.value}`), " ", line(v))),
    c.more_values ? h("span", { class: "muted" }, `and ${c.more_values} more values`) : null) : null];
}

export async function render(main, _m, params) {
  let q = params.get("q") || "";
  let ping = params.get("ping_status") || "";
  let offset = Number(params.get("offset") || 0);
  const search = h("input", { type: "search", id: "search", value: q, size: 50,
    placeholder: "name, node id, address, activation id or key=value",
    "aria-label": "Search nodes" });
  const pingSel = h("select", { id: "ping", "aria-label": "Ping status" },
    ["", ...STATES].map((v) => h("option", { value: v, selected: v === ping },
      v || "any status")));
  const counter = h("span", { class: "muted", id: "count" });
  const prev = h("button", { type: "button", onclick: () => { offset = Math.max(0, offset - PAGE); refresh(); } }, "Previous");
  const next = h("button", { type: "button", onclick: () => { offset += PAGE; refresh(); } }, "Next");
  const body = h("div");
  let by = params.get("by") || "";
  const bySel = h("input", { type: "text", id: "by", size: 14, value: by,
    placeholder: "count by tag key", "aria-label": "Count by tag key" });
  const summary = h("div", { id: "summary", class: "summary card" });
  add(main, h("h1", {}, "Fleet"), summary,
    h("div", { class: "toolbar" }, search, pingSel, bySel, prev, next, counter), body);

  let timer = null;
  let typing = null;
  let summaries = 0;
  async function refresh() {
    clearTimeout(timer);
    const key = by || filteredKey(q);
    const asked = ++summaries;  // an older answer arriving late is not shown
    get(`/nodes/counts${query({ q, by: key, limit: 20 })}`).then(
      (c) => { if (asked === summaries) put(summary, summaryOf(c)); },
      (err) => { if (asked === summaries) put(summary, errorBox(err)); });
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
  bySel.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { by = bySel.value.trim(); refresh(); }, 250);
  });
  pingSel.addEventListener("change", () => { ping = pingSel.value; offset = 0; refresh(); });
  await refresh();
  search.focus();
  return () => { clearTimeout(timer); clearTimeout(typing); };
}
