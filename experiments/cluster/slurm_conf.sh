# Config files of the local cluster (sourced by local_slurm.sh, which sets STATE, ETC, MUNGE,
# SL and NODE). write_conf picks four free ports and writes:
#   etc/slurm.conf     one node (CPUs from nproc, memory from free), /proc process tracking, no
#                      task plugin, accounting through slurmdbd, a private munge socket
#   etc/slurmdbd.conf  mode 600, beside slurm.conf (slurmdbd looks for it there)
#   etc/ports          slurmctld, slurmd, slurmdbd, MariaDB
# and sets DB_PASS and MYSQL_PORT for the daemons that follow.
# shellcheck shell=bash

free_ports() {
  python3 -c 'import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))'
}

write_slurm_conf() {
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(free -m | awk '/^Mem:/ {print int($2 * 0.95)}')  # slurmd drains a node with less
  cat >"$ETC/slurm.conf" <<EOF
# Written by experiments/cluster/local_slurm.sh: one node, everything under $STATE
ClusterName=kvbench
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE/munge.socket.2
CredType=cred/munge
StateSaveLocation=$SL/ctld
SlurmdSpoolDir=$SL/d
SlurmctldPidFile=$SL/slurmctld.pid
SlurmdPidFile=$SL/slurmd.pid
SlurmctldLogFile=$SL/slurmctld.log
SlurmdLogFile=$SL/slurmd.log
# No cgroups here: processes tracked through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# A munge socket outside /run/munge must be named here too (for slurmdbd connections).
AccountingStoragePass=$MUNGE/munge.socket.2
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# submitit ignores SIGTERM (it waits for SIGUSR2 to checkpoint): kill a cancelled job soon.
KillWait=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

write_dbd_conf() {
  (
    umask 077
    cat >"$ETC/slurmdbd.conf" <<EOF
# Written by experiments/cluster/local_slurm.sh (mode 600: slurmdbd refuses anything wider)
AuthType=auth/munge
AuthInfo=socket=$MUNGE/munge.socket.2
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$SL/slurmdbd.pid
LogFile=$SL/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  )
  chmod 600 "$ETC/slurmdbd.conf"
}

write_conf() {
  mkdir -p "$ETC"
  read -r CTLD_PORT SLURMD_PORT DBD_PORT MYSQL_PORT < <(free_ports)
  echo "$CTLD_PORT $SLURMD_PORT $DBD_PORT $MYSQL_PORT" >"$ETC/ports"
  DB_PASS=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
  write_slurm_conf
  write_dbd_conf
}
