#!/usr/bin/env bash
# A one-node SLURM cluster for trying and testing `hydra/launcher=slurm` sweeps: munged,
# MariaDB, slurmdbd (so that `sacct` works), slurmctld and slurmd, from Debian's packages, as
# root, without systemd or cgroups, all under one private state directory.
#
#   local_slurm.sh start    install missing packages, write the configs, start every daemon
#   local_slurm.sh stop     cancel every job, stop every daemon by its PID file, check none lives
#   local_slurm.sh status   each daemon's state; exit 0 when all five run
#   local_slurm.sh env      the line to eval before sbatch/squeue/sacct/kvbench use the cluster
#   local_slurm.sh conf     write etc/ only (no root, nothing started)
#
# State directory $KVBENCH_CLUSTER_DIR (default: .cluster/ in the repository root):
#   etc/slurm.conf, etc/slurmdbd.conf (mode 600: slurmdbd reads it beside $SLURM_CONF), ports
#   munge/   munge.key, munge.socket.2 (directory mode 755), munged.pid, munged.log
#   mysql/   data/, mysqld.sock, mysqld.pid, mysqld.log
#   slurm/   ctld/ (StateSaveLocation), d/ (SlurmdSpoolDir), <daemon>.pid, <daemon>.log
# Invariants: every daemon writes its PID file there and runs with KVBENCH_CLUSTER_DAEMON=<state
# dir> in its environment (slurmstepd inherits it), so `stop` finds each one and anything
# left over; ports are free ones picked at start, so the cluster never takes a real cluster's
# ports, and nothing outside the state directory is written except by apt-get.
set -euo pipefail
unset KVBENCH_CLUSTER_DAEMON  # only the daemons started below carry the marker

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=$(realpath -m "${KVBENCH_CLUSTER_DIR:-$REPO/.cluster}")
# A Unix socket path holds at most 107 bytes.
((${#STATE} <= 80)) || { echo "local_slurm: error: $STATE: path too long for sockets;" \
  "set KVBENCH_CLUSTER_DIR to a shorter one" >&2; exit 2; }
mkdir -p "$STATE"
ETC=$STATE/etc MUNGE=$STATE/munge DB=$STATE/mysql SL=$STATE/slurm
export SLURM_CONF=$ETC/slurm.conf
PACKAGES=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)
POLICY=/usr/sbin/policy-rc.d  # invoke-rc.d asks it whether a package may start its service
DAEMONS=(slurmd slurmctld slurmdbd mysqld munged)  # stop order; start is the reverse
NODE=$(hostname -s)
# shellcheck source-path=SCRIPTDIR source=slurm_conf.sh
source "$REPO/experiments/cluster/slurm_conf.sh"
# InnoDB kept small and unsynced: a throwaway accounting database, not a durable one.
MYSQL_OPTS=(--no-defaults --datadir="$DB/data" --user=root --skip-name-resolve --skip-log-bin
  --innodb-log-file-size=4M --innodb-buffer-pool-size=16M --innodb-flush-method=nosync
  --innodb-data-file-path=ibdata1:4M:autoextend)

say() { echo "local_slurm: $*" >&2; }
die() { say "error: $*"; exit 2; }

pid_file() {
  case $1 in
    munged) echo "$MUNGE/munged.pid" ;;
    mysqld) echo "$DB/mysqld.pid" ;;
    *) echo "$SL/$1.pid" ;;
  esac
}

# A PID counts as alive unless gone or a zombie: a stopped daemon whose parent never reaps it
# stays in the process table (and passes `kill -0`) as state Z.
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != [ZX] ]]
}

