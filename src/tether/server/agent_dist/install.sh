#!/bin/sh
# tether agent installer, served by a tether server. Needs only a Python >= 3.9
# and curl or wget on the device: no package index, no pip, no internet.
#
#   curl -fsS SERVER/agent/install.sh | sh -s -- --activation-id ID --activation-code CODE
#
# With a server on tether's private CA (--tls auto), give the CA to both:
#   curl -fsS --cacert ca.pem SERVER/agent/install.sh | sh -s -- --ca ca.pem ...
#
# Options: --activation-id ID --activation-code CODE (needed to register)
#          --python PATH        interpreter to use (default: python3)
#          --prefix DIR         where the agent's virtual environment goes (/opt/tether-agent)
#          --state-dir DIR      identity and spool (/var/lib/tether-agent)
#          --run-as USER        user scripts run as (the agent itself runs as root)
#          --server URL         server to register with (default: the one that served this)
#          --no-service         do not install a systemd unit
#          --ca FILE            the server's CA (PEM): downloads are checked against it
#                               and the agent pins it
#          --insecure           register with a plain http:// server off this machine
# Running it again upgrades the agent in place and keeps the identity.
set -eu

SERVER='__SERVER_URL__'
VERSION='__AGENT_VERSION__'
PYTHON=python3
PREFIX=/opt/tether-agent
STATE_DIR=/var/lib/tether-agent
ACTIVATION_ID=
ACTIVATION_CODE=
RUN_AS=
SERVICE=yes
INSECURE=
CA=

die() { echo "tether install: $*" >&2; exit 1; }
need() { [ "$1" -ge 2 ] || die "$2 needs a value"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --activation-id) need $# "$1"; ACTIVATION_ID=$2; shift 2 ;;
        --activation-code) need $# "$1"; ACTIVATION_CODE=$2; shift 2 ;;
        --python) need $# "$1"; PYTHON=$2; shift 2 ;;
        --prefix) need $# "$1"; PREFIX=$2; shift 2 ;;
        --state-dir) need $# "$1"; STATE_DIR=$2; shift 2 ;;
        --run-as) need $# "$1"; RUN_AS=$2; shift 2 ;;
        --server) need $# "$1"; SERVER=$2; shift 2 ;;
        --no-service) SERVICE=no; shift ;;
        --insecure) INSECURE=--insecure; shift ;;
        --ca) need $# "$1"; CA=$2; shift 2 ;;
        *) die "unknown option $1 (see the comment at the top of this script)" ;;
    esac
done

