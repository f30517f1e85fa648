// Run a command: targets by ids, tags or all, with a live preview of what they hit.
import { get, post, query } from "../api.js";
import { add, errorBox, h, put } from "../dom.js";

function targetsOf(text) {
  return text.split(/[\s,]+/).map((t) => t.trim()).filter(Boolean);
}

// A field of seconds as a body member, or nothing (the server's default) when empty.
function seconds(name, input) {
  return input.value === "" ? {} : { [name]: Number(input.value) };
}

// The defaults of POST /commands, as the server states them in its OpenAPI document,
// so the console, the CLI and the API have one default each (config.py's), not three.
let defaults = null;
export async function serverDefaults() {
  if (!defaults) {
    defaults = get("/openapi.json").then((doc) => {
      const p = doc.components.schemas.CommandRequest.properties;
      return { timeout: p.timeout.default, delivery_timeout: p.delivery_timeout.default };
    }).catch(() => { defaults = null; return {}; });
  }
  return defaults;
}

export function render(main, _m, params) {
  const targets = h("textarea", { id: "targets", rows: 3, "aria-label": "Targets" },
    params.getAll("target").join("\n"));
  const preview = h("div", { id: "preview", class: "muted" });
  const script = h("textarea", { id: "script", rows: 10, class: "mono", "aria-label": "Script",
    placeholder: "#!/bin/sh is implied: uptime; ip -brief address" });
  // Both start as the server's defaults (the ones POST /commands and the CLI use), read
  // from its OpenAPI document; left empty, the server's default applies all the same.
  const timeout = h("input", { type: "number", id: "timeout", min: 1, placeholder: "the server's default" });
  const delivery = h("input", { type: "number", id: "delivery", min: 1, placeholder: "the server's default" });
  const comment = h("input", { type: "text", id: "comment", size: 50 });
  const problem = h("div");
  let typing = null;

  async function showPreview() {
    const list = targetsOf(targets.value);
    if (!list.length) { put(preview, "Name node ids, tag:KEY=VALUE or all."); return; }
    try {
      const p = await get(`/targets/preview${query({ target: list })}`);
      put(preview, `Hits ${p.count} node${p.count === 1 ? "" : "s"} (${p.online} online now).`,
        p.refused_count ? h("span", { class: "error" },
          ` You may not send to ${p.refused_count}: ${p.refused.join(", ")}` +
          `${p.refused_count > p.refused.length ? " ..." : ""}; the command would be refused.`) : "");
    } catch (err) {
      put(preview, errorBox(err));
    }
  }
  targets.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(showPreview, 300); });

  add(main, h("h1", {}, "Run command"), h("form", { class: "card stack", onsubmit: async (e) => {
    e.preventDefault();
    put(problem);
    try {
      const cmd = await post("/commands?invocations=false", {
        targets: targetsOf(targets.value), script: script.value,
        ...seconds("timeout", timeout), ...seconds("delivery_timeout", delivery),
        comment: comment.value || null });
      location.hash = `#/commands/${cmd.command_id}`;
    } catch (err) {
      put(problem, errorBox(err));
    }
  } },
  h("label", { for: "targets" }, "Targets: node ids, tag:KEY=VALUE or all (one per line)"), targets, preview,
  h("label", { for: "script" }, "Script (run by /bin/sh on each node)"), script,
  h("label", { for: "timeout" }, "Execution timeout, seconds (the whole process group is killed)"), timeout,
  h("label", { for: "delivery" }, "Delivery timeout, seconds (how long to wait for offline nodes)"), delivery,
  h("label", { for: "comment" }, "Comment"), comment,
  h("p", { class: "muted" }, "Every target online gets the command at once; rate control ",
    "(a few nodes at a time) is not available yet."),
  problem, h("button", { class: "primary", type: "submit" }, "Run")));
  showPreview();
  serverDefaults().then((d) => {
    if (!timeout.value && d.timeout) timeout.value = d.timeout;
    if (!delivery.value && d.delivery_timeout) delivery.value = d.delivery_timeout;
  });
  return () => clearTimeout(typing);
}
