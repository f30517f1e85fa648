import { signIn } from "../api.js";
import { add, errorBox, h, put } from "../dom.js";

export function render(main) {
  const token = h("input", { type: "password", id: "token", name: "token", autocomplete: "off",
    required: true, size: 50, "aria-label": "Operator token" });
  const problem = h("div");
  const form = h("form", { class: "card signin stack", onsubmit: async (e) => {
    e.preventDefault();
    put(problem);
    try {
      await signIn(token.value.trim());
      location.hash = "#/nodes";
    } catch (err) {
      put(problem, errorBox(err));
    }
  } },
  h("h1", {}, "Sign in to tether"),
  h("label", { for: "token" }, "Operator token"), token,
  h("p", { class: "muted" }, "An operator's API token: tether tokens create --operator NAME. ",
    "The first admin token is in the server's DATA/admin-token (lost, or no admin left: ",
    "tether admin recover --data-dir DATA on the server writes a new one). ",
    "It stays in this tab only."),
  problem,
  h("button", { class: "primary", type: "submit" }, "Sign in"));
  add(main, form);
  token.focus();
}
