// The audit trail: filter, read, verify the hash chain, export as JSON lines.
import { get, query } from "../api.js";
import { add, download, errorBox, h, put, table, when } from "../dom.js";

// What GET /audit/verify found, in an operator's words: a headline, and the
// server's own sentence (or why it matters) after it. The states are the
// server's (access/audit_chain.py): intact, tampered, truncated.
export function verdictText(v) {
  const n = (k) => `${k} record${k === 1 ? "" : "s"}`;
  if (v.ok && !v.records) return ["Intact: no records yet", null];
  if (v.ok) {
    const head = v.checkpoint ? v.checkpoint.seq : v.records;
    if (!v.anchored) {
      return [`Intact up to #${head}, not anchored yet`,
        `${n(v.records)}, hash chain verified; records cut off the end would not be seen`];
    }
    if (v.anchored >= head) return [`Intact up to #${head}, anchored`, `${n(v.records)}, hash chain verified, nothing cut off the end`];
    return [`Intact up to #${head}, anchored up to #${v.anchored}`,
      `${n(v.records)}, hash chain verified; records after #${v.anchored} are checked by the chain alone`];
  }
  if (v.state === "truncated") {
    const missing = v.anchored && v.seq ? v.anchored - v.seq + 1 : null;
    return [`Truncated: records from #${v.seq} on are missing${missing ? ` (${n(missing)})` : ""}`, v.problem];
  }
  return [v.seq ? `Tampered at #${v.seq}` : "Tampered", v.problem];
}

// A record's detail as fields to read: one line per key, a list as its items, a
// nested object as key=value pairs, a long or multi-line text (a script) as it is.
function detailValue(v) {
  if (v === null || v === undefined) return "-";
  if (Array.isArray(v)) return v.length ? v.map(detailValue).join(", ") : "none";
  if (typeof v === "object") {
    const pairs = Object.entries(v);
    return pairs.length ? pairs.map(([k, x]) => `${k}=${detailValue(x)}`).join(", ") : "none";
  }
  return String(v);
}

export function detailFields(detail) {
  if (!detail || typeof detail !== "object") return detail ? detailValue(detail) : "";
  return Object.entries(detail).map(([k, v]) => h("div", { class: "field", "data-key": k },
    h("span", { class: "key" }, `${k.replaceAll("_", " ")}:`), " ",
    h("span", { class: typeof v === "string" && v.includes("\n") ? "value multiline" : "value" },
      detailValue(v))));
}

export async function render(main, _m, params) {
  const actor = h("input", { type: "text", id: "actor", size: 16, placeholder: "actor", value: params.get("actor") || "" });
  const action = h("input", { type: "text", id: "action", size: 28, placeholder: "action, e.g. POST /api/v1/commands" });
  const target = h("input", { type: "text", id: "target", size: 24, placeholder: "node or other target", value: params.get("target") || "" });
  const verdict = h("span", { id: "verdict" });
  const body = h("div");
  let rows = [];

  async function refresh() {
    try {
      rows = await get(`/audit${query({ actor: actor.value, action: action.value, target: target.value, limit: 500 })}`);
      put(body, table(["#", "When", "Actor", "Action", "Target", "Outcome", "From", "Detail"],
        rows.slice().reverse().map((r) => h("tr", {},
          h("td", {}, r.seq), h("td", {}, when(r.at)), h("td", {}, r.actor), h("td", { class: "mono" }, r.action),
          h("td", { class: "mono" }, r.target || ""), h("td", {}, r.outcome), h("td", { class: "mono" }, r.source || ""),
          h("td", { class: "detail" }, detailFields(r.detail))))));
    } catch (err) {
      put(body, errorBox(err));
    }
  }
  add(main, h("h1", {}, "Audit log"), h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); refresh(); } },
    actor, action, target, h("button", { type: "submit" }, "Filter"),
    h("button", { type: "button", onclick: () => download("tether-audit.jsonl",
      rows.map((r) => JSON.stringify(r)).join("\n") + "\n", "application/x-ndjson") }, "Export JSON lines"),
    h("button", { type: "button", onclick: async () => {
      try {
        const v = await get("/audit/verify");
        const [headline, why] = verdictText(v);
        put(verdict, h("b", {}, headline), why ? h("span", { class: "muted" }, ` (${why})`) : null);
        verdict.className = v.ok ? "status-Success" : "status-Failed";
        verdict.dataset.state = v.state || (v.ok ? "intact" : "tampered");
        await refresh();  // the rows the verdict is about
      } catch (err) { put(verdict, errorBox(err)); }
    } }, "Verify chain"), verdict), body);
  await refresh();
}
