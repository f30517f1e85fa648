// The audit trail: filter, read, verify the hash chain, export as JSON lines.
import { get, query } from "../api.js";
import { download, errorBox, h, table, visibleText, when } from "../dom.js";

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
      body.replaceChildren(table(["#", "When", "Actor", "Action", "Target", "Outcome", "From", "Detail"],
        rows.slice().reverse().map((r) => h("tr", {},
          h("td", {}, r.seq), h("td", {}, when(r.at)), h("td", {}, r.actor), h("td", { class: "mono" }, r.action),
          h("td", { class: "mono" }, r.target || ""), h("td", {}, r.outcome), h("td", { class: "mono" }, r.source || ""),
          h("td", { class: "mono detail" }, JSON.stringify(r.detail))))));
    } catch (err) {
      body.replaceChildren(errorBox(err));
    }
  }
  main.append(h("h1", {}, "Audit log"), h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); refresh(); } },
    actor, action, target, h("button", { type: "submit" }, "Filter"),
    h("button", { type: "button", onclick: () => download("tether-audit.jsonl",
      rows.map((r) => JSON.stringify(r)).join("\n") + "\n", "application/x-ndjson") }, "Export JSON lines"),
    h("button", { type: "button", onclick: async () => {
      try {
        const v = await get("/audit/verify");
        verdict.textContent = visibleText(v.ok ? `chain intact (${v.records} records)` : `BROKEN at #${v.seq}: ${v.problem}`);
        verdict.className = v.ok ? "status-Success" : "status-Failed";
      } catch (err) { verdict.replaceChildren(errorBox(err)); }
    } }, "Verify chain"), verdict), body);
  await refresh();
}
