"""``tether-agent doctor``: walk the path from this device to its server, one hop at a time.

A device that does not show up Online is usually at the end of an LTE link in
a closed network, and the person looking at it has a shell and nothing else.
The doctor answers "where does it stop?" in the order the agent itself goes:

=========== ===================================================================
identity    the state directory exists and ``identity.json`` parses
permissions the directory and the identity are the owner's alone
resolve     the server's host name resolves, and which source answered
route       the kernel has a route to that address, and through which interface
tcp         a TCP connection to host:port opens (timed)
tls         for ``https``: the handshake with the system trust store
websocket   the upgrade to ``/agent/v1/connect``
auth        a probe ``hello`` with this node's credential gets a ``welcome``
clock       the server's ``Date`` header against this device's clock
=========== ===================================================================

Each check needs the ones listed for it in ``REQUIRES``; a check whose needs
did not pass is *skipped*, with the check that failed named, instead of
failing again for a reason that says nothing new.

The ``auth`` check says ``hello`` with ``probe: true``: the server
authenticates it, answers ``welcome`` and closes (1000, ``probe answered``)
without counting it as the node's connection, so an agent running at the
same time keeps its link, and commands waiting for the node stay with it.

The package is in three parts:

- ``results``: the verdicts, the order of the checks and their needs, rendering;
- ``judgements``: what gathered facts mean (parsing ``/etc/hosts`` and
  ``/etc/resolv.conf``, the verdicts and hints, the clock arithmetic), all
  pure functions;
- ``probes``: the I/O that gathers the facts, each step bounded by the
  ``--timeout``, and the runner.
"""

from __future__ import annotations

from tether.agent.doctor.judgements import (
    DATE_AGE,
    MAX_CLOCK_SKEW,
    HostsEntry,
    ResolvConf,
    Skew,
    Target,
    clock_skew,
    describe_certificate,
    describe_close,
    describe_resolution,
    describe_route,
    describe_welcome,
    find_in_hosts,
    judge_clock,
    judge_identity,
    judge_permissions,
    judge_probe_end,
    parse_hosts,
    parse_resolv_conf,
    resolution_error,
    route_failure,
    server_target,
    tcp_failure,
    tls_failure,
    upgrade_failure,
)
from tether.agent.doctor.probes import DEFAULT_TIMEOUT, iter_checks, run
from tether.agent.doctor.results import (
    CHECKS,
    REQUIRES,
    CheckResult,
    Status,
    blocking_failure,
    exit_code,
    render_json,
    render_result,
    render_summary,
)

__all__ = [
    "CHECKS",
    "DATE_AGE",
    "DEFAULT_TIMEOUT",
    "MAX_CLOCK_SKEW",
    "REQUIRES",
    "CheckResult",
    "HostsEntry",
    "ResolvConf",
    "Skew",
    "Status",
    "Target",
    "blocking_failure",
    "clock_skew",
    "describe_certificate",
    "describe_close",
    "describe_resolution",
    "describe_route",
    "describe_welcome",
    "exit_code",
    "find_in_hosts",
    "iter_checks",
    "judge_clock",
    "judge_identity",
    "judge_permissions",
    "judge_probe_end",
    "parse_hosts",
    "parse_resolv_conf",
    "render_json",
    "render_result",
    "render_summary",
    "resolution_error",
    "route_failure",
    "run",
    "server_target",
    "tcp_failure",
    "tls_failure",
    "upgrade_failure",
]
