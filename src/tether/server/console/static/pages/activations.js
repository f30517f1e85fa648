// Activations: create one (its code is shown once), see them all, revoke one.
import { del, get, post } from "../api.js";
import { add, addFirst, errorBox, h, put, table, tags, when } from "../dom.js";

export async function render(main) {
  const limit = h("input", { type: "number", id: "limit", value: 1, min: 1 });
  const hours = h("input", { type: "number", id: "hours", value: 24, min: 1 });
  const tagText = h("input", { type: "text", id: "tags", size: 40, placeholder: "site=north env=lab" });
  const prefix = h("input", { type: "text", id: "prefix", size: 20 });
  const created = h("div");
  const list = h("div");

  async function refresh() {
    const rows = await get("/activations");
    put(list, table(["Activation id", "Registrations", "Expires", "Tags", "Revoked", ""],
      rows.map((a) => h("tr", { "data-activation": a.activation_id },
        h("td", { class: "mono" }, a.activation_id), h("td", {}, `${a.registrations} of ${a.registration_limit}`),
        h("td", {}, when(a.expires_at)), h("td", {}, tags(a.tags)), h("td", {}, when(a.revoked_at)),
        h("td", {}, a.revoked_at ? "" : h("button", { type: "button", class: "danger", onclick: async () => {
          try { await del(`/activations/${a.activation_id}`); await refresh(); } catch (err) { addFirst(list, errorBox(err)); }
        } }, "Revoke"))))));
  }

  add(main, h("h1", {}, "Activations"), h("form", { class: "card stack", onsubmit: async (e) => {
    e.preventDefault();
    put(created);
    try {
      const t = Object.fromEntries(tagText.value.split(/\s+/).filter(Boolean).map((kv) => {
        const i = kv.indexOf("=");
        if (i < 1) throw new Error(`a tag is KEY=VALUE, not ${kv}`);
        return [kv.slice(0, i), kv.slice(i + 1)];
      }));
      const a = await post("/activations", { registration_limit: Number(limit.value),
        expires_in: Number(hours.value) * 3600, tags: t, name_prefix: prefix.value || null });
      const server = location.origin;
      put(created, h("div", { class: "notice", id: "created" },
        h("p", {}, h("b", {}, "Activation code (shown once): "), h("code", { id: "code" }, a.activation_code)),
        h("p", {}, "Activation id: ", h("code", { id: "activation-id" }, a.activation_id)),
        h("p", {}, "On each device (Python 3.9+ and curl):"),
        h("pre", {}, `curl -fsS ${server}/agent/install.sh | sh -s -- --activation-id ${a.activation_id} --activation-code ${a.activation_code}`)));
      await refresh();
    } catch (err) {
      put(created, errorBox(err));
    }
  } },
  h("h2", {}, "New activation"),
  h("label", { for: "limit" }, "Devices it may register"), limit,
  h("label", { for: "hours" }, "Valid for, hours"), hours,
  h("label", { for: "tags" }, "Tags for the nodes it registers"), tagText,
  h("label", { for: "prefix" }, "Name prefix"), prefix,
  h("p", {}, h("button", { class: "primary", type: "submit" }, "Create"))), created, h("h2", {}, "All activations"), list);
  await refresh();
}
