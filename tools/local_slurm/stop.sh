#!/usr/bin/env bash
# Stop the cluster started by start.sh: cancel all jobs, stop slurmd, slurmctld, slurmdbd, mariadbd
# (and munged if start.sh started it).  --purge also deletes state, logs, DB and the generated configs.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
. "$HERE/common.sh"
[ "$(id -u)" = 0 ] || die "must run as root (sudo bash $0)"
T0=$(now)
take_lock
if ours "$CONF"; then   # act on the directories the running cluster was started with
  ssl=$(sed -n 's/^StateSaveLocation=//p' "$CONF")
  [ -n "$ssl" ] && BASE=${ssl%/ctld} && RUN=$BASE/run DB=$BASE/db
  if ctld_up; then
    mapfile -t jobs < <(squeue -h -o %i 2>/dev/null)
    if [ ${#jobs[@]} -gt 0 ]; then
      log "cancelling jobs ${jobs[*]}"
      scancel "${jobs[@]}" 2>/dev/null
      for _ in $(seq 75); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
    fi
  fi
fi
daemons=("slurmctld:$(pid_of "$RUN/slurmctld.pid" slurmctld)")
for f in "$RUN"/slurmd*.pid; do [ -e "$f" ] && daemons+=("slurmd:$(pid_of "$f" slurmd)"); done
stop_pids "${daemons[@]}"
# job step daemons left behind if slurmd had to be killed
for d in /proc/[0-9]*; do
  [ "$(cat "$d/comm" 2>/dev/null)" = slurmstepd ] && stop_pids "slurmstepd:${d#/proc/}"
done
# slurmdbd flushes to the DB: stop it before mariadbd
stop_pids "slurmdbd:$(pid_of "$RUN/slurmdbd.pid" slurmdbd)"
last=("mariadbd:$(pid_of "$DB/mysqld.pid" mariadbd)")
if [ "${MET2NET_SLURM_KEEP_MUNGE:-0}" != 1 ] && [ -e "$MUNGE_MARK" ]; then
  last+=("munged:$(pid_of /run/munge/munged.pid munged)")
  rm -f "$MUNGE_MARK"
fi
stop_pids "${last[@]}"
if [ "${1:-}" = --purge ]; then
  spool=$(ours "$CONF" && sed -n 's/^SlurmdSpoolDir=//p' "$CONF"); spool=${spool%/%n}
  rm -rf "${BASE:?}" ${spool:+"$spool"}
  ours "$CONF" && rm -f "$CONF" && { [ ! -e "$CONF.orig" ] || mv -f "$CONF.orig" "$CONF"; }
  ours "$DBDCONF" && rm -f "$DBDCONF"
  log "purged $BASE and the generated configs"
fi
log "stopped in $(since "$T0")s"
