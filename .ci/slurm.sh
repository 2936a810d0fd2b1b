#!/usr/bin/env bash
# A single-node SLURM on this host, for the SLURM end-to-end test.
#   .ci/slurm.sh start   installs (Debian slurm-wlm, munge) if needed, writes slurm.conf, starts the daemons
#   .ci/slurm.sh stop    stops the daemons by their PIDs and removes the configuration it wrote
# State lives in $KMAP_SLURM_DIR (default /tmp/kmap-slurm). The configuration goes to /etc/slurm, where the job's
# own `srun` finds it (the SLURM plugin clears SLURM_* variables, SLURM_CONF included, inside a job), and only for
# as long as the daemons run: a slurm.conf left there makes every later `scontrol` call wait 9 s for the stopped
# controller, and so every Snakemake start on the machine (the SLURM plugin asks `scontrol show config` as it
# loads). A configuration that was there before is put back. Accounting storage is off, so Snakemake's
# plugin must poll with squeue (profiles/slurm sets slurm-status-command: squeue; MinJobAge keeps
# finished jobs visible to squeue for 10 minutes). One node in two partitions, gpu (the default) and cpu, with a
# node feature (fakegpu80) so that kmap's routing (cluster.gpu_partition / cpu_partition / gpu_constraint) is real.
set -euo pipefail
state=${KMAP_SLURM_DIR:-/tmp/kmap-slurm}
conf=/etc/slurm/slurm.conf
gres=/etc/slurm/gres.conf
saved=$state/etc-before

# Whether a file in /etc/slurm was written by this script (by its marker, or by the cluster name and fake GPU of
# an earlier version, which wrote no marker).
ours() {
  grep -qs "^# kmap CI\|^ClusterName=kmapci\$\|File=$state/gpu0\$" "$1"
}

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p "$state"/{spool,ctld,log} /etc/slurm "$saved"
  # A site's own files (not ones this script wrote) are kept aside and put back by stop.
  for file in "$conf" "$gres" /etc/slurm/cgroup.conf; do
    if [ -f "$file" ] && ! ours "$file"; then mv "$file" "$saved/"; fi
  done
  : > "$state/gpu0"  # a fake GPU device: GRES accounting only, nothing opens it
  cat > "$conf" <<CONF
# kmap CI (.ci/slurm.sh): removed by .ci/slurm.sh stop
ClusterName=kmapci
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
SchedulerType=sched/backfill
MinJobAge=600
DefMemPerCPU=1000
ReturnToService=2
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:1 Feature=fakegpu80 State=UNKNOWN
PartitionName=gpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=cpu Nodes=$host MaxTime=INFINITE State=UP
CONF
  cat > "$gres" <<CONF
# kmap CI (.ci/slurm.sh): removed by .ci/slurm.sh stop
AutoDetect=off
NodeName=$host Name=gpu File=$state/gpu0
CONF
}

# Removes the files this script wrote and puts back what was there before.
remove_conf() {
  for file in "$conf" "$gres"; do
    if ours "$file"; then rm -f "$file"; fi
  done
  if [ -d "$saved" ]; then
    for file in "$saved"/*; do [ -e "$file" ] && mv "$file" /etc/slurm/; done
    rmdir "$saved" 2>/dev/null || true
  fi
}

start() {
  install
  write_conf
  mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1k count=1 2>/dev/null; }
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  munged --force --pid-file="$state/munged.pid" 2>/dev/null || munged --force
  [ -f "$state/munged.pid" ] || pgrep -n munged > "$state/munged.pid"
  slurmctld
  slurmd
  for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
      echo "slurm: node idle"; return 0
    fi
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "slurm: node did not become idle" >&2
  sinfo -N -l >&2 || true
  tail -20 "$state"/log/*.log >&2 || true
  return 1
}

stop() {
  for daemon in slurmd slurmctld munged; do
    pidfile="$state/$daemon.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    rm -f "$pidfile"
  done
  remove_conf
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
