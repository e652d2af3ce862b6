#!/usr/bin/env bash
# A real single-node Slurm cluster runs examples/slurm/describe-array.sbatch end to end:
#  1. an array job describes a folder of images; `clipsteer merge` checks that every image was
#     described exactly once;
#  2. a second run has one task scancelled partway through and the whole array resubmitted:
#     nothing finished is lost (the cancelled task's lines stay as they were) and nothing is
#     redone (the other tasks' part files are unchanged, and merge finds no duplicates).
# Installs Debian's slurmctld, slurmd, slurm-client and munge when missing, writes a slurm.conf
# for this host, starts munged, slurmctld and slurmd itself (no systemd, no cgroups:
# proctrack/linuxproc, task/none) and stops each by its pid on exit. Uses the tiny fixture
# models, so it takes well under a minute once built.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DEADLINE_S=${DEADLINE_S:-240} # the longest any wait may take

log() { echo "slurm test: $*"; }
fail() {
  echo "slurm test FAILED: $*" >&2
  exit 1
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
  ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi
[ "$(id -u)" -eq 0 ] || fail "slurmd must run as root to start jobs; run this as root"

cargo build --locked --quiet
BIN=$ROOT/target/debug/clipsteer

# Daemon state lives in a short /tmp path (munge's socket path must fit a sockaddr_un).
STATE=$(mktemp -d /tmp/clipsteer-slurm.XXXXXX)
chmod 755 "$STATE"
WORK=$ROOT/target/slurm
rm -rf "$WORK"
mkdir -p "$WORK" "$STATE/munge" "$STATE/run" "$STATE/ctld" "$STATE/spool" "$STATE/log"
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ $status -ne 0 ]; then
    echo "--- slurmctld log (tail)" >&2
    tail -n 30 "$STATE/log/slurmctld.log" >&2 || true
    echo "--- slurmd log (tail)" >&2
    tail -n 30 "$STATE/log/slurmd.log" >&2 || true
    for f in "$WORK"/*.out; do
      [ -e "$f" ] && { echo "--- $f" >&2; tail -n 5 "$f" >&2; }
    done
  fi
  rm -rf "$STATE"
  exit $status
}
trap cleanup EXIT INT TERM

# munge: its own key and socket, so that nothing of the host's is used or changed.
chmod 700 "$STATE/munge"
head -c 1024 /dev/urandom >"$STATE/munge/munge.key"
chmod 400 "$STATE/munge/munge.key"
munged --foreground --key-file="$STATE/munge/munge.key" --socket="$STATE/run/munge.socket" \
  --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" \
  --seed-file="$STATE/munge/munged.seed" >"$STATE/log/munged.out" 2>&1 &
PIDS+=($!)

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
export SLURM_CONF=$STATE/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=clipsteer-ci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/run/munge.socket
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# No systemd and no cgroups in this sandbox: track processes by parent pid, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: sacct --completion reads the job completion log instead.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.log
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=5
MinJobAge=600
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=ci Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
for _ in $(seq 50); do [ -S "$STATE/run/munge.socket" ] && break; sleep 0.1; done
[ -S "$STATE/run/munge.socket" ] || fail "munged did not start: $(cat "$STATE/log/munged.out")"
slurmctld -D -f "$SLURM_CONF" >"$STATE/log/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -N "$HOST" -f "$SLURM_CONF" >"$STATE/log/slurmd.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  sinfo -h -o %t 2>/dev/null | grep -qx idle && break
  sleep 0.2
done
sinfo -h -o %t | grep -qx idle || fail "the node did not come up: $(sinfo 2>&1)"
log "slurmctld, slurmd and munged up ($CPUS CPUs, $MEM_MB MB)"

# The images: the fixtures and copies, one level nested, 24 in all.
mkdir -p "$WORK/images/more"
n=0
for copy in 0 1 2; do
  for image in tests/fixtures/images/*.png tests/fixtures/images/*.jpg; do
    [ $n -lt 24 ] || break
    name=$(basename "$image")
    dest=$WORK/images
    [ $((n % 2)) -eq 1 ] && dest=$WORK/images/more
    cp "$image" "$dest/c${copy}_$name"
    n=$((n + 1))
  done
done
IMAGES_TOTAL=$n
TASKS=4

# Submits the example as an array over the images; prints the job id.
submit() { # results-dir describe-args [sbatch args...]
  local results=$1 describe_args=$2
  shift 2
  (cd "$WORK" && sbatch --parsable --array=0-$((TASKS - 1)) --cpus-per-task=1 --mem=1G \
    --time=10 --output="$results-%A_%a.out" \
    --export=ALL,IMAGES=images,RESULTS="$results",CLIPSTEER="$BIN",LM="$ROOT/tests/fixtures/gpt2-tiny",ENCODER="$ROOT/tests/fixtures/clip-tiny-quickgelu",DESCRIBE_ARGS="$describe_args",HF_HUB_OFFLINE=1 \
    "$@" "$ROOT/examples/slurm/describe-array.sbatch")
}

# Waits until no task of job $1 is queued or running.
wait_job() {
  local job=$1 start=$SECONDS
  while [ -n "$(squeue -h -j "$job" -o %i 2>/dev/null)" ]; do
    [ $((SECONDS - start)) -lt "$DEADLINE_S" ] || fail "job $job still running after ${DEADLINE_S}s: $(squeue)"
    sleep 0.5
  done
}

# Final state of each task of array job $1, "TASK STATE" per line, from the completion log.
task_states() {
  sed -n "s/.*JobState=\([A-Z_]*\).*ArrayJobId=$1 ArrayTaskId=\([0-9]*\).*/\2 \1/p" \
    "$STATE/log/jobcomp.log" | sort -n
}