# Paths end up in a shebang and a systemd unit: absolute, and without blanks.
case "$PREFIX" in /*) ;; *) PREFIX="$(pwd)/$PREFIX" ;; esac
case "$STATE_DIR" in /*) ;; *) STATE_DIR="$(pwd)/$STATE_DIR" ;; esac
case "$PREFIX$STATE_DIR$RUN_AS" in
    *[[:space:]]*) die "--prefix, --state-dir and --run-as must not contain blanks" ;;
esac
if [ -n "$CA" ]; then
    case "$CA" in /*) ;; *) CA="$(pwd)/$CA" ;; esac
    [ -r "$CA" ] || die "cannot read the CA file $CA"
    case "$SERVER" in https://*) ;; *) die "--ca is for an https:// server, not $SERVER" ;; esac
fi

# Without --ca, curl and wget check the server against the system's CAs.
if command -v curl >/dev/null 2>&1; then
    if [ -n "$CA" ]; then
        fetch() { curl -fsS --retry 5 --retry-connrefused --cacert "$CA" -o "$2" "$1"; }
    else
        fetch() { curl -fsS --retry 5 --retry-connrefused -o "$2" "$1"; }
    fi
elif command -v wget >/dev/null 2>&1; then
    if [ -n "$CA" ]; then
        fetch() { wget -q -t 5 --ca-certificate="$CA" -O "$2" "$1"; }
    else
        fetch() { wget -q -t 5 -O "$2" "$1"; }
    fi
else
    die "needs curl or wget"
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null \
    || die "needs Python 3.9 or newer (tried '$PYTHON'; pass --python PATH)"
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM
HINT=
case "$SERVER" in https://*) [ -n "$CA" ] || HINT=" (a server on its own CA? pass --ca FILE)" ;; esac
fetch "$SERVER/agent/wheels?python=$PYVER" "$WORK/wheels.txt" \
    || die "could not get the wheel list from $SERVER$HINT"
for wheel in $(cat "$WORK/wheels.txt"); do
    fetch "$SERVER/agent/wheels/$wheel" "$WORK/$wheel" || die "could not download $wheel"
done

# A fresh environment each time: upgrades replace the code, never the state.
VENV="$PREFIX/venv"
rm -rf "$VENV.new"
"$PYTHON" -m venv --without-pip "$VENV.new" || die "could not create a virtual environment"
"$VENV.new/bin/python" - "$VENV" "$WORK"/*.whl <<'PYTHON'
import sys, sysconfig, zipfile, configparser, os
venv, wheels = sys.argv[1], sys.argv[2:]
site = sysconfig.get_paths()["purelib"]
for wheel in wheels:
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
        for name in zf.namelist():
            if name.endswith(".dist-info/entry_points.txt"):
                eps = configparser.ConfigParser()
                eps.read_string(zf.read(name).decode())
                if eps.has_section("console_scripts"):
                    for script, target in eps.items("console_scripts"):
                        module, func = target.split(":")
                        path = os.path.join(sys.prefix, "bin", script)
                        with open(path, "w") as f:
                            f.write("#!%s/bin/python\nimport sys\nfrom %s import %s\n"
                                    "sys.exit(%s())\n" % (venv, module, func, func))
                        os.chmod(path, 0o755)
PYTHON
rm -rf "$VENV.old"
UPGRADE=no
if [ -d "$VENV" ]; then mv "$VENV" "$VENV.old"; UPGRADE=yes; fi
mv "$VENV.new" "$VENV"
rm -rf "$VENV.old"
AGENT="$VENV/bin/tether-agent"
echo "tether-agent $VERSION installed in $VENV (Python $PYVER)"

if "$AGENT" status --state-dir "$STATE_DIR" >"$WORK/status" 2>&1; then
    NODE=$(sed -n 's/^node \(mi-[0-9a-f]*\).*/\1/p' "$WORK/status")
    echo "already registered as $NODE; identity kept"
else
    [ -n "$ACTIVATION_ID" ] && [ -n "$ACTIVATION_CODE" ] \
        || die "not registered yet: pass --activation-id and --activation-code"
    set -- --server "$SERVER" --activation-id "$ACTIVATION_ID" --state-dir "$STATE_DIR"
    if [ -n "$INSECURE" ]; then set -- "$@" --insecure; fi
    if [ -n "$CA" ]; then set -- "$@" --ca "$CA"; fi
    TETHER_ACTIVATION_CODE="$ACTIVATION_CODE" "$AGENT" register "$@"
fi

RUN_ARGS="--state-dir $STATE_DIR"
if [ -n "$RUN_AS" ]; then RUN_ARGS="$RUN_ARGS --run-as $RUN_AS"; fi
if [ "$SERVICE" = yes ] && [ -d /run/systemd/system ]; then
    cat > /etc/systemd/system/tether-agent.service <<UNIT
[Unit]
Description=tether agent
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=$AGENT run $RUN_ARGS
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT
    systemctl daemon-reload
    systemctl enable tether-agent >/dev/null 2>&1
    systemctl restart tether-agent
    echo "systemd unit tether-agent enabled and (re)started"
else
    if [ "$UPGRADE" = yes ]; then
        echo "upgraded: restart a running agent to use the new version"
    fi
    echo "run the agent with: $AGENT run $RUN_ARGS"
fi
