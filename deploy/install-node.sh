#!/usr/bin/env bash
# Installs the edgeplane node agent on an edge node as a systemd service, from a built checkout
# (scripts/setup has run in it): the checkout is copied to /opt/edgeplane, the agent's settings
# are written to /etc/edgeplane/agent.env (mode 0600: it holds the join token), the unit to
# /etc/systemd/system/edgeplane-agent.service, and the service is enabled and started.
#
# Usage (as root; values as `edgeplane-agent --help` describes them):
#   deploy/install-node.sh --controller HOST:PORT[,HOST:PORT] --nats URL[,URL] \
#     --join-token TOKEN --ca-fingerprint sha256:HEX --trusted-key KEY --fleet-id ID \
#     --interface eth0=uplink [--interface veth1=workload] [--node-name NAME] [--labels K=V,...] \
#     [--root DIR] [--no-start] [--force]
# --root DIR installs under DIR instead of / and starts nothing (an image build, or a test);
# --no-start installs without starting; --force replaces an existing agent.env.
# Exit codes: 0 installed, 1 a check failed (nothing changed), 2 usage error.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd -P)
root=/ start=1 force=0
declare -A env=()
interfaces=()
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
fail() { echo "install-node: $*" >&2; exit 1; }
need() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "install-node: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case $1 in
    --controller) need "$@"; env[EDGEPLANE_CONTROLLER]=$2; shift 2 ;;
    --nats) need "$@"; env[EDGEPLANE_NATS_URL]=$2; shift 2 ;;
    --join-token) need "$@"; env[EDGEPLANE_JOIN_TOKEN]=$2; shift 2 ;;
    --ca-fingerprint) need "$@"; env[EDGEPLANE_CA_FINGERPRINT]=$2; shift 2 ;;
    --trusted-key) need "$@"; env[EDGEPLANE_TRUSTED_KEYS]=$2; shift 2 ;;
    --fleet-id) need "$@"; env[EDGEPLANE_FLEET_ID]=$2; shift 2 ;;
    --node-name) need "$@"; env[EDGEPLANE_NODE_NAME]=$2; shift 2 ;;
    --labels) need "$@"; env[EDGEPLANE_NODE_LABELS]=$2; shift 2 ;;
    --interface) need "$@"; interfaces+=("$2"); shift 2 ;;
    --root) need "$@"; root=$2; start=0; shift 2 ;;
    --no-start) start=0; shift ;;
    --force) force=1; shift ;;
    -h|--help) usage ;;
    *) echo "install-node: unknown argument $1" >&2; usage ;;
  esac
done
for k in EDGEPLANE_CONTROLLER EDGEPLANE_NATS_URL EDGEPLANE_JOIN_TOKEN EDGEPLANE_CA_FINGERPRINT EDGEPLANE_TRUSTED_KEYS EDGEPLANE_FLEET_ID; do
  [ -n "${env[$k]:-}" ] || { echo "install-node: missing $(echo "${k#EDGEPLANE_}" | tr 'A-Z_' 'a-z-' | sed 's/^nats-url$/nats/; s/^trusted-keys$/trusted-key/') (see --help)" >&2; exit 2; }
done
[ ${#interfaces[@]} -gt 0 ] || { echo "install-node: give at least one --interface NAME=uplink|workload" >&2; exit 2; }
for i in "${interfaces[@]}"; do
  [[ $i =~ ^[A-Za-z0-9_.@-]{1,15}=(uplink|workload)$ ]] || { echo "install-node: --interface $i: expected NAME=uplink or NAME=workload" >&2; exit 2; }
done
env[EDGEPLANE_INTERFACES]=$(IFS=,; echo "${interfaces[*]}")
# systemd's EnvironmentFile is line-based and gives quotes and backslashes a meaning: a value must
# be one line of printable characters without them.
for k in "${!env[@]}"; do
  v=${env[$k]}
  [[ $v =~ ^[[:print:]]+$ ]] && [[ ! $v =~ [\"\'\\] ]] && [ ${#v} -le 4096 ] || { echo "install-node: the value for $k must be one line of printable characters without quotes or backslashes (at most 4096)" >&2; exit 2; }
done

if [ "$root" = / ] && [ "$(id -u)" -ne 0 ]; then fail "run as root (it installs a system service)"; fi
[ -f "$here/services/node-agent/dist/bundle/agent.mjs" ] && [ -f "$here/bpf/build/edgeplane.bpf.o" ] || fail "$here is not built: run scripts/setup there first"
command -v node >/dev/null && [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] || fail "Node.js 20 or newer is required on the node"
if [ "$root" = / ]; then
  # The datapath's needs (bpf/README.md): BTF and kernel 6.6 or newer (bpf_map_sum_elem_count).
  [ -r /sys/kernel/btf/vmlinux ] || fail "the kernel has no BTF (/sys/kernel/btf/vmlinux)"
  kv=$(uname -r | sed 's/[^0-9.].*//'); major=${kv%%.*}; minor=${kv#*.}; minor=${minor%%.*}
  [ "$major" -gt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -ge 6 ]; } || fail "kernel $(uname -r): 6.6 or newer is required"
fi

dest=${root%/}/opt/edgeplane
etc=${root%/}/etc/edgeplane
unit=${root%/}/etc/systemd/system/edgeplane-agent.service
if [ -e "$etc/agent.env" ] && [ $force -eq 0 ]; then fail "$etc/agent.env exists: give --force to replace it"; fi
mkdir -p "$dest" "$etc" "$(dirname "$unit")"
# The code, with its node_modules; not the repository's history or test output.
tar -C "$here" --exclude=./.git --exclude=./test-results --exclude='./bench/results*' -cf - . | tar -C "$dest" -xf -
umask 077
{
  echo "# edgeplane-agent settings (deploy/install-node.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ)); edgeplane-agent --help"
  for k in $(printf '%s\n' "${!env[@]}" | sort); do printf '%s=%s\n' "$k" "${env[$k]}"; done
} > "$etc/agent.env.tmp"
chmod 0600 "$etc/agent.env.tmp"
mv "$etc/agent.env.tmp" "$etc/agent.env"
install -m 0644 "$here/deploy/systemd/edgeplane-agent.service" "$unit"
echo "install-node: installed $dest, $etc/agent.env and $unit"
if [ $start -eq 1 ]; then
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now edgeplane-agent.service
    echo "install-node: edgeplane-agent enabled and started (journalctl -u edgeplane-agent -f)"
  else
    echo "install-node: systemd is not running here: start it with systemctl enable --now edgeplane-agent once it is"
  fi
fi
