# Process bookkeeping for the hack/ scripts that start several daemons and stop them in
# reverse order when their standard input closes (control-plane.sh, airflow.sh). Sourced; the
# caller defines `log` and `$dir` (each process logs to DIR/NAME.log).

# name -> pid, in start order; stopped in reverse order.
names=()
pids=()
stdin_pid=""

# True while the process runs; a zombie (exited, not yet reaped) counts as dead.
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# Stops a process started by `start` with its whole process group (daemons that fork
# helpers of their own, e.g. Airflow's scheduler and its Kubernetes job watcher, which ignores
# SIGTERM): SIGTERM, up to GRACE seconds (default 5) for the leader to exit, then SIGKILL for
# whatever is left of the group. Its exit status is left in $stopped_status.
stopped_status=0
stop_one() {
  local name=$1 pid=$2 grace=${3:-5} i
  if alive "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    alive "$pid" && log "$name (pid $pid) ignored SIGTERM for $grace s; killing it"
  fi
  kill -KILL -- "-$pid" 2>/dev/null || true
  stopped_status=0
  wait "$pid" 2>/dev/null || stopped_status=$?
}

# Should this script itself be killed outright (SIGKILL, no cleanup), the kernel still kills
# its children (SIGKILL: an API server whose etcd is gone hangs on SIGTERM): setpriv
# --pdeathsig, from util-linux.
pdeathsig=()
if command -v setpriv >/dev/null; then
  pdeathsig=(setpriv --pdeathsig KILL)
fi

# Starts a binary in the background with its output in DIR/NAME.log, in a session (and so
# a process group) of its own: `stop_one` stops what it forked too, and a Ctrl-C at the
# terminal reaches only this script, whose cleanup stops everything in order. setsid keeps
# the pid (a background job of a script is no group leader, so setsid need not fork).
start() {
  local name=$1
  shift
  "${pdeathsig[@]}" setsid "$@" </dev/null >>"$dir/$name.log" 2>&1 &
  names+=("$name")
  pids+=("$!")
}

# Fails (with the tail of the process's log) when any started process has exited.
check_alive() {
  local i status
  for ((i = 0; i < ${#pids[@]}; i++)); do
    if ! alive "${pids[i]}"; then
      status=0
      wait "${pids[i]}" 2>/dev/null || status=$?
      log "${names[i]} exited (status $status); last lines of $dir/${names[i]}.log:"
      tail -n 30 "$dir/${names[i]}.log" >&2 || true
      return 1
    fi
  done
}

# Blocks until standard input reaches end of file (the parent went away) or a started
# process exits (then fails with its log).
wait_for_stdin_eof() {
  # A child reads stdin to EOF, so the main shell only ever blocks in `wait`: a signal
  # interrupts `wait` at once and runs its trap safely. (Running the shutdown from a trap
  # inside `read -t` crashed bash 5.2 with a segmentation fault.)
  cat >/dev/null <&0 &
  stdin_pid=$!
  while :; do
    wait -n "$stdin_pid" "${pids[@]}" || true
    check_alive || exit 1
    if ! alive "$stdin_pid"; then
      break
    fi
  done
  log "stdin closed; stopping"
}

# Stops every started process, the last started first.
stop_all() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    stop_one "${names[i]}" "${pids[i]}"
  done
}

# Removes the state directory unless $1 is 1 (a WINFLOW_KEEP_* setting).
remove_state_dir() {
  if [ "${1:-}" = 1 ]; then
    log "kept state directory $dir"
  else
    rm -rf "$dir"
  fi
}

# Runs `cleanup` on exit, also after SIGINT, SIGTERM, or a reader that went away before the
# caller's one line (SIGPIPE).
exit_through_cleanup() {
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 141' PIPE
}
