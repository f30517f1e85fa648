"""The web console in a real browser, against a device whose only link is ``ppp0``.

Why: the console is the operator's other way in besides the CLI, and the API
tests cannot show that its pages, driven by a browser, find a PPP-only device by
its address, run a command there and show the output, open a recorded shell, and
leave an audit trail. This drives Debian's Chromium headless (``/usr/bin/chromium``;
Playwright downloads no browser) with Playwright for Python, in the namespaces of
``pppnet.PppNetwork`` as ``test_cellular`` does (whose ``Cellular`` helper this
reuses): the server, a second "bystander" agent and the browser in the server
namespace, the device's agent in the device namespace. The browser runs this very
file as a script (``python test_console.py walk|signin ...``) inside the server
namespace, so its traffic stays in the namespaces (and loopback); it prints one
``RESULT {json}`` line, or exits nonzero with a traceback, and the test asserts on
that.

PRODUCT CONTRACT under test (src/tether/server/console/static/):

- ``/`` redirects to ``/console/``, which asks for an operator token (``#token``)
  and, signed in, names the operator in the header (``#operator``, also after a
  reload) and shows the fleet (``#/nodes``): one ``tr[data-node=ID]`` per
  node; ``#search`` matches part of an address, and the primary address cell has
  a badge ``ppp0 · point-to-point`` for a point-to-point interface. Its status filter
  (``#ping``) has every state, Deregistered too (whose nodes are left out otherwise).
- A node's page lists its interfaces, ``ppp0`` marked point-to-point, and has
  "Open shell" and "Run command" buttons. The run page previews what the targets
  hit (``#preview``: "Hits 1 node ...") and goes to the command's page, which
  updates live and shows each node's stdout in ``pre.out-stdout``; a stream the output
  cap cut has a ``.truncated[data-stream]`` note beside it ("stdout cut at N bytes (the
  output cap)", the invocation's ``*_truncated`` and ``*_size``, as the CLI says it).
- The shell page opens a recorded session in an xterm.js terminal
  (``#shell-state``: "... (recorded)"); what is typed runs on the device.
- The audit page lists ``POST /api/v1/commands`` and ``POST /api/v1/sessions``
  records by the operator, targeting the node; sessions and activations have
  their own lists.
- Under the page's Content-Security-Policy nothing logs a console error.
- What a device or an operator wrote (a computer name, output, a tag, a script, a
  comment, an anonymous client's activation id in the audit log) is shown as text on
  every page: markup makes no element, and a bidi override, an isolate or ESC is shown
  as ``\u202e``, ``\u2066``, ``\x1b`` (dom.js ``visibleText``), never obeyed or hidden.
- "Verify chain" says, in words, whether the log is intact and anchored ("Intact up to
  #N, anchored"), truncated ("Truncated: records from #N on are missing (K records)")
  or tampered ("Tampered at #N"), with the server's reason; ``#verdict[data-state]``
  holds the server's state.

Screenshots of each page go to a temporary folder, and to
``docs/images/console-<page>.png`` when ``TETHER_SAVE_SCREENSHOTS=1`` (viewport
1280x800). Measured times are printed after the module (``pytest -s``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pppnet import DEVICE_ADDR, PppNetwork, clean_env
from test_cellular import NODE_ID, Cellular, start_online

from tether.protocol.script_line import script_line

pytestmark = pytest.mark.netns

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 800}
BROWSER_TIMEOUT = 240.0  # the whole browser script, launch to close
STEP_TIMEOUT_MS = 30_000  # any one Playwright wait
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
PAGES = ("signin", "fleet", "node", "run", "command", "shell", "audit", "sessions",
         "activations")
RESULT = "RESULT "
# Console messages that are not the product's fault (none seen so far: the page's
# icon is a data: URL, so there is no favicon request to fail).
HARMLESS = re.compile(r"favicon\.ico")

TIMINGS: dict[str, float] = {}  # what -> seconds, printed after the module
NOTES: list[str] = []

# What a device or an operator may write that a page must show as text: markup (an
# element with an id, a script), a right-to-left override, an isolate and ESC. Taken as
# it is, the override would show "exe.txt", the isolate and ESC would be invisible,
# and markup would be elements. The console shows dom.js's visibleText of it.
MARKUP = ('<img id="injected-img" src="x"><script id="injected-script">window.injected = 1'
          '</script><b id="injected-b">bold</b>')
TAIL, SHOWN_TAIL = "\u202etxt.exe\u2066lri\x1b[2Jend", "\\u202etxt.exe\\u2066lri\\x1b[2Jend"
HOSTILE, SHOWN = MARKUP + TAIL, MARKUP + SHOWN_TAIL
# At most 64 characters: an activation id.
HOSTILE_ID, SHOWN_ID = "<i id=injected-i>" + TAIL, "<i id=injected-i>" + SHOWN_TAIL
INVISIBLE = ("\u202e", "\u2066", "\x1b")
# What the page made of it: elements the markup would have made, and what its script set.
INJECTED = ("() => ({elements: document.querySelectorAll('[id^=injected], main script, "
            "main img').length, ran: window.injected ?? null})")


@pytest.fixture(scope="module", autouse=True)
def report_timings() -> Iterator[None]:
    yield
    if TIMINGS or NOTES:
        print("\nconsole timings:")
        for what, seconds in TIMINGS.items():
            print(f"  {seconds:6.2f} s  {what}")
        for note in NOTES:
            print(f"  {note}")


# -- the browser side: run as a script in the server namespace ---------------------------


class Browser:
    """Chromium with one page, and what it logged; ``shot`` saves the page."""

    def __init__(self, shots: Path) -> None:
        self.shots = shots
        self.console: list[str] = []  # console errors and warnings, page errors
        self.failed: list[str] = []  # requests that failed (aborted long polls included)
        self.timings: dict[str, float] = {}
        self.started = time.monotonic()

    def lap(self, what: str) -> None:
        self.timings[what] = round(time.monotonic() - self.started, 3)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"))

    def __enter__(self) -> Browser:
        from playwright.sync_api import expect, sync_playwright

        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox"])
        except BaseException:
            self._playwright.stop()
            raise
        self.lap("browser launched")
        self.page = self._browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        self.page.set_default_timeout(STEP_TIMEOUT_MS)
        expect.set_options(timeout=STEP_TIMEOUT_MS)
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.loads = 0  # page loads: a status that changes with none is live
        self.page.on("load", lambda _p: setattr(self, "loads", self.loads + 1))
        self.page.on("requestfailed",
                     lambda r: self.failed.append(f"{r.method} {r.url}: {r.failure}"))
        # For the diagnosis of a failure: what is still pending, and what was refused.
        self.pending: dict[Any, float] = {}
        self.refused: list[str] = []
        self.page.on("request", lambda r: self.pending.__setitem__(r, time.monotonic()))
        for done in ("requestfinished", "requestfailed"):
            self.page.on(done, lambda r: self.pending.pop(r, None))
        self.page.on("response", lambda r: self.refused.append(
            f"{self.since()} {r.status} {r.request.method} {r.url}") if r.status >= 400 else None)
        return self

    def since(self) -> str:
        return f"{time.monotonic() - self.started:7.2f} s"

    def diagnosis(self) -> str:
        """What the page was doing when a step failed: a page that never rendered is
        most often a module the server refused or never finished (issue: CI flake)."""
        now = time.monotonic()
        pending = [f"{at - self.started:7.2f} s (for {now - at:.2f} s) "
                   f"{r.method} {r.url}" for r, at in self.pending.items()]
        try:
            where = f"{self.page.url}, main: {self.page.locator('main').inner_html()[:500]!r}"
        except Exception as exc:  # the page itself may be what failed
            where = f"(page unreadable: {exc})"
        sections = [("responses >= 400", self.refused), ("failed requests", self.failed),
                    ("still pending", pending), ("console", self.console)]
        return f"the browser at {self.since()} (seconds since it started): {where}\n" + (
            "\n".join(f"{what}:\n  " + ("\n  ".join(lines) or "none")
                      for what, lines in sections))

    def __exit__(self, kind: object, *exc: object) -> None:
        try:
            if kind is not None:
                print(self.diagnosis(), file=sys.stderr)
                self.shot("failure")
        finally:
            self._browser.close()
            self._playwright.stop()

    def sign_in(self, url: str, token: str, seen: dict[str, Any]) -> None:
        """From ``/`` to the signed-in fleet page."""
        from playwright.sync_api import expect

        page = self.page
        page.goto(f"{url}/")
        page.wait_for_selector("#token")
        seen["signin_url"] = page.url
        # Signed out, no nav bar and no "Sign out" (header's display: flex overrode hidden).
        expect(page.locator("header#top")).to_be_hidden()
        seen["signed_out_header"] = page.get_by_role("button", name="Sign out").is_visible()
        self.shot("signin")
        page.fill("#token", token)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**#/nodes")
        page.wait_for_selector("tr[data-node], #count:has-text('no nodes match')")
        expect(page.locator("main h1")).to_have_text("Fleet")
        expect(page.locator("header#top")).to_be_visible()
        seen["operator_shown"] = page.locator("#operator").inner_text()
        self.lap("signed in, fleet shown")

    def result(self, seen: dict[str, Any]) -> dict[str, Any]:
        return {"seen": seen, "console": self.console, "failed_requests": self.failed,
                "timings": self.timings,
                "shots": sorted(f.name for f in self.shots.glob("*.png"))}


def walk(url: str, token: str, node_id: str, device_addr: str, hostname: str,
         bystander: str, bystander_pid: int, shots: Path) -> dict[str, Any]:
    """Walk the console as an operator would; what was seen, for the test to judge.

    A page that does not show what it should raises (a Playwright timeout or an
    AssertionError) after a screenshot ``failure.png`` in ``shots``.
    """
    from playwright.sync_api import expect

    seen: dict[str, Any] = {}
    with Browser(shots) as b:
        page, shot, lap = b.page, b.shot, b.lap
        b.sign_in(url, token, seen)
        rows = page.locator("tr[data-node]")
        expect(rows).to_have_count(2)  # the device and the bystander

        # Find the device by its ppp0 address.
        page.fill("#search", device_addr)
        expect(rows).to_have_count(1)
        row = page.locator(f'tr[data-node="{node_id}"]')
        expect(row).to_contain_text(device_addr)
        badge = row.locator(".badge")
        expect(badge).to_have_text("ppp0 · point-to-point")
        seen["fleet_badge"] = badge.inner_text()
        seen["fleet_badge_p2p"] = "p2p" in (badge.get_attribute("class") or "")
        seen["fleet_count"] = page.locator("#count").inner_text()
        seen["fleet_row_ids"] = [r.get_attribute("data-node") for r in rows.all()]
        lap("searched by address")
        shot("fleet")

        # The node's page: ppp0 in the interfaces, marked point-to-point.
        row.click()
        page.wait_for_url(f"**#/nodes/{node_id}")
        ppp0 = page.locator("tr").filter(
            has=page.locator("td.mono", has_text=re.compile(r"^ppp0")))
        expect(ppp0).to_have_count(1)
        expect(ppp0.locator(".badge.p2p")).to_have_text("point-to-point")
        seen["node_ppp0"] = ppp0.locator("td").all_inner_texts()
        expect(page.get_by_role("button", name="Open shell")).to_be_enabled()
        lap("node page")
        shot("node")

        # Run a command from the node's page.
        page.get_by_role("button", name="Run command").click()
        page.wait_for_url("**#/run?target=*")
        expect(page.locator("#targets")).to_have_value(node_id)
        expect(page.locator("#preview")).to_contain_text("Hits 1 node")
        seen["preview"] = page.locator("#preview").inner_text()
        page.fill("#script", "echo console-$(hostname)")
        shot("run")
        page.get_by_role("button", name="Run", exact=True).click()
        page.wait_for_url(re.compile(r"#/commands/[0-9a-f-]{36}$"))
        seen["command_id"] = page.url.rsplit("/", 1)[1]
        out = page.locator(f'tr[data-node="{node_id}"] pre.out-stdout')
        expect(out).to_contain_text(f"console-{hostname}")
        expect(page.locator(f'tr[data-node="{node_id}"] .status-Success')).to_be_visible()
        seen["stdout"] = out.inner_text()
        lap("command output shown")
        shot("command")

        # Output past the cap is marked beside its stream, in the CLI's terms (issue 13).
        seen["cut_marks_whole"] = page.locator(".truncated").count()  # this output is whole
        capped = api(url, token, "POST", "/commands", {
            "targets": [node_id], "output_cap": 100,
            "script": "yes out | head -c 3000; yes err | head -c 3000 >&2"})
        seen["capped_id"] = capped["command_id"]
        page.goto(f"{url}/console/#/commands/{capped['command_id']}")
        marks = page.locator(f'tr[data-node="{node_id}"] .truncated')
        expect(marks).to_have_count(2)
        seen["cut_marks"] = {m.get_attribute("data-stream"): m.inner_text() for m in marks.all()}
        seen["cut_stdout"] = page.locator(f'tr[data-node="{node_id}"] pre.out-stdout').inner_text()
        lap("output cut at the cap marked")

        # A shell: back to the node through the command's link, then Open shell.
        page.locator(f'tr[data-node="{node_id}"] a[href="#/nodes/{node_id}"]').click()
        page.get_by_role("button", name="Open shell").click()
        page.wait_for_url(f"**#/shell/{node_id}")
        expect(page.locator("#shell-state")).to_contain_text("(recorded)")
        seen["shell_state"] = page.locator("#shell-state").inner_text()
        rows_text = page.locator("#terminal .xterm-rows")
        expect(rows_text).to_contain_text(re.compile(r"[#$%>]"))  # the shell's prompt
        answer = page.locator("#terminal").get_by_text(hostname, exact=True)
        seen["hostname_rows_before"] = answer.count()
        page.click("#terminal")
        page.keyboard.type("hostname\n")
        answer.first.wait_for()
        seen["terminal"] = rows_text.inner_text()
        lap("shell answered hostname")
        shot("shell")

        # The audit trail of both.
        page.locator('header nav a[href="#/audit"]').click()
        page.wait_for_url("**#/audit")
        # The URL changes before the page renders; the old page's rows are still there.
        expect(page.locator("main h1")).to_have_text("Audit log")
        audit_rows = page.locator("main table tbody tr")
        for action in ("POST /api/v1/commands", "POST /api/v1/sessions"):
            expect(audit_rows.filter(has_text=action).first).to_be_visible()
        seen["audit"] = [r.locator("td").all_inner_texts() for r in audit_rows.all()]
        lap("audit page")
        shot("audit")

        page.locator('header nav a[href="#/sessions"]').click()
        page.wait_for_url("**#/sessions")
        # Not the audit page's rows, which also name the node and "shell": this page's.
        expect(page.locator("main h1")).to_have_text("Sessions")
        session_rows = page.locator("main table tbody tr").filter(has_text=node_id)
        expect(session_rows.filter(has_text="shell")).to_have_count(1)
        seen["sessions"] = [r.locator("td").all_inner_texts() for r in session_rows.all()]
        shot("sessions")

        # The shell's recording replays in the page.
        session_rows.filter(has_text="shell").locator("a").first.click()
        page.wait_for_url(re.compile(r"#/sessions/[A-Za-z0-9._-]+$"))
        replayed = page.locator("#replay").get_by_text(hostname, exact=True)
        replayed.first.wait_for(timeout=15_000)
        seen["replayed_hostname"] = replayed.count()
        lap("recording replayed")
        # The player pauses, seeks and changes speed (issue 13).
        play, seek, clock = (page.locator(f"#replay-{x}") for x in ("play", "seek", "time"))
        page.select_option("#replay-speed", "8")
        expect(play).to_have_text("Play", timeout=20_000)  # played to its end
        end = seek.get_attribute("max") or "0"
        seen["replay_clock_at_end"] = clock.inner_text()
        seek.fill("0")  # back to the start: the answer is not on the screen yet
        expect(replayed).to_have_count(0)
        seen["replay_clock_at_start"] = clock.inner_text()
        page.select_option("#replay-speed", "1")
        play.click()
        expect(play).to_have_text("Pause")
        play.click()
        expect(play).to_have_text("Play")
        paused = clock.inner_text(), seek.input_value()
        page.wait_for_timeout(1200)  # paused: nothing moves in a second
        seen["replay_paused_moved"] = (clock.inner_text(), seek.input_value()) != paused
        seek.fill(end)  # forward to the end: the answer is back
        replayed.first.wait_for()
        seen["replay_end"] = float(end)
        lap("replay paused, seeked, sped up")

        # The audit log filters, and exports what it shows as JSON lines.
        page.locator('header nav a[href="#/audit"]').click()
        page.wait_for_url("**#/audit")
        page.fill("#action", "POST /api/v1/sessions")
        page.get_by_role("button", name="Filter").click()
        expect(audit_rows.filter(has_text="POST /api/v1/commands")).to_have_count(0)
        expect(audit_rows.filter(has_text="POST /api/v1/sessions").first).to_be_visible()
        with page.expect_download() as got:
            page.get_by_role("button", name="Export JSON lines").click()
        exported = Path(got.value.path()).read_text().splitlines()
        seen["exported_actions"] = sorted({json.loads(line)["action"] for line in exported})
        page.get_by_role("button", name="Verify chain").click()
        expect(page.locator("#verdict")).to_contain_text("Intact up to #")
        seen["verdict"] = page.locator("#verdict").inner_text()
        lap("audit filtered, exported, verified")

        page.locator('header nav a[href="#/activations"]').click()
        page.wait_for_url("**#/activations")
        expect(page.locator("tr[data-activation]")).to_have_count(2)
        seen["activations"] = page.locator("tr[data-activation]").count()
        # A new activation: its code once, then revoked from the list.
        page.fill("#limit", "3")
        page.fill("#tags", "site=north")
        page.get_by_role("button", name="Create").click()
        code = page.locator("#code")
        expect(code).to_have_text(re.compile(r"^tac_"))
        new_id = page.locator("#activation-id").inner_text()
        seen["new_activation"] = {"id": new_id, "code_shown": code.inner_text()[:4]}
        shot("activations")
        row = page.locator(f'tr[data-activation="{new_id}"]')
        expect(row).to_contain_text("site=north")
        row.get_by_role("button", name="Revoke").click()
        expect(page.locator(f'tr[data-activation="{new_id}"] button')).to_have_count(0)
        page.reload()
        expect(page.locator("#code")).to_have_count(0)  # never shown again
        lap("activation created and revoked")

        # Live status: the bystander's agent dies; its row turns ConnectionLost in place.
        page.locator('header nav a[href="#/nodes"]').click()
        page.wait_for_url("**#/nodes")
        other = page.locator(f'tr[data-node="{bystander}"]')
        expect(other).to_contain_text("Online")
        loads = b.loads
        os.kill(bystander_pid, signal.SIGKILL)
        expect(other).to_contain_text("ConnectionLost", timeout=30_000)
        seen["loads_while_status_changed"] = b.loads - loads
        lap("status changed without a reload")
    return b.result(seen)


def sign_in_only(url: str, token: str, shots: Path) -> dict[str, Any]:
    """Sign in, and what the header then shows (also after a reload of the page); how a
    disabled button looks; the run page's default timeouts."""
    from playwright.sync_api import expect

    seen: dict[str, Any] = {}
    with Browser(shots) as b:
        b.sign_in(url, token, seen)
        b.page.reload()
        b.page.wait_for_selector("#search")
        seen["operator_after_reload"] = b.page.locator("#operator").inner_text()
        # A disabled button looks disabled: "Previous" on the first page beside "Sign out"
        # (disabled once the first page of rows is in).
        b.page.wait_for_selector("#main button[disabled]")
        seen["buttons"] = b.page.evaluate("""() => Object.fromEntries(
            [["disabled", "#main button[disabled]"], ["enabled", "#signout"]].map(([k, sel]) => {
              const el = document.querySelector(sel), st = getComputedStyle(el);
              return [k, {text: el.innerText, opacity: st.opacity, cursor: st.cursor,
                          color: st.color}];
            }))""")
        # The run page's timeouts are the server's defaults (the CLI's too), not its own.
        b.page.goto(f"{url}/console/#/run")
        for field in ("#timeout", "#delivery"):
            expect(b.page.locator(field)).not_to_have_value("")
        seen["run_defaults"] = [b.page.locator(f).input_value() for f in ("#timeout", "#delivery")]
        seen["served_defaults"] = b.page.evaluate("""async () => {
            const doc = await (await fetch("/api/v1/openapi.json")).json();
            const p = doc.components.schemas.CommandRequest.properties;
            return [p.timeout.default, p.delivery_timeout.default]; }""")
    return b.result(seen)