merge_check() { # results-dir
  (cd "$WORK" && "$BIN" merge "$1"/part-*.jsonl -o "$1.jsonl" --inputs images --json) \
    >"$WORK/$1-report.json" || fail "merge of $1 is incomplete: $(cat "$WORK/$1-report.json")"
  grep -q "\"described\":$IMAGES_TOTAL," "$WORK/$1-report.json" ||
    fail "merge of $1: $(cat "$WORK/$1-report.json")"
  [ "$(wc -l <"$WORK/$1.jsonl")" -eq "$IMAGES_TOTAL" ] || fail "$1.jsonl has not $IMAGES_TOTAL lines"
}

# 1. The whole array, start to end.
job=$(submit run1 "--top-k 20 --max-tokens 4")
log "run 1: array job $job, $TASKS tasks over $IMAGES_TOTAL images"
wait_job "$job"
states=$(task_states "$job")
[ "$(grep -c ' COMPLETED$' <<<"$states")" -eq $TASKS ] || fail "run 1 task states: $states"
sacct --completion --noheader --parsable2 --format=JobID,JobName,State 2>/dev/null | sed 's/^/  sacct: /'
merge_check run1
log "run 1: every task COMPLETED; merge: all $IMAGES_TOTAL images described exactly once"

# 2. One task scancelled partway through, then the array resubmitted. Slower settings, so that
#    a task is still running when its first lines are written.
slow="--top-k 200 --max-tokens 24"
job=$(submit run2 "$slow")
victim=1
part=$WORK/run2/part-$victim.jsonl
start=$SECONDS
until [ -s "$part" ] && [ "$(wc -l <"$part")" -ge 1 ]; do
  [ $((SECONDS - start)) -lt "$DEADLINE_S" ] || fail "task $victim wrote nothing"
  sleep 0.05
done
scancel "${job}_$victim"
wait_job "$job"
states=$(task_states "$job")
grep -qx "$victim CANCELLED" <<<"$states" || fail "task $victim was not cancelled: $states"
per_task=$((IMAGES_TOTAL / TASKS))
before=$(grep -c '}$' "$part" || true)
[ "$before" -ge 1 ] && [ "$before" -lt "$per_task" ] ||
  fail "the cancel should land partway: task $victim finished $before of $per_task images"
head -n "$before" "$part" >"$WORK/victim-before.jsonl"
for task in $(seq 0 $((TASKS - 1))); do
  [ "$task" -eq "$victim" ] || cp "$WORK/run2/part-$task.jsonl" "$WORK/run2-before-$task.jsonl"
done
log "run 2: array job $job, task $victim scancelled after $before of $per_task images"

job=$(submit run2 "$slow")
wait_job "$job"
states=$(task_states "$job")
[ "$(grep -c ' COMPLETED$' <<<"$states")" -eq $TASKS ] || fail "resubmitted task states: $states"
cmp -s "$WORK/victim-before.jsonl" <(head -n "$before" "$part") ||
  fail "the cancelled task's finished lines changed after the resubmission"
[ "$(wc -l <"$part")" -eq "$per_task" ] || fail "task $victim has not $per_task lines after resuming"
for task in $(seq 0 $((TASKS - 1))); do
  [ "$task" -eq "$victim" ] || cmp -s "$WORK/run2-before-$task.jsonl" "$WORK/run2/part-$task.jsonl" ||
    fail "task $task redid work after the resubmission"
done
grep -q "nothing to describe" "$WORK"/run2-"$job"_0.out || fail "task 0 should have found nothing left to do"
merge_check run2
log "run 2: resubmitted; task $victim finished its last $((per_task - before)) images, nothing lost or redone; merge: all $IMAGES_TOTAL exactly once"
echo "slurm: 2 passed, 0 failed"
