#!/usr/bin/env bash
# Cloud TPU VM launcher for jvision: thin wrappers over `gcloud compute tpus`.
#
#   launch/tpu_vm.sh SUBCOMMAND [OPTIONS] [-- JVISION_ARGS...]
#
# Subcommands: create, setup, run, logs, kill, delete (`launch/tpu_vm.sh SUBCOMMAND --help`).
# Every option also reads an environment variable; an option on the command line wins.
# Exit status: 0 done, 1 a gcloud call or a worker failed, 2 bad usage, 75 jvision was
# preempted (it saved a checkpoint; rerunning the same `run` resumes it).
set -euo pipefail

readonly PROG=tpu_vm.sh
readonly EX_USAGE=2
readonly EX_PREEMPTED=75 # jvision's exit status after a SIGTERM and a saved checkpoint.
# Where `setup` puts the code and the venv on every worker. The venv lives outside the code so
# that re-copying the code keeps it. The tilde is meant literally: the worker's shell expands it.
# shellcheck disable=SC2088
readonly REMOTE_DIR='~/jvision' REMOTE_VENV='~/jvision_venv'

# Settings: environment first, then options override them (parse_args).
project=${TPU_PROJECT:-}
zone=${TPU_ZONE:-}
name=${TPU_NAME:-}
queued_resource=${TPU_QUEUED_RESOURCE:-}
accelerator_type=${TPU_ACCELERATOR_TYPE:-}
runtime_version=${TPU_RUNTIME_VERSION:-}
provisioning=${TPU_PROVISIONING:-on-demand}
poll_seconds=${TPU_POLL_SECONDS:-30}
create_timeout=${TPU_CREATE_TIMEOUT:-3600}
source_dir=${TPU_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
remote_python=${TPU_PYTHON:-python3}
workers=${TPU_WORKERS:-}
log_dir=${TPU_LOG_DIR:-}
config=${JVISION_CONFIG:-}
workdir=${JVISION_WORKDIR:-}
lines=20
follow=0
show_help=0
subcommand=
jvision_args=()

usage() {
  case ${1:-} in
    create)
      cat <<'EOF'
Usage: tpu_vm.sh create [SETTINGS] --accelerator-type=T --runtime-version=V
                        [--provisioning=on-demand|spot|reserved] [--timeout=SECONDS]

Requests the TPU as a queued resource and waits until it is ACTIVE, polling its state every
TPU_POLL_SECONDS (default 30) for at most --timeout seconds (TPU_CREATE_TIMEOUT, default 3600).
Fails on the states FAILED and SUSPENDED.
  --accelerator-type=T   TPU_ACCELERATOR_TYPE, e.g. v4-32, v5litepod-16, v6e-16
  --runtime-version=V    TPU_RUNTIME_VERSION, e.g. tpu-ubuntu2204-base, v2-alpha-tpuv6e
  --provisioning=P       TPU_PROVISIONING: on-demand (default), spot or reserved
EOF
      ;;
    setup)
      cat <<'EOF'
Usage: tpu_vm.sh setup [SETTINGS] [--source=DIR] [--python=PYTHON]

Copies the code to ~/jvision on every worker (replacing an earlier copy) and installs it with
jax[tpu] into the venv ~/jvision_venv, created on first use. Safe to rerun after code changes.
  --source=DIR       TPU_SOURCE_DIR: the checkout to copy (default: this repository); in a git
                     checkout only tracked and unignored files are copied (no .venv, workdirs)
  --python=PYTHON    TPU_PYTHON: the workers' interpreter for the venv (default python3,
                     must be Python >= 3.11)
EOF
      ;;
    run)
      cat <<'EOF'
Usage: tpu_vm.sh run [SETTINGS] --config=FILE --workdir=DIR [--workers=N] [--log-dir=DIR]
                     [-- JVISION_ARGS...]

Runs `python -m jvision.main --config=FILE --workdir=DIR JVISION_ARGS...` with
JVISION_DISTRIBUTED=1 on every worker (one `gcloud ... ssh --worker=I` each, in parallel) and
waits for all of them. Each worker's output goes to LOG_DIR/worker-I.log.
  --config=FILE    JVISION_CONFIG, relative to the repository, e.g. configs/draw_mnist.py
  --workdir=DIR    JVISION_WORKDIR, shared by all workers: a bucket, gs://BUCKET/runs/NAME
  --workers=N      TPU_WORKERS: number of workers (default: asked from `tpu-vm describe`)
  --log-dir=DIR    TPU_LOG_DIR (default logs/NAME)
Exit status: 0 when every worker succeeded; 75 when jvision was preempted (checkpoint saved:
rerun the same command to resume); 1 when a worker failed (the first failing one is named).
EOF
      ;;
    logs)
      cat <<'EOF'
