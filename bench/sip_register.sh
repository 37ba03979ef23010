#!/usr/bin/env bash
# SIP registrar benchmark: mizud against Kamailio, digest-authenticated REGISTER.
#
# Usage:
#   bench/sip_register.sh [rate] [bindings]        (no argument: rate)
#
#   rate      Each server in turn gets USERS users, is pinned to one core and
#             is offered RATE registrations/s for DURATION seconds by sipp
#             (tests/sipp/register_only.xml: REGISTER -> 401 -> REGISTER with
#             digest credentials -> 200; the users are reused in turn, so most
#             registrations refresh a binding).  Reported per server:
#             successful registrations/s, failed calls, sipp's UDP
#             retransmissions, the server's CPU seconds (utime+stime of all its
#             processes, from /proc) and CPU per registration; then the ratio
#             of mizud's CPU per registration to Kamailio's.  Before the
#             measured run every user registers once (at RATE/4) as a warm-up.
#             Columns: ok/s = successful registrations / wall seconds of the
#             sipp run; unfin = calls neither successful nor failed when sipp
#             stopped (its -timeout; an overloaded server also makes sipp hold
#             back new calls at its -l limit); retrans = sipp's UDP
#             retransmissions; cpu_s, cpu% = server CPU (utime+stime) and
#             that / wall; us/reg = server CPU microseconds per successful
#             registration; us/reg* = the same from the exact run time in
#             /proc/PID/task/*/schedstat (utime+stime are sampled at the
#             scheduler tick; the two agree on this machine); sipp% = sipp's
#             own CPU / wall (near 100%: sipp is the bottleneck, give it more
#             SIPP_PROCS on more CLIENT_CPU cores).  CPU per registration
#             depends on the rate (fewer wake-ups per message when busy), so
#             compare servers at the same rate, one that both sustain.
#   bindings  Each server gets BINDINGS users and registers each of them once
#             at BIND_RATE/s; reported: memory per binding, (after - before) /
#             bindings (mizud: VmRSS of its process; Kamailio: the sum of Pss
#             of its processes, which share the binding table).
#
# Environment (defaults in brackets):
#   USERS [2000]  RATE [3000]  DURATION [20]  BINDINGS [100000]  BIND_RATE [2000]
#   SETTLE [2]   bindings: seconds between the last registration and the memory
#                reading (40 lets mizud's server transactions of the 200s end:
#                timer J keeps each 32 s; Kamailio answers REGISTER statelessly)
#   SERVERS ["kamailio mizud"]   which servers, in this order
#   SERVER_CPU [1]  CLIENT_CPU [0]   cores (taskset) of the server and of sipp
#   SIPP_PROCS [1]   sipp processes sharing the offered rate (each its own users)
#   KAMAILIO_CHILDREN [2]   UDP worker processes of Kamailio
#   KAMAILIO_AUTH [htable]  htable: passwords in a hash table loaded at start;
#                           db: auth_db on db_text (scans the table per query)
#   PYTHON, TWISTD   [.venv/bin/python and .venv/bin/twistd when present,
#                     else python3 and twistd]
#   KAMAILIO [kamailio]  SIPP [sipp]
#   KEEP=1   keep the temporary directory (logs, sipp statistics) and print it
#            (made by mktemp -d, so TMPDIR chooses where it is)
#
# Kamailio runs bench/kamailio/kamailio.cfg with a db_text directory made here.
# mizud runs `twistd -n mizud` on a fresh SQLite database (schema created by
# mizud.store.schema.migrate, users inserted into tb_users) with only the SIP
# listener on an ephemeral port and without its per-address request limit
# (sipratelimitip=0: all of sipp's traffic comes from 127.0.0.1).  Example:
#   RATE=1000 DURATION=10 SERVERS=kamailio bench/sip_register.sh
#   BINDINGS=20000 bench/sip_register.sh bindings
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

