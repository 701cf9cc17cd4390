#!/usr/bin/env bash
# HF-GAN deployed on real processes on this machine: one Flower SuperLink and one SuperNode per
# hospital, TLS on every connection (a throw-away CA and server certificate made here) and
# SuperNode authentication (each SuperNode's key registered with the SuperLink before it may join).
# Each SuperNode reads only its own hospital's file. Everything is stopped and deleted on exit.
#
#   scripts/flower_local.sh OUT [key=value ...]     e.g.  scripts/flower_local.sh results/runs/flower-local \
#                                                          dataset=pneumoniamnist clients=3 rounds=20 epsilon=10
# key=value: TrainConfig fields with dashes (as in [tool.flwr.app.config] of pyproject.toml).
# Env: PYTHON (default .venv/bin/python), TIMEOUT seconds for the whole run (default 1800), KEEP=1 keeps the
# work folder (certificates, keys, logs) for a look.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
if [ $# -lt 1 ]; then
  echo "usage: scripts/flower_local.sh OUT [key=value ...]   (e.g. dataset=pneumoniamnist clients=3 rounds=20)" >&2
  exit 2
fi
out=$1; shift
case "$out" in /*) ;; *) out="$repo/$out" ;; esac
if [ -e "$out/config.json" ]; then
  echo "error: $out already holds a run; choose another OUT" >&2
  exit 2
fi
PYTHON=${PYTHON:-$repo/.venv/bin/python}
bin=$(dirname "$PYTHON")
timeout_s=${TIMEOUT:-1800}
work=$(mktemp -d "${TMPDIR:-/tmp}/hfgan-flower.XXXXXX")
export FLWR_HOME="$work/flwr" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PATH="$bin:$PATH"  # the SuperLink starts flower-superexec from PATH
pids=()  # each daemon leads its own process group (setsid), with the app processes it starts
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do  # up to 10 s for everything to stop gracefully
    alive=0
    for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM

# Settings (pyproject's [tool.flwr.app.config] with key=value overrides), each hospital's own file (the
# in-process run's partition) and its SuperNode's node config, the run config for flwr run
mkdir -p "$work/certs" "$work/keys" "$work/logs" "$FLWR_HOME"
plan=$("$PYTHON" -m hfgan_core.flower.deploy "$out" "$work" "$@") || exit 2
field() { "$PYTHON" -c "import json,sys; v=json.loads(sys.argv[1])[sys.argv[2]]; print('\n'.join(v) if isinstance(v, list) else v)" "$plan" "$1"; }
clients=$(field clients)
mapfile -t node_configs < <(field node_configs)
run_config=$(field run_config)

# (1) TLS: a CA, and a certificate for the SuperLink at 127.0.0.1 / localhost signed by it
(
  cd "$work/certs"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=hfgan-local-ca" -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
  printf "subjectAltName=IP:127.0.0.1,DNS:localhost\n" > san.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext \
    -out server.pem 2>/dev/null
)
# (2) one authentication key pair per hospital's SuperNode
for i in $(seq 0 $((clients - 1))); do
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "hospital$i" -f "$work/keys/hospital$i"
done
free_port() { "$PYTHON" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
link_port=$(free_port)

# (4) the SuperLink: TLS, SuperNode authentication, no dependency installation at run time
setsid "$bin/flower-superlink" --ssl-ca-certfile "$work/certs/ca.crt" --ssl-certfile "$work/certs/server.pem" \
  --ssl-keyfile "$work/certs/server.key" --enable-supernode-auth --disable-runtime-dependency-installation \
  --host 127.0.0.1 --port "$link_port" --database ":flwr-in-memory:" > "$work/logs/superlink.log" 2>&1 &
pids+=($!)
cat > "$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "hfgan-local"

[superlink.hfgan-local]
address = "127.0.0.1:$link_port"
root-certificates = "$work/certs/ca.crt"
EOF
for _ in $(seq 1 100); do
  "$bin/flwr" supernode list hfgan-local > /dev/null 2>&1 && break
  sleep 0.3
done

# (5) register each SuperNode's public key, then start it with its own file and key
for i in $(seq 0 $((clients - 1))); do
  "$bin/flwr" supernode register "$work/keys/hospital$i.pub" hfgan-local > "$work/logs/register$i.log" 2>&1
  setsid "$bin/flower-supernode" --superlink "127.0.0.1:$link_port" --root-certificates "$work/certs/ca.crt" \
    --auth-supernode-private-key "$work/keys/hospital$i" --node-config "${node_configs[$i]}" \
    --port "$(free_port)" > "$work/logs/supernode$i.log" 2>&1 &
  pids+=($!)
done

# (6) the run: the ServerApp and ClientApps of this repository, settings as one run config
echo "SuperLink on 127.0.0.1:$link_port (TLS, SuperNode auth), $clients SuperNodes; run folder $out"
"$bin/flwr" run . hfgan-local --run-config "$run_config" > "$work/logs/run.log" 2>&1 || {
  echo "error: flwr run failed:" >&2; tail -5 "$work/logs/run.log" >&2; exit 1; }
for _ in $(seq 1 "$timeout_s"); do
  [ -e "$out/privacy.json" ] && break
  sleep 1
done
if [ ! -e "$out/privacy.json" ]; then
  echo "error: no privacy.json in $out after ${timeout_s} s; logs: KEEP=1 scripts/flower_local.sh ..." >&2
  tail -3 "$work/logs/superlink.log" >&2
  exit 1
fi
echo "done: $(grep -c '' "$out/metrics.jsonl") rounds on Flower (deployment); outputs in $out"
