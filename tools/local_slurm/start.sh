#!/usr/bin/env bash
# Start (or check) the project's single-node Slurm cluster for tests, as root, without systemd:
# munged, mariadbd + slurmdbd (accounting, for sacct), slurmctld, slurmd. Idempotent.
#   start.sh            install missing packages, (re)write /etc/slurm configs, start what is down
#   start.sh --status   exit 0 if the cluster is up with the current config, 1 otherwise (changes nothing)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
. "$HERE/common.sh"
[ "$(id -u)" = 0 ] || die "must run as root (sudo bash $0)"
STATUS_ONLY=0; [ "${1:-}" = --status ] && STATUS_ONLY=1
T0=$(now)
[ $STATUS_ONLY = 1 ] || take_lock

PKGS=(munge slurm-wlm slurmctld slurmd slurm-client slurmdbd mariadb-server-core)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ $STATUS_ONLY = 1 ] && exit 1
  log "installing ${missing[*]}"
  mkdir -p "$BASE"
  apt_install() { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -yq \
                    --no-install-recommends install "${missing[@]}" >> "$BASE/apt.log" 2>&1; }
  if ! apt_install; then
    log "apt-get install failed: apt-get update, then retry"
    apt-get -o DPkg::Lock::Timeout=600 -q update >> "$BASE/apt.log" 2>&1 || true
    apt_install || { tail -n 25 "$BASE/apt.log" >&2; die "apt-get install failed (log: $BASE/apt.log)"; }
  fi
  log "packages installed in $(since "$T0")s"
fi

# ------------------------------------------------------------------ configuration
NODE=$(hostname -s 2>/dev/null || echo localhost)
# A second node is a second slurmd on this host (Debian builds Slurm with multiple-slurmd support) named
# `localhost`: node names must resolve, since jobs use the first one as their rendezvous address.
case "$NODES" in 1) NODE_NAMES=("$NODE") ;; 2) NODE_NAMES=("$NODE" localhost) ;;
  *) die "MET2NET_SLURM_NODES=$NODES: 1 or 2 (the second node is named localhost)" ;; esac
[ "$NODE" = localhost ] && NODE_NAMES=("$NODE")
MEM=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
[ -n "$MEM" ] || MEM=$(awk '/MemTotal/{print int($2 / 1024)}' /proc/meminfo)
SPOOL=$BASE/slurmd   # batch scripts are executed from here: it must not be on a noexec mount
mkdir -p "$BASE"
findmnt -no OPTIONS --target "$BASE" 2>/dev/null | grep -qw noexec && SPOOL=/var/lib/slurm/met2net-slurmd
NEWCONF="$MARK
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=slurm
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$BASE/ctld
SlurmdSpoolDir=$SPOOL/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5
DependencyParameters=kill_invalid_depend
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=30
MinJobAge=60
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
JobAcctGatherType=jobacct_gather/linux
$(i=0; for n in "${NODE_NAMES[@]}"; do
  port=$SLURMD_PORT; [ $i = 1 ] && port=$SLURMD2_PORT; i=$((i + 1))
  echo "NodeName=$n NodeAddr=127.0.0.1 NodeHostname=$NODE Port=$port CPUs=$CPUS Boards=1 SocketsPerBoard=1 \
CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM State=UNKNOWN"
done)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
NEWDBD="$MARK
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=$NODE
DbdPort=$DBD_PORT
SlurmUser=slurm
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StorageLoc=slurm_acct_db"

same_conf=0
[ "$(cat "$CONF" 2>/dev/null)" = "$NEWCONF" ] && [ "$(cat "$DBDCONF" 2>/dev/null)" = "$NEWDBD" ] && same_conf=1
healthy() {
  [ $same_conf = 1 ] && pid_of "$DB/mysqld.pid" mariadbd >/dev/null && pid_of "$RUN/slurmdbd.pid" slurmdbd >/dev/null \
    && slurmds_up && ctld_up && node_ready
}
slurmds_up() { local n; for n in "${NODE_NAMES[@]}"; do pid_of "$RUN/slurmd-$n.pid" slurmd >/dev/null || return 1; done; }
if healthy; then
  [ $STATUS_ONLY = 1 ] || log "already running with this config (node(s) ${NODE_NAMES[*]}: $(sinfo -h -o %T)); nothing to do ($(since "$T0")s)"
  exit 0
fi
[ $STATUS_ONLY = 1 ] && exit 1

# stop what an earlier start left (stop.sh finds it through the old slurm.conf, even with another BASE)
if ours "$CONF" || pid_of "$RUN/slurmctld.pid" slurmctld >/dev/null || pid_of "$DB/mysqld.pid" mariadbd >/dev/null; then
  log "stopping the daemons of an earlier start"
  MET2NET_SLURM_KEEP_MUNGE=1 bash "$HERE/stop.sh"
fi
for p in "$CTLD_PORT" "$SLURMD_PORT" "$DBD_PORT" "$SLURMD2_PORT"; do
  port_open "$p" && die "port $p is used by another program (is another Slurm running? set MET2NET_SLURM_PORT)"