USERS=${USERS:-2000}
RATE=${RATE:-3000}
DURATION=${DURATION:-20}
BINDINGS=${BINDINGS:-100000}
BIND_RATE=${BIND_RATE:-2000}
SETTLE=${SETTLE:-2}
SERVERS=${SERVERS:-kamailio mizud}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
SIPP_PROCS=${SIPP_PROCS:-1}
KAMAILIO_CHILDREN=${KAMAILIO_CHILDREN:-2}
KAMAILIO_AUTH=${KAMAILIO_AUTH:-htable}
KAMAILIO=${KAMAILIO:-kamailio}
SIPP=${SIPP:-sipp}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
if [ -z "${TWISTD:-}" ]; then
    if [ -x .venv/bin/twistd ]; then TWISTD=$REPO/.venv/bin/twistd; else TWISTD=twistd; fi
fi
# mizud from this checkout, whether or not it is installed in the venv
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

PHASES=("$@")
[ ${#PHASES[@]} -gt 0 ] || PHASES=(rate)
for phase in "${PHASES[@]}"; do
    case $phase in
        rate|bindings) ;;
        *) echo "usage: $0 [rate] [bindings]" >&2; exit 2 ;;
    esac
done
for tool in "$KAMAILIO" "$SIPP" taskset ss; do
    command -v "$tool" >/dev/null || { echo "$0: $tool not found" >&2; exit 1; }
done

TMP=$(mktemp -d)
CLK_TCK=$(getconf CLK_TCK)
SERVER_PID=
SCENARIO=$REPO/tests/sipp/register_only.xml

