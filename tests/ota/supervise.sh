#!/usr/bin/env bash
# A stand-in for systemd running the agent's service (docs/updates.md, the unit in
# agent/src/install/files.rs), for the update e2e's devices in network namespaces:
#   supervise.sh COMMAND [ARGS...]
# runs COMMAND (`baton-agent launch ...`) and, whatever way it ends, restarts it 1 s later
# (Restart=always, RestartSec=1), until the supervisor itself gets SIGTERM/SIGINT, which it
# passes on (systemctl stop). After each exit it runs $BATON_SUPERVISE_POST, if set, through
# bash, with the variables systemd gives ExecStopPost=: EXIT_CODE (exited|killed),
# EXIT_STATUS (the exit code, or the signal's name) and SERVICE_RESULT (success|exit-code|
# signal). $BATON_SUPERVISE_PIDFILE, if set, holds the running command's pid (what a test
# kills -9 as a crash would). Each start and exit is logged on stdout, with the agent's log.
set -u
stopping=0
child=""
trap 'stopping=1; [ -z "$child" ] || kill -TERM "$child" 2>/dev/null' TERM INT
starts=0
while :; do
  starts=$((starts + 1))
  echo "supervise: start $starts: $*"
  "$@" &
  child=$!
  # Written whole (rename), never truncated in place: a test reading it between the
  # truncation and the write read an empty pid (seen in a CI rehearsal).
  if [ -n "${BATON_SUPERVISE_PIDFILE:-}" ]; then
    echo "$child" >"$BATON_SUPERVISE_PIDFILE.tmp" && mv -f "$BATON_SUPERVISE_PIDFILE.tmp" "$BATON_SUPERVISE_PIDFILE"
  fi
  # A trapped signal interrupts `wait` while the child still runs: wait again until it ended;
  # bash keeps the ended child's status for the last `wait`.
  while kill -0 "$child" 2>/dev/null; do wait "$child"; done
  wait "$child"
  rc=$?
  child=""
  if [ "$rc" -gt 128 ]; then
    # As systemd reports a death by signal (a child exiting 129..255 by itself looks the
    # same to a shell; the agent never does).
    EXIT_CODE=killed
    EXIT_STATUS=$(kill -l "$((rc - 128))" 2>/dev/null || echo "$((rc - 128))")
    SERVICE_RESULT=signal
  elif [ "$rc" = 0 ]; then
    EXIT_CODE=exited EXIT_STATUS=0 SERVICE_RESULT=success
  else
    EXIT_CODE=exited EXIT_STATUS=$rc SERVICE_RESULT=exit-code
  fi
  echo "supervise: exit $starts: EXIT_CODE=$EXIT_CODE EXIT_STATUS=$EXIT_STATUS SERVICE_RESULT=$SERVICE_RESULT"
  if [ -n "${BATON_SUPERVISE_POST:-}" ]; then
    EXIT_CODE=$EXIT_CODE EXIT_STATUS=$EXIT_STATUS SERVICE_RESULT=$SERVICE_RESULT \
      bash -c "$BATON_SUPERVISE_POST" || echo "supervise: ExecStopPost failed ($?)"
  fi
  [ "$stopping" = 0 ] || exit 0
  sleep 1 &
  wait $! 2>/dev/null
  [ "$stopping" = 0 ] || exit 0
done
