#!/usr/bin/env bash
# Call setup benchmark: p2p calls placed by mizud (RFC 3725 flow IV) between two sipp UAS.
#
# Usage:
#   bench/calls.sh
#
# mizud (`twistd -n mizud` on a fresh SQLite database, pinned to SERVER_CPU)
# gets one user with ample credit, a tariff for 49 (0.60 a minute) and two
# gateways: gwa (prefix 4910) is a sipp UAS playing leg A
# (tests/sipp/uas_leg_a.xml: answers the media-less offer, then B's offer in
# the re-INVITE), gwb (prefix 4920) a sipp UAS playing leg B
# (tests/sipp/uas_leg_b.xml: answers with an offer, checks A's answer in the
# ACK, hangs up after HOLD_MS).  wrk keeps CONNECTIONS p2p requests with
# waitfor=2 in flight for DURATION seconds: each answer comes once both legs
# are connected, so wrk's rate is the rate of complete call setups (two
# INVITE transactions, a re-INVITE, three ACKs, the hold and the live-call row
# written before, the CDRs and the settlement after).
#
# Reported: setups/s (calls whose B leg answered, from the CDRs, over the wrk
# run), failed calls, mizud's CPU per setup, and the billing check once every
# call ended: no live-call row and no open hold left, two CDRs per call, the
# money spent equal to the sum of the CDR costs, and checkcredits (every
# balance equals its ledger).  As a reference for what this machine's SIP
# tools sustain, sipp's built-in uac against its built-in uas runs at
# BASELINE_RATE calls/s for 10 s (no controller in between).
#
# Environment (defaults in brackets):
#   DURATION [20]  CONNECTIONS [64]  HOLD_MS: fixed at 2000 by the scenario
#   SERVER_CPU [1]  CLIENT_CPU [0]   cores (taskset) of mizud and of sipp/wrk
#   BASELINE_RATE [400]  (0 skips the baseline)
#   PYTHON, TWISTD   [.venv/bin/python and .venv/bin/twistd when present,
#                     else python3 and twistd]
#   SIPP [sipp]  WRK [wrk]
#   KEEP=1   keep the temporary directory (logs, sipp errors) and print it
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

DURATION=${DURATION:-20}
CONNECTIONS=${CONNECTIONS:-64}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
BASELINE_RATE=${BASELINE_RATE:-400}
SIPP=${SIPP:-sipp}
WRK=${WRK:-wrk}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
if [ -z "${TWISTD:-}" ]; then
    if [ -x .venv/bin/twistd ]; then TWISTD=$REPO/.venv/bin/twistd; else TWISTD=twistd; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
for tool in "$SIPP" "$WRK" taskset curl; do
    command -v "$tool" >/dev/null || { echo "$0: $tool not found" >&2; exit 1; }
done

TMP=$(mktemp -d)
CLK_TCK=$(getconf CLK_TCK)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept: $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { printf '== %s\n' "$*" >&2; }

. "$REPO/bench/common.sh"

ticks_of() {  # utime+stime of one process (all threads), in clock ticks
    local rest
    rest=$(sed 's/^.*) //' /proc/"$1"/stat)
    set -- $rest
    echo $((${12} + ${13}))
}

HTTP=$(free_port)
SIP=$(free_port)
PA=$(free_port)
PB=$(free_port)
ADMIN="authid=admin&authpwd=admin-password"
api() { curl -sS --max-time 60 "http://127.0.0.1:$HTTP/mvapireq/?$1&$ADMIN"; }
db() { curl -sS --max-time 60 -G "http://127.0.0.1:$HTTP/mvapireq/" --data-urlencode "apientry=db" \
        --data-urlencode "txt=$1" --data-urlencode "authid=admin" --data-urlencode "authpwd=admin-password" \
        | tail -n 1; }

log "mizud on core $SERVER_CPU (HTTP $HTTP, SIP $SIP)"
(cd "$TMP" && exec taskset -c "$SERVER_CPU" "$TWISTD" -n --pidfile "$TMP/twistd.pid" mizud \
    --set listenaddress=127.0.0.1 --set "mainaport=$HTTP" --set mainaportudp=0 --set httpserver=0 \
    --set sslportmain=0 --set "sipport=$SIP" --set localtsport=0 --set bootstrapadmin=admin:admin-password \
    --set sipratelimitip=0 --set ratelimitip=0 --set ratelimituser=0 --set defaulttariff=1 \
    --set p2panyanum=1 --set maxcallduration=60 --set callsetuptimeout=8 --set sipcallsperuser=1000 \
    >"$TMP/mizud.log" 2>&1) &
PIDS+=($!)
for _ in $(seq 1 300); do
    grep -q "API ready" "$TMP/mizud.log" 2>/dev/null && break
    sleep 0.1
done
grep -q "API ready" "$TMP/mizud.log" || { cat "$TMP/mizud.log" >&2; exit 1; }
MIZUD_PID=$(cat "$TMP/twistd.pid")

