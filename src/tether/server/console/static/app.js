// The console's router: one page module per screen, chosen by the URL's hash.
// A page's render() may return a cleanup function (stop polling, close a shell).
import { forget, session } from "./api.js";
import { add, errorBox, h, put } from "./dom.js";
import * as activations from "./pages/activations.js";
import * as audit from "./pages/audit.js";
import * as command from "./pages/command.js";
import * as commands from "./pages/commands.js";
import * as fleet from "./pages/fleet.js";
import * as node from "./pages/node.js";
import * as run from "./pages/run.js";
import * as sessions from "./pages/sessions.js";
import * as shell from "./pages/shell.js";
import * as signin from "./pages/signin.js";

const ROUTES = [
  [/^\/signin$/, signin.render, "signin"],
  [/^\/nodes$/, fleet.render, "nodes"],
  [/^\/nodes\/(mi-[0-9a-f]{17})$/, node.render, "nodes"],
  [/^\/run$/, run.render, "run"],
  [/^\/commands$/, commands.render, "commands"],
  [/^\/commands\/([0-9a-f-]{36})$/, command.render, "commands"],
  [/^\/shell\/(mi-[0-9a-f]{17})$/, shell.render, "sessions"],
  [/^\/sessions$/, sessions.render, "sessions"],
  [/^\/sessions\/([A-Za-z0-9._-]+)$/, sessions.replay, "sessions"],
  [/^\/activations$/, activations.render, "activations"],
  [/^\/audit$/, audit.render, "audit"],
];

let cleanup = null;

async function route() {
  if (cleanup) { try { cleanup(); } catch { /* the old page is gone anyway */ } cleanup = null; }
  const [path, qs] = (location.hash.slice(1) || "/nodes").split("?");
  const params = new URLSearchParams(qs || "");
  const main = document.getElementById("main");
  const signedIn = session();
  if (!signedIn && path !== "/signin") { location.hash = "#/signin"; return; }
  document.getElementById("top").hidden = !signedIn;
  if (signedIn) put(document.getElementById("operator"), signedIn.operator);
  for (const [pattern, render, area] of ROUTES) {
    const m = path.match(pattern);
    if (!m) continue;
    for (const a of document.querySelectorAll("header nav a")) {
      a.classList.toggle("active", a.getAttribute("href") === `#/${area}`);
    }
    put(main);
    try {
      cleanup = (await render(main, m.slice(1), params)) || null;
    } catch (err) {
      add(main, errorBox(err));
    }
    return;
  }
  put(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/nodes" }, "Fleet")));
}

document.getElementById("signout").addEventListener("click", () => {
  forget();
  location.hash = "#/signin";
});
window.addEventListener("hashchange", route);
route();