def as_viewer(url: str, token: str, node_id: str, shots: Path) -> dict[str, Any]:
    """A viewer sees the fleet and is refused, with the policy's words, what it may not do."""
    from playwright.sync_api import expect

    seen: dict[str, Any] = {}
    with Browser(shots) as b:
        page = b.page
        b.sign_in(url, token, seen)
        expect(page.locator(f'tr[data-node="{node_id}"]')).to_be_visible()
        page.goto(f"{url}/console/#/run?target={node_id}")
        warned = page.locator("#preview .error")  # the preview says so before Run
        expect(warned).to_contain_text("You may not send to 1")
        seen["preview_warned"] = warned.inner_text()
        page.fill("#script", "echo nope")
        page.get_by_role("button", name="Run", exact=True).click()
        refusal = page.locator("main form .error[role=alert]")
        expect(refusal).to_contain_text("may not commands:send")
        seen["run_refused"] = refusal.inner_text()
        page.goto(f"{url}/console/#/shell/{node_id}")
        expect(page.locator("#shell-state .error")).to_contain_text("may not sessions:start")
        seen["shell_refused"] = page.locator("#shell-state").inner_text()
        page.goto(f"{url}/console/#/audit")
        expect(page.locator("main .error").first).to_contain_text("may not audit:read")
        seen["audit_refused"] = page.locator("main .error").first.inner_text()
        b.shot("viewer-refused")
    return b.result(seen)


