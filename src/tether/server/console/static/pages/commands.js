import { get } from "../api.js";
import { add, h, status, table, whatRan, when } from "../dom.js";

export async function render(main) {
  const rows = await get("/commands?limit=100");
  add(main, h("h1", {}, "Commands"), table(
    ["Command", "Status", "Targets", "Nodes", "Script / comment", "By", "When"],
    rows.map((c) => h("tr", { class: "link", onclick: () => { location.hash = `#/commands/${c.command_id}`; } },
      h("td", { class: "mono" }, c.command_id.slice(0, 8)), h("td", {}, status(c.status)),
      h("td", { class: "mono" }, c.targets.join(" ")),
      h("td", {}, Object.values(c.counts).reduce((a, b) => a + b, 0)),
      whatRan(c), h("td", {}, c.created_by), h("td", {}, when(c.created_at))))));
}
