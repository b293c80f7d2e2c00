#!/bin/bash
# One run of `connecteur bench`'s many workload against one server; prints a JSON line of per-message
# figures: user and sys µs (/proc/PID/stat, all threads), sched µs (schedstat: exact run time), minor
# faults, voluntary/involuntary switches, TCP segments and delayed ACKs (nstat: the whole machine).
#
#   benchmarks/floor/measure.sh TARGET [LABEL]
#
# TARGET: a `python -m connecteur.bench.servers` target (run with $PY, default the compiled venv), or
# "floor" (the C server, $FLOOR, with $FLOORARGS: "SPIN_TOUCHKIB", underscores for spaces), or "code"
# ($CODE: the floor with a large code footprint, see gen_code_floor.py), or "py:FILE" (a script taking
# --cpu N, run with $PY). Server on CPU 0, client on CPU 1, $SECS seconds (3), 1,000 connections.
# PERF=1 adds `perf stat` tracepoint counts per message; PREC=1 records `perf record -e cpu-clock`
# (PRECG=1: with call graphs) into $OUT/rec.LABEL.data.
PY=${PY:-/work/venv-c/bin/python}
FLOOR=${FLOOR:-/tmp/floor/echo_floor}
CODE=${CODE:-/tmp/floor/echo_code}
SECS=${SECS:-3.0}
OUT=${OUT:-/tmp/floor/run}
T=$1; L=${2:-$1}
mkdir -p $OUT
LOG=$OUT/srv.$L.log
case $T in
  floor) $FLOOR 0 ${FLOORARGS//_/ } > $LOG 2>&1 & ;;
  code) $CODE 0 ${FLOORARGS//_/ } > $LOG 2>&1 & ;;
  py:*) $PY ${T#py:} --cpu 0 > $LOG 2>&1 & ;;
  *) $PY -m connecteur.bench.servers $T --cpu 0 > $LOG 2>&1 & ;;
esac
SP=$!
for i in $(seq 100); do grep -q serving $LOG 2>/dev/null && break; sleep 0.1; done
PORT=$(grep -o ':[0-9]*' $LOG | tail -1 | tr -d :)
snap() {  # utime stime minflt voluntary involuntary run-time-ns, over all threads
  read -r u s mf < <(awk '{print $14, $15, $10}' /proc/$SP/stat)
  read -r v n < <(cat /proc/$SP/task/*/status | awk '/^voluntary_ctxt/{v+=$2} /^nonvoluntary_ctxt/{n+=$2} END{print v, n}')
  x=$(cat /proc/$SP/task/*/schedstat | awk '{x+=$1} END{print x}')
  echo $u $s $mf $v $n $x
}
nstat -n >/dev/null 2>&1
read -r u0 s0 f0 v0 n0 x0 < <(snap)
LOAD0=$(cut -d' ' -f1 /proc/loadavg)
if [ -n "$PREC" ]; then
  perf record -q -e cpu-clock -c 50000 -p $SP -o $OUT/rec.$L.data ${PRECG:+-g} 2>/dev/null &
  PP=$!; sleep 0.2
fi
if [ -n "$PERF" ]; then
  perf stat -p $SP -x, -o $OUT/perf.$L.txt -e raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_futex,sched:sched_switch,sched:sched_wakeup,irq:softirq_entry,page-faults,task-clock &
  PP=$!; sleep 0.2
fi
R=$(echo "{\"workload\": \"${W:-many}\", \"host\": \"127.0.0.1\", \"port\": $PORT, \"server_pid\": $SP, \"seconds\": $SECS, \"connections\": 1000, \"rss_samples\": 3}" | $PY -m connecteur.bench.client --cpu 1)
read -r u1 s1 f1 v1 n1 x1 < <(snap)
if [ -n "$PERF$PREC" ]; then kill -INT $PP; wait $PP; fi
NS=$(nstat -z TcpOutSegs TcpExtDelayedACKs 2>/dev/null | awk 'NR>1 && $1!~/^#/{printf "%s=%s ", $1, $2}')
kill -TERM $SP; wait $SP 2>/dev/null
M=$(echo "$R" | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["messages"])')
python3 - <<PY
import json
m = $M
ns = dict(kv.split('=') for kv in "$NS".split())
pf = {}
if "$PERF":
    for line in open("$OUT/perf.$L.txt"):
        p = line.strip().split(',')
        if len(p) > 3 and p[0].replace('.', '', 1).isdigit():
            pf[p[2].split(':')[-1]] = round(float(p[0]) / m, 4)
tick = 1e6 / 100  # /proc/PID/stat counts USER_HZ (100) ticks
print(json.dumps(pf | {"target": "$L", "messages": m, "user": round(($u1-$u0)*tick/m, 3), "sys": round(($s1-$s0)*tick/m, 3),
    "sched": round(($x1-$x0)/1e3/m, 3), "minflt": round(($f1-$f0)/m, 4), "vcsw": round(($v1-$v0)/m, 4),
    "nvcsw": round(($n1-$n0)/m, 4), "segs": round(int(ns.get("TcpOutSegs", 0))/m, 3),
    "dacks": round(int(ns.get("TcpExtDelayedACKs", 0))/m, 4), "load": "$LOAD0"}))
PY