class Endpoint:
    """The server as tests/integration's ``HostileDevice`` needs it: a URL, one activation."""

    def __init__(self, url: str, activation: tuple[str, str]) -> None:
        self.url, self._activation = url, activation

    def activation(self) -> tuple[str, str]:
        return self._activation


def api(url: str, token: str, method: str, path: str, body: Any = None) -> Any:
    """One REST call as the operator; its JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}/api/v1{path}", data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def hostile_strings(url: str, token: str, activation_id: str, activation_code: str,
                    shots: Path) -> dict[str, Any]:
    """A device (the real protocol) whose computer name and output, and an operator whose
    tag, script and comment, hold ``HOSTILE``; a failed registration with it for an
    activation id (the audit log's actor). What each page's ``main`` then reads, and
    what it made of the markup."""
    from playwright.sync_api import expect

    tests = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(tests), str(tests / "integration")]
    from test_cli_escaping import HostileDevice

    seen: dict[str, Any] = {}
    device = HostileDevice(Endpoint(url, (activation_id, activation_code)),  # type: ignore[arg-type]
                           name=f"web-{HOSTILE}", stdout=f"line 1\n{HOSTILE}\n".encode())
    with device, Browser(shots) as b:
        node_id = device.node_id
        deadline = time.monotonic() + 30
        while not api(url, token, "GET", f"/nodes/{node_id}").get("inventory"):
            assert time.monotonic() < deadline, "the hostile device's inventory never came"
            time.sleep(0.1)
        api(url, token, "PATCH", f"/nodes/{node_id}/tags", {"set": {"site": HOSTILE}})
        cmd = api(url, token, "POST", "/commands", {
            "targets": [node_id], "script": f"echo '{HOSTILE}'", "comment": f"deploy {HOSTILE}"})
        while cmd["status"] in ("Pending", "InProgress"):  # a long poll: the next change
            cmd = api(url, token, "GET", f"/commands/{cmd['command_id']}?after={cmd['version']}"
                      "&wait=25")
        registration = urllib.request.Request(
            f"{url}/api/v1/registrations", method="POST",
            data=json.dumps({"activation_id": HOSTILE_ID, "activation_code": "tac_wrong"}).encode(),
            headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(registration, timeout=30)
            raise AssertionError("a registration with a made-up activation was accepted")
        except urllib.error.HTTPError as refused:
            seen["registration_refused"] = refused.code
        b.lap("hostile device and strings in place")

        page = b.page
        b.sign_in(url, token, seen)
        views = {
            "fleet": ("#/nodes", page.locator(f'tr[data-node="{node_id}"]'), "txt.exe"),
            "node": (f"#/nodes/{node_id}", page.locator("main tr.link"), "deploy"),  # last
            "command": (f"#/commands/{cmd['command_id']}",
                        page.locator(f'tr[data-node="{node_id}"] pre.out-stdout'), "line 1"),
            "commands": ("#/commands", page.locator("main tbody tr"), "deploy"),
            "audit": ("#/audit", page.locator("main tbody tr").filter(has_text="activation:"),
                      "activation:"),
        }
        for name, (where, shows, what) in views.items():
            page.goto(f"{url}/console/{where}")
            expect(shows.first).to_contain_text(what)
            seen[name] = {"text": page.locator("main").inner_text(),
                          "made": page.evaluate(INJECTED)}
            b.shot(f"hostile-{name}")
        # The audit page's details as fields (issue 13), the command's record first.
        sent = page.locator("main tbody tr").filter(has_text="POST /api/v1/commands").first
        seen["audit_fields"] = sent.locator("td.detail .field").all_inner_texts()
        seen["header_scripts"] = page.evaluate("[...document.scripts].map((s) => s.src)")
        b.lap("hostile strings on five pages")
    return b.result(seen)


def fleet_summary(url: str, token: str, activation_id: str, activation_code: str,
                  shots: Path) -> dict[str, Any]:
    """Three registered devices (the real protocol, none connected yet), two tagged
    site=a; what the fleet page's summary says, searched by site=a, as one connects
    and one is deregistered, and how many page loads that took."""
    from playwright.sync_api import expect

    tests = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(tests), str(tests / "integration")]
    from test_cli_escaping import HostileDevice

    seen: dict[str, Any] = {}
    endpoint = Endpoint(url, (activation_id, activation_code))
    devices = [HostileDevice(endpoint, name=f"sum-{i}") for i in range(3)]  # type: ignore[arg-type]
    for device, site in zip(devices, ("a", "a", "b"), strict=True):
        api(url, token, "PATCH", f"/nodes/{device.node_id}/tags", {"set": {"site": site}})
    with Browser(shots) as b:
        page = b.page
        b.sign_in(url, token, seen)
        total = page.locator("#summary .summary-total")

        def counts(where: Any) -> str:
            return " ".join(where.locator(".count").all_inner_texts())

        expect(total).to_contain_text("ConnectionLost 3")
        seen["all"] = counts(total)
        page.fill("#search", "site=a")  # counted by site, the key the search filters on
        expect(total).to_contain_text("ConnectionLost 2")
        value = page.locator('#summary .summary-value[data-value="a"]')
        expect(value).to_contain_text("ConnectionLost 2")
        seen["site_a"] = counts(total)
        seen["values"] = page.locator("#summary .summary-value").all_inner_texts()
        loads = b.loads
        with devices[0]:  # connects: Online, without a reload
            expect(total).to_contain_text("Online 1")
            seen["connected"] = counts(total)
            api(url, token, "DELETE", f"/nodes/{devices[1].node_id}")
            expect(total).to_contain_text("Deregistered 1")
            seen["deregistered"] = counts(total)
            seen["value_after"] = value.inner_text()
            b.shot("fleet-summary")
        seen["loads"] = b.loads - loads
        # The status filter has Deregistered too: the deregistered node, left out otherwise.
        seen["ping_options"] = [o.get_attribute("value") for o in
                                page.locator("#ping option").all()]
        page.select_option("#ping", "Deregistered")
        rows = page.locator("tr[data-node]")
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-node", devices[1].node_id)
        seen["deregistered_rows"] = [r.locator("td").all_inner_texts() for r in rows.all()]
        page.select_option("#ping", "")
        page.fill("#by", "nosuchkey")  # a key no node has: one value, "no nosuchkey tag"
        expect(page.locator("#summary .summary-value")).to_have_text(
            re.compile("^no nosuchkey tag"))  # one value only
        seen["untagged"] = page.locator("#summary .summary-value").inner_text()
        b.lap("fleet summary, live")
    return b.result(seen)


def audit_verdicts(url: str, token: str, database: Path, shots: Path) -> dict[str, Any]:
    """The audit page's verdict on the log as it is, then with its last three records
    deleted (in the server's SQLite database, as someone with the file could), then with
    record 2 edited too."""
    from playwright.sync_api import expect

    seen: dict[str, Any] = {}
    with Browser(shots) as b:
        page = b.page
        b.sign_in(url, token, seen)
        page.goto(f"{url}/console/#/audit")
        expect(page.locator("main h1")).to_have_text("Audit log")
        verdict = page.locator("#verdict")

        def verify(state: str) -> str:
            page.get_by_role("button", name="Verify chain").click()
            expect(verdict).to_have_attribute("data-state", state)
            b.shot(f"audit-{state}")
            return verdict.inner_text()

        seen["intact"] = verify("intact")
        with sqlite3.connect(database) as db:
            (head,) = db.execute("SELECT max(seq) FROM audit_log").fetchone()
            db.execute("DELETE FROM audit_log WHERE seq > ?", (head - 3,))
        seen["truncated"] = verify("truncated")
        with sqlite3.connect(database) as db:
            db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
        seen["tampered"] = verify("tampered")
        seen["head"] = head
        b.lap("audit verdicts: intact, truncated, tampered")
    return b.result(seen)


def main() -> int:
    parser = argparse.ArgumentParser(description="drive the tether console (test_console)")
    sub = parser.add_subparsers(dest="what", required=True)
    w = sub.add_parser("walk")
    for name in ("url", "token", "node_id", "device_addr", "hostname", "bystander"):
        w.add_argument(name)
    w.add_argument("bystander_pid", type=int)
    w.add_argument("shots")
    s = sub.add_parser("signin")
    for name in ("url", "token", "shots"):
        s.add_argument(name)
    v = sub.add_parser("viewer")
    for name in ("url", "token", "node_id", "shots"):
        v.add_argument(name)
    hs = sub.add_parser("strings")
    for name in ("url", "token", "activation_id", "activation_code", "shots"):
        hs.add_argument(name)
    fs = sub.add_parser("summary")
    for name in ("url", "token", "activation_id", "activation_code", "shots"):
        fs.add_argument(name)
    av = sub.add_parser("verdicts")
    for name in ("url", "token", "database", "shots"):
        av.add_argument(name)
    a = parser.parse_args()
    try:
        if a.what == "walk":
            result = walk(a.url, a.token, a.node_id, a.device_addr, a.hostname, a.bystander,
                          a.bystander_pid, Path(a.shots))
        elif a.what == "viewer":
            result = as_viewer(a.url, a.token, a.node_id, Path(a.shots))
        elif a.what == "strings":
            result = hostile_strings(a.url, a.token, a.activation_id, a.activation_code,
                                     Path(a.shots))
        elif a.what == "summary":
            result = fleet_summary(a.url, a.token, a.activation_id, a.activation_code,
                                   Path(a.shots))
        elif a.what == "verdicts":
            result = audit_verdicts(a.url, a.token, Path(a.database), Path(a.shots))
        else:
            result = sign_in_only(a.url, a.token, Path(a.shots))
    except Exception:
        print(traceback.format_exc(), file=sys.stderr)
        return 1
    print(RESULT + json.dumps(result))
    return 0


# -- the test side -------------------------------------------------------------------------


class Console(Cellular):
    """``Cellular`` with a second agent beside the server, so a search has something to
    leave out."""

    def start_bystander(self) -> str:
        """An agent in the server namespace (eth0, not point-to-point); its node id."""
        activation = self.cli("activation", "create", "--json")
        state_dir = str(self.tmp / "bystander")
        agent = [sys.executable, "-m", "tether.agent"]
        result = self.net.run(self.net.server_ns, [
            *agent, "register", "--insecure", "--server", self.server_url,
            "--activation-id", activation["activation_id"],
            "--activation-code", activation["activation_code"],
            "--state-dir", state_dir], env=clean_env())
        found = NODE_ID.search(result.stdout)
        assert result.returncode == 0 and found, (
            f"register the bystander: exit {result.returncode}\n{result.stdout}"
            f"{result.stderr}{self.logs()}")
        proc, self.watchers["bystander"] = self.net.spawn(
            self.net.server_ns, [*agent, "run", "--state-dir", state_dir], env=clean_env())
        self.procs.append(proc)
        return found.group(0)

    def browse(self, *args: str) -> dict[str, Any]:
        """This file as a script in the server namespace (``walk`` or ``signin``); the
        browser's result. The last argument is the screenshot folder."""
        result = self.net.run(
            self.net.server_ns, [sys.executable, str(Path(__file__).resolve()), *args],
            timeout=BROWSER_TIMEOUT, env=clean_env())
        lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT)]
        assert result.returncode == 0 and len(lines) == 1, (
            f"the browser script: exit {result.returncode} (screenshots in {args[-1]})\n"
            f"{result.stdout}{result.stderr}{self.logs()}")
        browsed: dict[str, Any] = json.loads(lines[0][len(RESULT):])
        return browsed

    def operator(self) -> str:
        name: str = self.cli("whoami", "--json")["operator"]
        return name