done
if [ $same_conf = 0 ]; then
  # new config: old controller state is invalid and job ids restart at 1, so the accounting DB
  # must go too (or sacct reports an old job under a new job's id)
  log "new configuration: wiping controller state and the accounting DB"
  rm -rf "${BASE:?}/ctld" "${SPOOL:?}" "${DB:?}"
  if [ -f "$CONF" ] && ! ours "$CONF" && [ ! -e "$CONF.orig" ]; then cp -p "$CONF" "$CONF.orig"; fi
fi
make_dirs() {
  mkdir -p "$RUN" "$LOG" "$BASE/ctld" "${NODE_NAMES[@]/#/$SPOOL/}" "$DB/data" /etc/slurm
  chmod 755 "$BASE" "$RUN"
  chown slurm:slurm "$BASE/ctld" "$LOG"
  chown -R slurm:slurm "$DB" && chmod 700 "$DB"
}
make_dirs
printf '%s\n' "$NEWCONF" > "$CONF.tmp" && chmod 644 "$CONF.tmp" && mv -f "$CONF.tmp" "$CONF"
printf '%s\n' "$NEWDBD" > "$DBDCONF.tmp" && chown slurm:slurm "$DBDCONF.tmp" && chmod 600 "$DBDCONF.tmp" \
  && mv -f "$DBDCONF.tmp" "$DBDCONF"

# ------------------------------------------------------------------ daemons
# every daemon starts with fd 9 (the start/stop lock) closed: a daemon holding it would block stop.sh forever
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
      || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- /usr/sbin/munged --force 9>&- || die "munged failed (see /var/log/munge/munged.log)"
  touch "$MUNGE_MARK"
  wait_for "$WAIT_S" munged /var/log/munge/munged.log munge_ok
fi

# private, throwaway DB: unix socket only, no grant tables. Returns 1 when mariadbd exits or times out.
start_db() {
  rm -f "$DB/mysqld.sock"
  setsid /usr/sbin/mariadbd --no-defaults --user=slurm --datadir="$DB/data" --socket="$DB/mysqld.sock" \
    --pid-file="$DB/mysqld.pid" --skip-networking --skip-grant-tables --log-error="$LOG/mariadb.err" \
    --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 9>&- &
  DB_PID=$!
  try_for "$WAIT_S" mariadbd "$LOG/mariadb.err" db_up_or_dead && [ -S "$DB/mysqld.sock" ] && return 0
  stop_pids "mariadbd:$(kill -0 "$DB_PID" 2>/dev/null && echo "$DB_PID")"
  return 1
}
# the socket is there, or mariadbd has exited (e.g. it refused a damaged data directory): stop polling
db_up_or_dead() { [ -S "$DB/mysqld.sock" ] || ! kill -0 "$DB_PID" 2>/dev/null; }
if ! pid_of "$DB/mysqld.pid" mariadbd >/dev/null && ! start_db; then
  # e.g. a machine image taken while mariadbd ran leaves a damaged InnoDB file. The DB holds only this test
  # cluster's job history, so start over: DB, controller state and spool together (job ids restart at 1).
  log "mariadbd did not start on $DB/data: wiping the accounting DB and the controller state, retrying once"
  rm -rf "${BASE:?}/ctld" "${SPOOL:?}" "${DB:?}"
  make_dirs
  start_db || die "mariadbd did not come up on a new, empty data directory either (log: $LOG/mariadb.err)"
fi
if ! pid_of "$RUN/slurmdbd.pid" slurmdbd >/dev/null; then
  MYSQL_UNIX_PORT=$DB/mysqld.sock /usr/sbin/slurmdbd 9>&- || { tail -n 25 "$LOG/slurmdbd.log" >&2; die "slurmdbd failed"; }
  wait_for "$WAIT_S" "slurmdbd (port $DBD_PORT)" "$LOG/slurmdbd.log" port_open "$DBD_PORT"
fi
log "accounting up ($(since "$T0")s)"
/usr/sbin/slurmctld -i 9>&- || { tail -n 25 "$LOG/slurmctld.log" >&2; die "slurmctld failed"; }
wait_for "$WAIT_S" slurmctld "$LOG/slurmctld.log" ctld_up
# jobs inherit slurmd's limits: give them what a systemd unit would
for n in "${NODE_NAMES[@]}"; do
  ( ulimit -n 131072 2>/dev/null; ulimit -l unlimited 2>/dev/null; exec /usr/sbin/slurmd -N "$n" 9>&- ) \
    || { tail -n 25 "$LOG/slurmd-$n.log" >&2; die "slurmd -N $n failed"; }
done
wait_for "$WAIT_S" "nodes ${NODE_NAMES[*]} idle" "$LOG/slurmd-$NODE.log" node_ready
log "cluster 'local' ready in $(since "$T0")s: node(s) ${NODE_NAMES[*]}, $CPUS CPUs each, partition debug; logs in $LOG"
sinfo