Usage: tpu_vm.sh logs [--name=NAME | --log-dir=DIR] [--follow] [--lines=N]

Shows the last N lines (default 20) of each worker's log written by `run`, or follows them.
EOF
      ;;
    kill)
      cat <<'EOF'
Usage: tpu_vm.sh kill [SETTINGS]

On every worker, kills (kill -9) the processes holding the TPU devices (/dev/accel*,
/dev/vfio/*) and removes /tmp/libtpu_lockfile: the cure for "TPU already in use".
EOF
      ;;
    delete)
      cat <<'EOF'
Usage: tpu_vm.sh delete [SETTINGS]

Deletes the queued resource and its TPU (gcloud ... queued-resources delete --force).
EOF
      ;;
    *)
      cat <<'EOF'
Usage: tpu_vm.sh SUBCOMMAND [OPTIONS] [-- JVISION_ARGS...]

Subcommands (in the order of a job's life):
  create   request a TPU VM (queued resource) and wait until it is ACTIVE
  setup    copy the code to every worker and install it with jax[tpu] in a venv
  run      run jvision.main on every worker with JVISION_DISTRIBUTED=1, one log per worker
  logs     show or follow the per-worker logs of `run`
  kill     kill stale processes holding the TPU on every worker
  delete   delete the queued resource and its TPU

SETTINGS (options win over environment variables):
  --project=P           TPU_PROJECT            Google Cloud project
  --zone=Z              TPU_ZONE               e.g. us-central2-b
  --name=NAME           TPU_NAME               the TPU VM (node) name
  --queued-resource=QR  TPU_QUEUED_RESOURCE    queued resource id (default: NAME)

`tpu_vm.sh SUBCOMMAND --help` lists a subcommand's own options. Options take `--opt=value`
or `--opt value`. Exit status: 0 done, 1 failure, 2 bad usage, 75 preempted (rerun to resume).
EOF
      ;;
  esac
}

die_usage() {
  echo "$PROG: error: $*" >&2
  exit "$EX_USAGE"
}

fail() {
  echo "$PROG: error: $*" >&2
  exit 1
}

set_option() {
  local option=$1 value=$2
  case $option in
    --project) project=$value ;;
    --zone) zone=$value ;;
    --name) name=$value ;;
    --queued-resource) queued_resource=$value ;;
    --accelerator-type) accelerator_type=$value ;;
    --runtime-version) runtime_version=$value ;;
    --provisioning) provisioning=$value ;;
    --timeout) create_timeout=$value ;;
    --source) source_dir=$value ;;
    --python) remote_python=$value ;;
    --workers) workers=$value ;;
    --log-dir) log_dir=$value ;;
    --config) config=$value ;;
    --workdir) workdir=$value ;;
    --lines) lines=$value ;;
    --config.*) die_usage "$option is for jvision.main: put it after -- (see $PROG run --help)" ;;
    *) die_usage "unknown option $option (see $PROG --help)" ;;
  esac
}

parse_args() {
  while (($# > 0)); do
    case $1 in
      -h | --help) show_help=1 ;;
      --follow) follow=1 ;;
      --)
        shift
        jvision_args=("$@")
        return
        ;;
      --*=*) set_option "${1%%=*}" "${1#*=}" ;;
      --*)
        (($# > 1)) || die_usage "$1 needs a value"
        set_option "$1" "$2"
        shift
        ;;
      -*) die_usage "unknown option $1 (see $PROG --help)" ;;
      *)
        [[ -z $subcommand ]] || die_usage "unexpected argument '$1' (see $PROG --help)"
        subcommand=$1
        ;;
    esac
    shift
  done
}

# require VALUE OPTION ENV: one line naming what is missing.
require() {
  [[ -n $1 ]] || die_usage "$2 (or $3) is required"
}

require_node() {
  require "$project" --project TPU_PROJECT
  require "$zone" --zone TPU_ZONE
  require "$name" --name TPU_NAME
}

require_count() { # require_count VALUE OPTION: a non-negative integer.
  [[ $1 =~ ^[0-9]+$ ]] || die_usage "$2 must be a whole number, got '$1'"
}

# gcloud compute tpus ARGS... in the TPU's zone and project. --quiet: never prompt (ssh key
# generation, deletion confirmation); these scripts run unattended.
tpus() {
  gcloud compute tpus "$@" --zone "$zone" --project "$project" --quiet
}

queued_resource_state() {
  gcloud compute tpus queued-resources describe "$queued_resource" \
    --zone "$zone" --project "$project" --format='value(state.state)'
}

cmd_create() {
  require_node
  require "$accelerator_type" --accelerator-type TPU_ACCELERATOR_TYPE
  require "$runtime_version" --runtime-version TPU_RUNTIME_VERSION
  require_count "$poll_seconds" TPU_POLL_SECONDS
  require_count "$create_timeout" --timeout
  local provisioning_flag=''
  case $provisioning in
    on-demand) ;;
    spot) provisioning_flag=--spot ;;
    reserved) provisioning_flag=--reserved ;;
    *) die_usage "--provisioning must be on-demand, spot or reserved, got '$provisioning'" ;;
  esac

  tpus queued-resources create "$queued_resource" --node-id "$name" \
    --accelerator-type "$accelerator_type" --runtime-version "$runtime_version" \
    ${provisioning_flag:+"$provisioning_flag"}
  wait_until_active
}

# A queued resource goes WAITING_FOR_RESOURCES -> PROVISIONING -> ACTIVE; capacity may take a
# while (spot, large slices), so poll rather than block in gcloud.
wait_until_active() {
  local state start=$SECONDS
  while true; do
    # A failed describe (a network blip during a long wait) is one more poll, not the end.
    state=$(queued_resource_state) || state=''
    case $state in
      ACTIVE)
        echo "$PROG: $queued_resource is ACTIVE (TPU $name)"
        return
        ;;
      FAILED | SUSPENDED)
        fail "queued resource $queued_resource is $state; see gcloud compute tpus" \
          "queued-resources describe $queued_resource --zone $zone --project $project"
        ;;
    esac
    if ((SECONDS - start >= create_timeout)); then
      fail "queued resource $queued_resource is still ${state:-in an unknown state} after" \
        "${create_timeout}s; delete it or raise --timeout"
    fi
    echo "$PROG: $queued_resource is ${state:-not reported yet}; waiting ${poll_seconds}s"
    sleep "$poll_seconds"
  done
}

# Copies the files worth shipping into STAGE/jvision: in a git checkout the tracked and
# unignored files (no .venv of a few GB, no workdirs), otherwise everything but what
# .gitignore names (a virtualenv, workdirs, logs, builds and caches).
stage_source() {
  local stage=$1 file
  mkdir "$stage/jvision"
  if git -C "$source_dir" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$source_dir" ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' file; do
        # Tracked files deleted from the work tree are still listed.
        if [[ -e $source_dir/$file ]]; then printf '%s\0' "$file"; fi
      done |
      tar -C "$source_dir" --null -T - -cf - | tar -C "$stage/jvision" -xf -
  else
    tar -C "$source_dir" --anchored --exclude=./.git --exclude=./.venv --exclude=./workdirs \
      --exclude=./logs --exclude=./build --no-anchored --exclude=__pycache__ \
      --exclude='*.egg-info' --exclude=.pytest_cache --exclude=.ruff_cache -cf - . |
      tar -C "$stage/jvision" -xf -
  fi
}

cmd_setup() {
  require_node
  [[ -d $source_dir ]] || die_usage "--source directory '$source_dir' does not exist"
  local stage
  stage=$(mktemp -d)
  # shellcheck disable=SC2064 # Expand $stage now: it is local to this function.
  trap "rm -rf '$stage'" EXIT
  stage_source "$stage"

  # `scp --recurse DIR NODE:~/jvision` copies into ~/jvision/DIR when ~/jvision exists, so remove
  # the previous copy first; the venv is outside it and survives.
  tpus tpu-vm ssh "$name" --worker=all --command "rm -rf $REMOTE_DIR"
  tpus tpu-vm scp --recurse "$stage/jvision" "$name:$REMOTE_DIR" --worker=all
  # First run creates the venv; later runs reuse it and only reinstall what changed.
  local install
  install="set -e; cd $REMOTE_DIR"
  install+="; if [ ! -x $REMOTE_VENV/bin/python ]; then"
  install+=" $remote_python -c 'import sys; sys.exit(sys.version_info < (3, 11))'"
  install+=" || { echo 'jvision needs Python >= 3.11: set --python' >&2; exit 1; }"
  install+="; $remote_python -m venv $REMOTE_VENV; fi"
  install+="; . $REMOTE_VENV/bin/activate"
  # One resolve, so jax[tpu] keeps requirements.txt's jax pin.
  install+="; pip install -q -r requirements.txt -e . 'jax[tpu]'"
  tpus tpu-vm ssh "$name" --worker=all --command "$install"
  echo "$PROG: jvision installed on every worker of $name ($REMOTE_DIR, venv $REMOTE_VENV)"
}

# The number of workers (hosts) of the TPU: one network endpoint each.
count_workers() {
  if [[ -n $workers ]]; then
    echo "$workers"
  else
    gcloud compute tpus tpu-vm describe "$name" --zone "$zone" --project "$project" \
      --format='value(networkEndpoints.len())'
  fi
}

cmd_run() {
  require_node
  require "$config" --config JVISION_CONFIG
  require "$workdir" --workdir JVISION_WORKDIR
  local n
  n=$(count_workers)
  [[ $n =~ ^[1-9][0-9]*$ ]] ||
    fail "cannot tell the number of workers of $name (got '$n'); set --workers"
  log_dir=${log_dir:-logs/$name}
  mkdir -p "$log_dir"

  # Every worker runs the same command; jax.distributed.initialize() finds its peers itself.
  local command
  command="cd $REMOTE_DIR && . $REMOTE_VENV/bin/activate"
  command+=" && JVISION_DISTRIBUTED=1 python -m jvision.main"
  # Quoted for the worker's shell. ${a[@]+"${a[@]}"}: an empty array is an unbound variable to
  # macOS's bash 3.2 under set -u.
  command+=$(printf ' %q' "--config=$config" "--workdir=$workdir" \
    ${jvision_args[@]+"${jvision_args[@]}"})

  # MaxText style: one ssh per worker, in the background, each with its own log file, so one
  # worker's output is never interleaved with another's and a failure can be pinned on a worker.
  local i pids=()
  for ((i = 0; i < n; i++)); do
    tpus tpu-vm ssh "$name" --worker="$i" --command "$command" \
      </dev/null >"$log_dir/worker-$i.log" 2>&1 &
    pids+=("$!")
  done
  # Ctrl-C here would leave the ssh sessions running: stop them (the remote processes may
  # survive; `tpu_vm.sh kill` frees the TPU).
  trap 'kill "${pids[@]}" 2>/dev/null; exit 130' INT TERM
  echo "$PROG: running on $n workers of $name; logs in $log_dir/worker-*.log" \
    "(follow: $PROG logs --log-dir=$log_dir --follow)"

  local status first_failed='' first_status=0 preempted=0
  for ((i = 0; i < n; i++)); do
    status=0
    wait "${pids[i]}" || status=$?
    if ((status == EX_PREEMPTED)); then
      preempted=1
    elif ((status != 0)) && [[ -z $first_failed ]]; then
      first_failed=$i
      first_status=$status
    fi
  done
  trap - INT TERM

  if [[ -n $first_failed ]]; then
    fail "worker $first_failed failed (exit status $first_status);" \
      "see $log_dir/worker-$first_failed.log"
  fi
  if ((preempted)); then
    echo "$PROG: preempted; rerun to resume (checkpoint saved in $workdir)" >&2
    exit "$EX_PREEMPTED"
  fi
  echo "$PROG: all $n workers finished; results in $workdir"
}

cmd_logs() {
  if [[ -z $log_dir ]]; then
    require "$name" --name TPU_NAME
    log_dir=logs/$name
  fi
  require_count "$lines" --lines
  local files=("$log_dir"/worker-*.log)
  [[ -e ${files[0]} ]] || fail "no worker logs in $log_dir (written by '$PROG run')"
  if ((follow)); then
    tail -n "$lines" -F "${files[@]}"
  else
    tail -n "$lines" "${files[@]}"
  fi
}

cmd_kill() {
  require_node
  # A crashed or interrupted run can leave a process holding the TPU, or libtpu's lock file:
  # the next run then fails with "TPU already in use". /dev/accel* on v4, /dev/vfio/* on v5e+.
  local command='sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u | xargs -r sudo kill -9'
  command+='; sudo rm -f /tmp/libtpu_lockfile'
  tpus tpu-vm ssh "$name" --worker=all --command "$command"
  echo "$PROG: TPU processes and lock file cleared on every worker of $name"
}

cmd_delete() {
  require_node
  tpus queued-resources delete "$queued_resource" --force
}

main() {
  parse_args "$@"
  if ((show_help)); then
    usage "$subcommand"
    exit 0
  fi
  [[ -n $subcommand ]] ||
    die_usage "no subcommand (create, setup, run, logs, kill, delete; see --help)"
  if ((${#jvision_args[@]} > 0)) && [[ $subcommand != run ]]; then
    die_usage "arguments after -- are only for 'run'"
  fi
  queued_resource=${queued_resource:-$name}
  case $subcommand in
    create) cmd_create ;;
    setup) cmd_setup ;;
    run) cmd_run ;;
    logs) cmd_logs ;;
    kill) cmd_kill ;;
    delete) cmd_delete ;;
    *)
      die_usage "unknown subcommand '$subcommand'" \
        "(expected create, setup, run, logs, kill or delete)"
      ;;
  esac
}

main "$@"