cleanup() {
    stop_server
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept: $TMP" >&2
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s\n' "$*" >&2; }

. "$REPO/bench/common.sh"

# Whether something listens on UDP port $1.
udp_bound() { [ -n "$(ss -Hlnu "( sport = :$1 )" 2>/dev/null)" ]; }

# The server's processes: the one we started and its descendants.
server_pids() {
    local pids=("$SERVER_PID") queue=("$SERVER_PID") p c
    while [ ${#queue[@]} -gt 0 ]; do
        p=${queue[0]}; queue=("${queue[@]:1}")
        for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do
            pids+=("$c"); queue+=("$c")
        done
    done
    echo "${pids[@]}"
}

# utime+stime, in clock ticks, of the server's processes (all threads).
server_ticks() {
    local total=0 p rest
    for p in $(server_pids); do
        rest=$(sed 's/^.*) //' /proc/"$p"/stat 2>/dev/null) || continue
        # after "pid (comm) ": field 3 is state, so utime (14) and stime (15)
        # are the 12th and 13th words
        set -- $rest
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}

# Run time, in ns, of all the server's threads (/proc/PID/task/TID/schedstat,
# first field): exact even on kernels that sample utime+stime at the tick.
server_ns() {
    local p
    for p in $(server_pids); do
        cat /proc/"$p"/task/*/schedstat 2>/dev/null || true
    done | awk '{ t += $1 } END { printf "%.0f\n", t }'
}

# Memory of the server in kB: mizud VmRSS, Kamailio the sum of Pss.
server_mem_kb() {
    local total=0 p v
    if [ "$1" = mizud ]; then
        awk '/^VmRSS:/ {print $2}' /proc/"$SERVER_PID"/status
        return
    fi
    for p in $(server_pids); do
        v=$(awk '/^Pss:/ {print $2}' /proc/"$p"/smaps_rollup 2>/dev/null) || continue
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    local pid=$SERVER_PID i
    SERVER_PID=
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

wait_bound() {  # port, what, log file
    local i
    for i in $(seq 300); do
        udp_bound "$1" && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "$2 did not listen on UDP port $1; the end of its log ($3):"
    tail -n 20 "$3" >&2 || true
    stop_server
    return 1
}

# write_csv DIR COUNT PROCS: DIR/users.K.csv, the sipp injection file of
# sipp process K; user I goes to process (I-1) mod PROCS.
# A user is "b" + 7 digits, the password "pw" + the same digits.
write_csv() {
    local dir=$1 count=$2 procs=$3
    awk -v n="$count" -v p="$procs" -v dir="$dir" 'BEGIN {
        for (k = 0; k < p; k++) print "SEQUENTIAL" > (dir "/users." k ".csv")
        for (i = 1; i <= n; i++) {
            u = sprintf("b%07d", i); w = sprintf("pw%07d", i)
            print u ";" w ";[authentication username=" u " password=" w "]" > (dir "/users." ((i - 1) % p) ".csv")
        }
    }'
}

start_kamailio() {  # users, port, dir
    local users=$1 port=$2 dir=$3 defs=()
    mkdir -p "$dir/db" "$dir/run"
    printf 'table_name(string) table_version(int) \nsubscriber:7\nhtusers:2\n' >"$dir/db/version"
    awk -v n="$users" 'BEGIN {
        print "id(int,auto) username(string) domain(string,null) password(string) "
        for (i = 1; i <= n; i++) printf "%d:b%07d::pw%07d\n", i, i, i
    }' >"$dir/db/subscriber"
    awk -v n="$users" 'BEGIN {
        print "key_name(string) key_type(int) value_type(int) key_value(string) expires(int) "
        for (i = 1; i <= n; i++) printf "b%07d:0:0:pw%07d:0\n", i, i
    }' >"$dir/db/htusers"
    if [ "$KAMAILIO_AUTH" = htable ]; then defs=(-A WITH_HTABLE); fi
    (cd "$dir" && exec taskset -c "$SERVER_CPU" "$KAMAILIO" -f "$REPO/bench/kamailio/kamailio.cfg" \
        -DD -E -n "$KAMAILIO_CHILDREN" -m 1024 -M 32 -l "udp:127.0.0.1:$port" \
        -Y "$dir/run" -P "$dir/run/kamailio.pid" -A "DBURL=\"text://$dir/db\"" "${defs[@]}" \
        >"$dir/server.log" 2>&1) &
    SERVER_PID=$!
    wait_bound "$port" kamailio "$dir/server.log"
}

start_mizud() {  # users, port, dir
    local users=$1 port=$2 dir=$3
    mkdir -p "$dir"
    # schema by mizud's own migration code, then the users
    "$PYTHON" - "$dir/bench.sqlite" "$users" <<'EOF'
import sqlite3, sys
from datetime import datetime, timezone
from mizud.store.schema import migrate
path, count = sys.argv[1], int(sys.argv[2])
now = datetime.now(timezone.utc)
migrate(path, now.isoformat())
created = now.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
db = sqlite3.connect(path)
with db:
    db.executemany(
        "INSERT INTO tb_users (type, username, password, currency, postpaid, creditlimit, created)"
        " VALUES (0, ?, ?, 'USD', 0, 0, ?)",
        ((f"b{i:07d}", f"pw{i:07d}", created) for i in range(1, count + 1)))
db.close()
EOF
    (cd "$dir" && exec taskset -c "$SERVER_CPU" "$TWISTD" -n --pidfile "$dir/twistd.pid" mizud \
        --set "database=$dir/bench.sqlite" --set listenaddress=127.0.0.1 \
        --set mainaport=0 --set sslportmain=0 --set httpserver=0 \
        --set "sipport=$port" --set localtsport=0 --set "logfile=$dir/mizud.log" \
        --set sipratelimitip=0 \
        >"$dir/server.log" 2>&1) &
    SERVER_PID=$!
    wait_bound "$port" mizud "$dir/server.log"
}

# run_sipp DIR PORT RATE CALLS PROCS TAG: sipp processes on CLIENT_CPU, each
# with its share of rate and calls; waits for them. Leaves, in DIR/TAG.result,
# "successful failed retransmissions wall_seconds sipp_cpu_seconds".
run_sipp() {
    local dir=$1 port=$2 rate=$3 calls=$4 procs=$5 tag=$6
    local k pids=() t0 t1 timer=() share_rate share_calls sport
    local timeout=$(( calls / (rate > 0 ? rate : 1) + 60 ))
    if [ -x /usr/bin/time ]; then timer=(/usr/bin/time -f "%U %S"); fi
    t0=$(date +%s.%N)
    for ((k = 0; k < procs; k++)); do
        share_rate=$(( rate / procs + (k < rate % procs ? 1 : 0) ))
        share_calls=$(( calls / procs + (k < calls % procs ? 1 : 0) ))
        sport=$(free_port)
        if [ ${#timer[@]} -gt 0 ]; then timer=(/usr/bin/time -o "$dir/$tag.time.$k" -f "%U %S"); fi
        taskset -c "$CLIENT_CPU" "${timer[@]}" "$SIPP" -sf "$SCENARIO" -inf "$dir/users.$k.csv" \
            -i 127.0.0.1 -p "$sport" -default_behaviors all,-bye -r "$share_rate" -rp 1000 -m "$share_calls" \
            -l $(( share_rate * 2 + 100 )) -timeout "${timeout}s" -nostdin \
            -buff_size 4194304 -trace_stat -stf "$dir/$tag.stat.$k.csv" -fd 1 \
            -trace_err -error_file "$dir/$tag.errors.$k.log" -max_log_size 1000000 \
            "127.0.0.1:$port" >"$dir/$tag.sipp.$k.out" 2>&1 &
        pids+=($!)
    done
    for k in "${pids[@]}"; do wait "$k" || true; done
    t1=$(date +%s.%N)
    local ok=0 failed=0 retrans=0 cpu=0 line
    for ((k = 0; k < procs; k++)); do
        line=$(awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
            { last = $0 }
            END { split(last, f, ";");
                  print f[col["SuccessfulCall(C)"]] + 0, f[col["FailedCall(C)"]] + 0, f[col["Retransmissions(C)"]] + 0 }' \
            "$dir/$tag.stat.$k.csv" 2>/dev/null || echo "0 0 0")
        set -- $line
        ok=$((ok + $1)); failed=$((failed + $2)); retrans=$((retrans + $3))
        if [ -s "$dir/$tag.time.$k" ]; then
            cpu=$(awk -v c="$cpu" 'END { print c + $1 + $2 }' "$dir/$tag.time.$k")
        fi
    done
    echo "$ok $failed $retrans $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') $cpu" \
        >"$dir/$tag.result"
}

RESULTS=()

bench_rate() {  # server
    local server=$1 dir=$TMP/rate-$1 port before after before_ns after_ns cpu cpu_ns
    local ok failed retrans wall sippcpu
    mkdir -p "$dir"
    port=$(free_port)
    log "$server: $USERS users, UDP 127.0.0.1:$port, core $SERVER_CPU"
    if ! "start_$server" "$USERS" "$port" "$dir"; then
        RESULTS+=("$(printf '%-9s %8s  %s' "$server" "$RATE" "did not start")")
        return 0
    fi
    write_csv "$dir" "$USERS" "$SIPP_PROCS"
    # warm-up: every user registers once, at a quarter of the rate
    log "$server: warm-up, $USERS registrations"
    run_sipp "$dir" "$port" $(( RATE / 4 > 0 ? RATE / 4 : 1 )) "$USERS" "$SIPP_PROCS" warmup
    read -r ok failed _ _ _ <"$dir/warmup.result"
    log "$server: warm-up $ok successful, $failed failed"
    log "$server: $RATE registrations/s offered for ${DURATION}s by $SIPP_PROCS sipp on core $CLIENT_CPU"
    before=$(server_ticks); before_ns=$(server_ns)
    run_sipp "$dir" "$port" "$RATE" $(( RATE * DURATION )) "$SIPP_PROCS" run
    after=$(server_ticks); after_ns=$(server_ns)
    stop_server
    read -r ok failed retrans wall sippcpu <"$dir/run.result"
    cpu=$(awk -v a="$before" -v b="$after" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t }')
    cpu_ns=$(awk -v a="$before_ns" -v b="$after_ns" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    RESULTS+=("$(awk -v s="$server" -v r="$RATE" -v n="$(( RATE * DURATION ))" -v ok="$ok" \
        -v f="$failed" -v x="$retrans" -v w="$wall" -v c="$cpu" -v e="$cpu_ns" -v sc="$sippcpu" 'BEGIN {
        printf "%-9s %8d %8.0f %8d %7d %7d %8d %7.2f %6.2f %5.0f%% %8.1f %8.1f %6.0f%%",
            s, r, ok / w, ok, f, n - ok - f, x, w, c, 100 * c / w,
            ok ? 1e6 * c / ok : 0, ok ? 1e6 * e / ok : 0, 100 * sc / w }')")
    if [ "$ok" -gt 0 ]; then
        awk -v s="$server" -v c="$cpu" -v e="$cpu_ns" -v ok="$ok" \
            'BEGIN { print s, 1e6 * c / ok, 1e6 * e / ok }' >>"$TMP/cpu_per_reg"
    fi
}

bench_bindings() {  # server
    local server=$1 dir=$TMP/bind-$1 port before after ok failed
    mkdir -p "$dir"
    port=$(free_port)
    log "$server: $BINDINGS users, UDP 127.0.0.1:$port, core $SERVER_CPU"
    if ! "start_$server" "$BINDINGS" "$port" "$dir"; then
        RESULTS+=("$(printf '%-9s %9s  %s' "$server" "$BINDINGS" "did not start")")
        return 0
    fi
    write_csv "$dir" "$BINDINGS" "$SIPP_PROCS"
    sleep 1
    before=$(server_mem_kb "$server")
    log "$server: registering $BINDINGS users once at $BIND_RATE/s"
    run_sipp "$dir" "$port" "$BIND_RATE" "$BINDINGS" "$SIPP_PROCS" bind
    sleep "$SETTLE"
    after=$(server_mem_kb "$server")
    stop_server
    read -r ok failed _ _ _ <"$dir/bind.result"
    RESULTS+=("$(awk -v s="$server" -v n="$BINDINGS" -v ok="$ok" -v f="$failed" -v b="$before" \
        -v a="$after" -v m="$( [ "$server" = mizud ] && echo RSS || echo 'Pss sum')" 'BEGIN {
        printf "%-9s %9d %9d %7d %10.1f %10.1f %10.0f   %s",
            s, n, ok, f, b / 1024, a / 1024, ok ? (a - b) * 1024 / ok : 0, m }')")
}

for phase in "${PHASES[@]}"; do
    RESULTS=()
    : >"$TMP/cpu_per_reg"
    for server in $SERVERS; do
        case $server in
            kamailio|mizud) "bench_$phase" "$server" ;;
            *) echo "$0: unknown server $server" >&2; exit 2 ;;
        esac
    done
    echo
    if [ "$phase" = rate ]; then
        echo "REGISTER with digest auth, $USERS users, offered $RATE/s for ${DURATION}s;" \
            "server on core $SERVER_CPU, $SIPP_PROCS sipp on core $CLIENT_CPU" \
            "(Kamailio: $KAMAILIO_CHILDREN children, $KAMAILIO_AUTH auth)"
        printf '%-9s %8s %8s %8s %7s %7s %8s %7s %6s %6s %8s %8s %7s\n' server offered 'ok/s' ok failed \
            unfin retrans wall_s cpu_s 'cpu%' 'us/reg' 'us/reg*' 'sipp%'
        printf '%s\n' "${RESULTS[@]}"
        echo "cpu_s, cpu%, us/reg: utime+stime (/proc/PID/stat); us/reg*: run time from schedstat"
        awk '{ v[$1] = $2; x[$1] = $3 } END {
            if (v["kamailio"] > 0 && v["mizud"] > 0)
                printf "mizud / Kamailio CPU per registration: %.2f (schedstat: %.2f)\n",
                    v["mizud"] / v["kamailio"], x["mizud"] / x["kamailio"] }' "$TMP/cpu_per_reg"
    else
        echo "Memory per binding: BINDINGS distinct users registered once at $BIND_RATE/s, memory read ${SETTLE}s after"
        printf '%-9s %9s %9s %7s %10s %10s %10s   %s\n' server users ok failed 'before_MB' \
            'after_MB' 'B/binding' measure
        printf '%s\n' "${RESULTS[@]}"
    fi
    echo
done