# The PID of a daemon that is ours and alive, from its PID file; fails otherwise.
daemon_pid() {
  local pid
  pid=$(cat "$(pid_file "$1")" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" && ours "$pid" && echo "$pid"
}

ours() { { tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null | grep -qxF "KVBENCH_CLUSTER_DAEMON=$STATE"; }

# Wait up to $1 seconds for a command to succeed; on timeout show the log $2 and fail.
wait_for() {
  local secs=$1 log=$2 what=$3 t=0
  shift 3
  until "$@" >/dev/null 2>&1; do
    if ((t >= secs * 5)); then
      say "$what not ready after ${secs}s; last lines of $log:"
      tail -n 20 "$log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.2
    t=$((t + 1))
  done
}

need_root() { [[ $EUID -eq 0 ]] || die "start, stop and status need root (the daemons run as root)"; }

missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

# apt-get install, with services kept from starting system-wide while it runs (a temporary
# policy-rc.d, as Debian's container images ship one) unless the machine already has a policy.
install_packages() {
  local missing added=""
  mapfile -t missing < <(missing_packages)
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || die "missing packages: ${missing[*]} (and no apt-get)"
  say "installing ${missing[*]}"
  local t0=$SECONDS
  if [[ ! -e $POLICY ]]; then
    trap 'rm -f "$POLICY"' EXIT
    trap 'exit 130' INT TERM
    printf '#!/bin/sh\nexit 101\n' >"$POLICY" && chmod 755 "$POLICY" && added=1
  fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${missing[@]}"; } >"$STATE/apt.log" 2>&1 || rc=$?
  if [[ -n $added ]]; then
    rm -f "$POLICY"
    trap - EXIT INT TERM
  fi
  ((rc == 0)) || { tail -n 20 "$STATE/apt.log" >&2; die "apt-get install failed"; }
  say "installed in $((SECONDS - t0)) s"
}

# Run a daemon with the marker in its environment, detached from this shell's session.
launch() { KVBENCH_CLUSTER_DAEMON=$STATE setsid "$@" </dev/null; }

start_munge() {
  mkdir -p "$MUNGE" && chmod 755 "$MUNGE"  # clients of any user must reach the socket
  (umask 077 && head -c 1024 /dev/urandom >"$MUNGE/munge.key")
  launch munged --socket="$MUNGE/munge.socket.2" --key-file="$MUNGE/munge.key" \
    --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed"
  wait_for 20 "$MUNGE/munged.log" munged \
    sh -c "munge -n -S '$MUNGE/munge.socket.2' | unmunge -S '$MUNGE/munge.socket.2'"
}

start_mysql() {
  mkdir -p "$DB"
  mariadb-install-db "${MYSQL_OPTS[@]}" --auth-root-authentication-method=socket \
    --skip-test-db >"$DB/install.log" 2>&1 || { tail -n 20 "$DB/install.log" >&2; return 1; }
  # mariadbd stays in the foreground: run it in the background, with no shell left waiting.
  (exec env KVBENCH_CLUSTER_DAEMON="$STATE" setsid mariadbd "${MYSQL_OPTS[@]}" \
    --socket="$DB/mysqld.sock" --pid-file="$DB/mysqld.pid" --port="$MYSQL_PORT" \
    --bind-address=127.0.0.1 --log-error="$DB/mysqld.log" </dev/null >/dev/null 2>&1) &
  wait_for 30 "$DB/mysqld.log" MariaDB mariadb-admin --no-defaults --socket="$DB/mysqld.sock" ping
  mariadb --no-defaults --socket="$DB/mysqld.sock" -u root -e \
    "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

cluster_registered() { sacctmgr -n -P list cluster format=cluster | grep -qx kvbench; }
node_idle() { [[ $(sinfo -h -n "$NODE" -o %T) == idle ]]; }

start_slurm() {
  mkdir -p "$SL/ctld" "$SL/d"
  launch slurmdbd
  wait_for 30 "$SL/slurmdbd.log" slurmdbd sacctmgr -n list cluster
  launch slurmctld
  wait_for 30 "$SL/slurmctld.log" slurmctld scontrol ping
  wait_for 30 "$SL/slurmctld.log" "cluster registration" cluster_registered
  launch slurmd -N "$NODE"
  wait_for 30 "$SL/slurmd.log" "node $NODE" node_idle
}

all_up() {
  local d
  for d in "${DAEMONS[@]}"; do daemon_pid "$d" >/dev/null || return 1; done
}

cmd_start() {
  need_root
  if all_up; then
    say "already running; $(cmd_env)"
    return 0
  fi
  cmd_stop >/dev/null 2>&1 || true  # leftovers of a half-started cluster
  install_packages
  rm -rf "$ETC" "$MUNGE" "$DB" "$SL"
  write_conf
  local t0=$SECONDS
  if ! { start_munge && start_mysql && start_slurm; }; then
    cmd_stop || true
    die "start failed"
  fi
  say "up in $((SECONDS - t0)) s: node $NODE, $(nproc) CPUs; $(cmd_env)"
}

# Cancel every job and wait for the queue to drain, so no job step outlives slurmd.
cancel_jobs() {
  daemon_pid slurmctld >/dev/null || return 0
  local ids
  mapfile -t ids < <(squeue -h -o %A 2>/dev/null)
  ((${#ids[@]})) || return 0
  say "cancelling jobs: ${ids[*]}"
  scancel "${ids[@]}" || true
  wait_for 30 /dev/null "job cancellation" test -z "$(squeue -h -o %A 2>/dev/null)" || true
}

stop_daemon() {
  local name=$1 pid t=0
  pid=$(daemon_pid "$name") || { rm -f "$(pid_file "$name")"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  while alive "$pid" && ((t < 100)); do sleep 0.1; t=$((t + 1)); done
  if alive "$pid"; then
    say "$name ($pid) ignored SIGTERM for 10 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$(pid_file "$name")"
}

# Every live process carrying this cluster's marker: daemons, and slurmstepd left by a job.
leftovers() {
  local p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ $p != "$$" ]] && alive "$p" && ours "$p" && echo "$p"
  done
  return 0
}

cmd_stop() {
  local d left
  cancel_jobs
  for d in "${DAEMONS[@]}"; do stop_daemon "$d"; done
  mapfile -t left < <(leftovers)
  if ((${#left[@]})); then
    say "killing leftover processes: ${left[*]}"
    kill -KILL "${left[@]}" 2>/dev/null || true
    sleep 0.5
    mapfile -t left < <(leftovers)
  fi
  ((${#left[@]} == 0)) || die "still running after stop: ${left[*]}"
  say "stopped (no process of $STATE alive)"
}

cmd_status() {
  local d pid rc=0
  for d in $(printf '%s\n' "${DAEMONS[@]}" | tac); do
    if pid=$(daemon_pid "$d"); then echo "$d running (pid $pid)"; else echo "$d stopped" && rc=1; fi
  done
  ((rc == 0)) && sinfo
  return $rc
}

cmd_env() { echo "export SLURM_CONF=$SLURM_CONF"; }

case ${1:-} in
  start) cmd_start ;;
  stop) need_root && cmd_stop ;;
  status) need_root && cmd_status ;;
  env) cmd_env ;;
  conf) write_conf && echo "$ETC" ;;
  *) die "usage: $0 start|stop|status|env|conf  (state: $STATE)" ;;
esac
