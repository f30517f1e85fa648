// The console's one way to the server: the REST API with the operator's token.
// The token is kept in this tab's sessionStorage (gone when the tab closes) and
// sent as a Bearer header; the console itself has no other rights.

const KEY = "tether.session";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function session() {
  const raw = sessionStorage.getItem(KEY);
  return raw ? JSON.parse(raw) : null;
}

export function forget() {
  sessionStorage.removeItem(KEY);
}

export async function signIn(token) {
  const who = await (await call("GET", "/whoami", null, token)).json();
  sessionStorage.setItem(KEY, JSON.stringify({ token, operator: who.operator, roles: who.roles }));
  return who;
}

async function call(method, path, body, token) {
  const headers = { Authorization: `Bearer ${token ?? session()?.token ?? ""}` };
  if (body !== null && body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(`/api/v1${path}`, {
    method, headers, body: body === null || body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401 && token === undefined) {
    forget();
    location.hash = "#/signin";
  }
  if (!resp.ok) {
    let code = "http_error";
    let message = `HTTP ${resp.status}`;
    try {
      const err = await resp.json();
      if (err.error) { code = err.error; message = err.message; }
      else if (Array.isArray(err.detail)) {
        message = err.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
      }
    } catch { /* not JSON */ }
    throw new ApiError(resp.status, code, message);
  }
  return resp;
}

export async function get(path) {
  return (await call("GET", path)).json();
}

export async function post(path, body = {}) {
  return (await call("POST", path, body)).json();
}

export async function del(path) {
  return (await call("DELETE", path)).json();
}

export async function bytes(path) {
  return new Uint8Array(await (await call("GET", path)).arrayBuffer());
}

export async function text(path) {
  return (await call("GET", path)).text();
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    for (const x of Array.isArray(v) ? v : [v]) {
      if (x !== null && x !== undefined && x !== "") q.append(k, x);
    }
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

// A session stream: browsers cannot set headers on a WebSocket, so the token
// travels as a subprotocol (a header, never the URL).
export function stream(sessionId) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/api/v1/sessions/${sessionId}/stream`,
    ["tether", `tether.bearer.${session()?.token ?? ""}`]);
  ws.binaryType = "arraybuffer";
  return ws;
}