def console_errors(result: dict[str, Any]) -> list[str]:
    return [m for m in result["console"] if m.startswith(("error", "pageerror"))
            and not HARMLESS.search(m)]


@pytest.fixture
def console(ppp_network: PppNetwork, tmp_path: Path) -> Iterator[Console]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"needs Debian's Chromium at {CHROMIUM} (scripts/browser installs it)")
    field = Console(ppp_network, tmp_path)
    try:
        field.start_server()
        yield field
    finally:
        field.stop()  # the network's teardown kills whatever is left in its namespaces


def test_operator_finds_ppp_device_runs_command_and_shell_in_browser(
        console: Console, tmp_path: Path) -> None:
    started = time.monotonic()
    node = start_online(console)
    other_id = console.start_bystander()
    console.wait_node("listed with the bystander", lambda _n: {
        n["node_id"] for n in console.cli("nodes", "list", "--json")} == {
        console.node_id, other_id}, timeout=60)
    hostname = node["inventory"]["computer_name"]
    assert hostname, node["inventory"]
    operator = console.operator()
    TIMINGS["server and both agents online"] = time.monotonic() - started

    shots = tmp_path / "screenshots"
    shots.mkdir()
    browsing = time.monotonic()
    bystander_pid = str(console.procs[-1].pid)
    result = console.browse("walk", console.server_url, console.token, console.node_id,
                            DEVICE_ADDR, hostname, other_id, bystander_pid, str(shots))
    TIMINGS["browser script, start to exit"] = time.monotonic() - browsing
    for what, at in result["timings"].items():
        TIMINGS[f"  browser: {what} (since the browser script began)"] = at
    seen = result["seen"]
    if os.environ.get("TETHER_SAVE_SCREENSHOTS") == "1":
        IMAGES.mkdir(parents=True, exist_ok=True)
        for name in PAGES:
            shutil.copyfile(shots / f"{name}.png", IMAGES / f"console-{name}.png")
        NOTES.append(f"screenshots copied to {IMAGES}/console-<page>.png")
    NOTES.append(f"screenshots: {', '.join(result['shots'])} in {shots}")
    NOTES.extend(f"console: {m}" for m in result["console"])
    NOTES.extend(f"failed request: {m}" for m in result["failed_requests"])

    assert seen["signin_url"].endswith("/console/#/signin"), seen["signin_url"]
    # Found by the ppp0 address: only the device, with its interface marked point-to-point.
    assert seen["fleet_row_ids"] == [console.node_id], seen
    assert seen["fleet_badge"] == "ppp0 · point-to-point" and seen["fleet_badge_p2p"], seen
    name, flags, addresses = seen["node_ppp0"]
    assert name.startswith("ppp0") and "point-to-point" in name, seen["node_ppp0"]
    assert "pointopoint" in flags.split(), seen["node_ppp0"]
    assert f"{DEVICE_ADDR}/32" in addresses, seen["node_ppp0"]
    assert seen["preview"].startswith("Hits 1 node"), seen["preview"]
    # The command ran on the device, and the CLI agrees with what the page showed.
    assert seen["stdout"].strip() == f"console-{hostname}", seen["stdout"]
    assert console.stdout_of(seen["command_id"]).strip() == f"console-{hostname}"
    # Output cut at the cap is marked on the page, as the server says it was cut.
    assert seen["cut_marks_whole"] == 0, seen
    assert seen["cut_marks"] == {s: f"{s} cut at 100 bytes (the output cap)"
                                 for s in ("stdout", "stderr")}, seen["cut_marks"]
    assert seen["cut_stdout"] == "out\n" * 25, seen["cut_stdout"]
    (capped,) = console.cli("commands", "show", seen["capped_id"], "--json")["invocations"]
    assert capped["stdout_truncated"] and capped["stderr_truncated"], capped
    # The shell's answer is a line of its own, which was not there before it was asked.
    assert "(recorded)" in seen["shell_state"], seen["shell_state"]
    assert seen["hostname_rows_before"] == 0, seen["terminal"]
    assert hostname in [line.strip() for line in seen["terminal"].split("\n")], seen["terminal"]
    # The audit trail names the operator, the action and the node for both.
    for action in ("POST /api/v1/commands", "POST /api/v1/sessions"):
        records = [r for r in seen["audit"] if r[3] == action]
        assert any(r[2] == operator and console.node_id in r[4] + r[7] and r[5] == "ok"
                   for r in records), (action, records)
    shells = [r for r in seen["sessions"] if len(r) > 3 and r[3].strip() == "shell"]
    assert len(shells) == 1, seen["sessions"]
    (session_row,) = shells
    assert session_row[1] == console.node_id and session_row[2] == operator, session_row
    assert seen["activations"] == 2
    assert seen["replayed_hostname"] >= 1, seen
    assert seen["replay_end"] > 0 and not seen["replay_paused_moved"], seen
    start_clock, end_clock = seen["replay_clock_at_start"], seen["replay_clock_at_end"]
    assert start_clock.startswith("0:00 / ") and end_clock.split(" / ")[0] == (
        end_clock.split(" / ")[1]), (start_clock, end_clock)
    assert seen["exported_actions"] == ["POST /api/v1/sessions"], seen["exported_actions"]
    assert re.match(r"Intact up to #\d+, anchored \(", seen["verdict"]), seen["verdict"]
    assert seen["loads_while_status_changed"] == 0, seen  # live, not reloaded
    assert seen["new_activation"]["code_shown"] == "tac_", seen
    revoked = [a for a in console.cli("activation", "list", "--json")
               if a["activation_id"] == seen["new_activation"]["id"]]
    assert revoked and revoked[0]["revoked_at"] is not None, revoked
    assert set(result["shots"]) == {f"{name}.png" for name in PAGES}, result["shots"]
    # Nothing the pages did logged an error, under the console's CSP.
    assert console_errors(result) == [], result["console"]