for side in a:$PA b:$PB; do
    name=${side%%:*}; port=${side#*:}
    (cd "$TMP" && exec taskset -c "$CLIENT_CPU" "$SIPP" -sf "$REPO/tests/sipp/uas_leg_$name.xml" -i 127.0.0.1 \
        -p "$port" -mp "$(free_port)" -nd -bg -trace_err >/dev/null 2>&1) || true
done
sleep 0.5
PIDS+=($(pgrep -f "uas_leg_[ab].xml" || true))

api "apientry=importtariffs&tariffid=1&csv=prefix%2Cname%2Cprice%0A49%2CGermany%2C0.60%0A" >/dev/null
api "apientry=newuseri&u_username=bench&u_password=bench-pw" >/dev/null
api "apientry=addcredit&pin=bench&credit=1000000" >/dev/null
api "apientry=addserver&u_username=gwa&u_ip=127.0.0.1:$PA&u_routing=gwa" >/dev/null
api "apientry=addserver&u_username=gwb&u_ip=127.0.0.1:$PB&u_routing=gwb" >/dev/null
db "UPDATE tb_routing SET prefix = '4910' WHERE name = 'gwa'" >/dev/null
db "UPDATE tb_routing SET prefix = '4920' WHERE name = 'gwb'" >/dev/null
URL="http://127.0.0.1:$HTTP/mvapireq/?apientry=p2p&authid=bench&authpwd=bench-pw&anum=4910001&bnum=4920001&waitfor=2"
first=$(curl -sS --max-time 30 "$URL" | head -n 1)
case $first in
    "OK: call "*connected*) log "warm-up call: $first" ;;
    *) echo "warm-up call failed: $first" >&2; tail -n 30 "$TMP/mizud.log" >&2; exit 1 ;;
esac
sleep 3

BEFORE_CALLS=$(db "SELECT count(DISTINCT callid) FROM tb_cdrs")
BALANCE_BEFORE=$(db "SELECT credit FROM tb_users WHERE username = 'bench'")
T0=$(ticks_of "$MIZUD_PID")
log "wrk: $CONNECTIONS p2p requests in flight for ${DURATION}s (waitfor=2)"
taskset -c "$CLIENT_CPU" "$WRK" -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 30s "$URL" >"$TMP/wrk.txt"
T1=$(ticks_of "$MIZUD_PID")
log "waiting for the calls to end"
for _ in $(seq 1 120); do
    [ "$(db "SELECT count(*) FROM tb_calls")" = 0 ] && break
    sleep 0.5
done

CALLS=$(( $(db "SELECT count(DISTINCT callid) FROM tb_cdrs") - BEFORE_CALLS ))
CONNECTED=$(db "SELECT count(*) FROM tb_cdrs WHERE leg = 'B' AND answered IS NOT NULL AND callid > 1")
CDRS=$(db "SELECT count(*) FROM tb_cdrs WHERE callid > 1")
LIVE=$(db "SELECT count(*) FROM tb_calls")
OPEN=$(db "SELECT count(*) FROM tb_holds WHERE status = 0")
SPENT=$(db "SELECT coalesce(sum(cost), 0) FROM tb_cdrs WHERE callid > 1")
BALANCE_AFTER=$(db "SELECT credit FROM tb_users WHERE username = 'bench'")
CHECK=$(api "apientry=checkcredits" | head -n 1)
CPU_S=$(awk -v t=$((T1 - T0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", t / hz }')

echo
grep -E "Requests/sec|Latency|requests in" "$TMP/wrk.txt" | sed 's/^/wrk: /'
awk -v c="$CONNECTED" -v n="$CALLS" -v d="$DURATION" -v cpu="$CPU_S" 'BEGIN {
    printf "calls placed %d, connected %d, failed %d\n", n, c, n - c
    printf "setups/s (connected / %d s): %.1f\n", d, c / d
    printf "mizud CPU: %.1f s (%.0f%% of one core), %.2f ms per setup\n", cpu, 100 * cpu / d, (c ? 1000 * cpu / c : 0)
}'
# tb_users.credit and tb_cdrs.cost are micro-units on SQLite.
echo "billing: live calls $LIVE, open holds $OPEN, CDRs $CDRS (2 per call: $((2 * CALLS))), spent $(awk -v a="$BALANCE_BEFORE" -v b="$BALANCE_AFTER" 'BEGIN { printf "%.6f", (a - b) / 1e6 }') = sum of CDR costs $(awk -v s="$SPENT" 'BEGIN { printf "%.6f", s / 1e6 }'); $CHECK"
echo "mizud tracebacks: $(grep -c "Traceback" "$TMP/mizud.log" || true)"

if [ "$BASELINE_RATE" != 0 ]; then
    BP=$(free_port)
    (cd "$TMP" && exec taskset -c "$SERVER_CPU" "$SIPP" -sn uas -i 127.0.0.1 -p "$BP" -mp "$(free_port)" -nd -bg \
        >/dev/null 2>&1) || true
    sleep 0.5
    PIDS+=($(pgrep -f -- "-sn uas -i 127.0.0.1 -p $BP" || true))
    (cd "$TMP" && taskset -c "$CLIENT_CPU" "$SIPP" -sn uac -i 127.0.0.1 -p "$(free_port)" -mp "$(free_port)" \
        -r "$BASELINE_RATE" -m $((BASELINE_RATE * 10)) -d 2000 -nd -nostdin -timeout 60s \
        -trace_stat -stf "$TMP/baseline.csv" "127.0.0.1:$BP" >/dev/null 2>&1) || true
    "$PYTHON" - "$TMP/baseline.csv" "$BASELINE_RATE" <<'EOF'
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter=";"))
header, last = rows[0], rows[-1]
value = dict(zip(header, last))
ok, failed = int(value["SuccessfulCall(C)"]), int(value["FailedCall(C)"])
print(f"baseline (sipp uac -> sipp uas, offered {sys.argv[2]}/s for 10 s): {ok} successful, {failed} failed")
EOF
fi