def test_header_names_the_signed_in_operator(console: Console, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    result = console.browse("signin", console.server_url, console.token, str(shots))
    assert console_errors(result) == [], result["console"]
    operator = console.operator()
    assert result["seen"]["operator_shown"] == operator, result["seen"]
    assert result["seen"]["operator_after_reload"] == operator, result["seen"]
    assert result["seen"]["signed_out_header"] is False, result["seen"]
    disabled, enabled = result["seen"]["buttons"]["disabled"], result["seen"]["buttons"]["enabled"]
    assert disabled["text"] == "Previous" and enabled["text"] == "Sign out", result["seen"]
    assert float(disabled["opacity"]) < 0.6 <= float(enabled["opacity"]), result["seen"]
    assert disabled["cursor"] == "not-allowed" != enabled["cursor"], result["seen"]
    # One default: the server's (config.py), which the CLI's "1h" matches, not 600 s.
    served = result["seen"]["served_defaults"]
    assert served == [3600, 3600], served
    assert [float(v) for v in result["seen"]["run_defaults"]] == served, result["seen"]


if __name__ == "__main__":
    sys.exit(main())


def test_a_viewer_sees_the_fleet_but_the_console_refuses_what_its_policy_does(
        console: Console, tmp_path: Path) -> None:
    """The console has no rights of its own: the API refuses, and the page says why."""
    start_online(console)
    console.cli("operators", "create", "watcher", "--role", "viewer", "--json")
    token = console.cli("tokens", "create", "--operator", "watcher", "--json")["token"]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    result = console.browse("viewer", console.server_url, token, console.node_id, str(shots))
    seen = result["seen"]
    assert seen["operator_shown"] == "watcher", seen
    assert console.node_id in seen["preview_warned"], seen
    assert "watcher may not commands:send" in seen["run_refused"], seen
    assert "watcher may not sessions:start" in seen["shell_refused"], seen
    assert "watcher may not audit:read" in seen["audit_refused"], seen
    # Nothing was sent and no session started.
    assert console.cli("commands", "list", "--json") == [], "a viewer's command was stored"
    assert console.cli("sessions", "list", "--json") == [], "a viewer's session was started"


def test_device_and_operator_strings_are_text_on_every_page(
        console: Console, tmp_path: Path) -> None:
    """Issue 12 #2 in a browser: markup, a bidi override, an isolate and ESC from a device
    (the real protocol), an operator and an anonymous client are shown, not obeyed."""
    activation = console.cli("activation", "create", "--json")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    started = time.monotonic()
    result = console.browse("strings", console.server_url, console.token,
                            activation["activation_id"], activation["activation_code"],
                            str(shots))
    TIMINGS["hostile strings: browser script, start to exit"] = time.monotonic() - started
    seen = result["seen"]
    assert seen["registration_refused"] in (401, 403, 404), seen
    # Where each page shows HOSTILE, at least: fleet (name, tag), node (title, host name,
    # tag, the recent command's comment), command (script, comment, output), commands
    # (comment); audit (the script and the tag in the records' details), and the
    # anonymous actor below.
    least = {"fleet": 2, "node": 4, "command": 3, "commands": 1, "audit": 2}
    for name, count in least.items():
        text, made = seen[name]["text"], seen[name]["made"]
        assert made == {"elements": 0, "ran": None}, (name, made)
        assert [ch for ch in INVISIBLE if ch in text] == [], (name, text)
        assert text.count(SHOWN) >= count, (name, count, text)
    assert f"activation:{SHOWN_ID}" in seen["audit"]["text"], seen["audit"]["text"]
    # Details are fields to read, not JSON (issue 13): "key: value", lists as items.
    fields = {f.split(": ", 1)[0]: f.split(": ", 1)[1] for f in seen["audit_fields"]}
    assert fields["script"] == f"echo '{SHOWN}'", fields
    assert re.fullmatch(r"mi-[0-9a-f]{17}", fields["targets"]) and fields["nodes"] == "1", fields
    assert '{"' not in seen["audit"]["text"] and '":' not in seen["audit"]["text"], seen
    # What ran, in the command tables: the script's line (cut at 120 characters, inside
    # the markup here), then the comment (issue 13).
    line = script_line(f"echo '{HOSTILE}'")
    assert line.endswith("…") and not any(ch in line for ch in INVISIBLE), line
    for name in ("node", "commands"):
        assert f"{line}\ndeploy {SHOWN}" in seen[name]["text"], (name, seen[name])
    # The device's reason (test_cli_escaping.REASON: ESC, OSC 52, an isolate) too.
    assert "oops\\x1b[1A\\x1b[2K\\x1b]52;c;aGk=\\x07\\u2066done" in seen["command"]["text"]
    assert [src.rsplit("/", 1)[-1] for src in seen["header_scripts"]] == ["app.js"], seen
    assert console_errors(result) == [], result["console"]


def test_the_audit_page_says_whether_the_log_is_intact_truncated_or_tampered(
        console: Console, tmp_path: Path) -> None:
    for _ in range(6):  # records 1-6: 4-6 are cut, 2 is edited
        console.cli("activation", "create", "--json")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    result = console.browse("verdicts", console.server_url, console.token,
                            str(console.tmp / "server" / "tether.db"), str(shots))
    seen = result["seen"]
    head = seen["head"]
    assert seen["intact"].startswith(f"Intact up to #{head}, anchored ("), seen
    assert f"{head} records" in seen["intact"], seen
    assert seen["truncated"].startswith(
        f"Truncated: records from #{head - 2} on are missing (3 records) ("), seen
    assert f"ends at record {head - 3}" in seen["truncated"], seen  # the server's reason
    assert seen["tampered"].startswith("Tampered at #2 ("), seen
    assert "changed after it was written" in seen["tampered"], seen
    assert console_errors(result) == [], result["console"]


def test_the_fleet_summary_counts_by_state_and_tag_value_live(
        console: Console, tmp_path: Path) -> None:
    """Issue 13: Online / ConnectionLost / Deregistered above the fleet, by the values of
    the tag a search filters on, following the fleet as it changes (no reload)."""
    activation = console.cli("activation", "create", "--limit", "3", "--json")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    result = console.browse("summary", console.server_url, console.token,
                            activation["activation_id"], activation["activation_code"],
                            str(shots))
    seen = result["seen"]
    assert seen["all"] == "Online 0 ConnectionLost 3 Deregistered 0", seen
    assert seen["site_a"] == "Online 0 ConnectionLost 2 Deregistered 0", seen
    assert seen["values"] == ["site=a Online 0 ConnectionLost 2 Deregistered 0"], seen
    assert seen["connected"] == "Online 1 ConnectionLost 1 Deregistered 0", seen
    assert seen["deregistered"] == "Online 1 ConnectionLost 0 Deregistered 1", seen
    assert seen["value_after"] == "site=a Online 1 ConnectionLost 0 Deregistered 1", seen
    assert seen["loads"] == 0, seen
    assert seen["ping_options"] == ["", "Online", "ConnectionLost", "Deregistered"], seen
    ((_name, _node_id, ping_status, *_),) = seen["deregistered_rows"]  # devices[1]'s
    assert ping_status == "Deregistered", seen["deregistered_rows"]
    # (the device that connected may or may not have been seen to go yet)
    assert re.fullmatch(r"no nosuchkey tag Online [01] ConnectionLost [01] Deregistered 1",
                        seen["untagged"]), seen
    assert console_errors(result) == [], result["console"]
