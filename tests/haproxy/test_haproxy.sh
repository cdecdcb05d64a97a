#!/usr/bin/env bash
# test_haproxy.sh -- iocpsrv behind a real HAProxy (issue 11): PROXY protocol v1/v2,
# health checks, spreading, fail-over, SO_REUSEPORT, and the samples/haproxy config.
#
#   test_haproxy.sh --console PATH --echo PATH [--sample-cfg PATH]
#
# Linux only (ctest registers it on Linux): Windows has no haproxy package. The PROXY
# header parser is shared core code, so the IOCP backend runs the same parsing; the
# engine's own parser tests cover it on both presets.
#
# Installs Debian's haproxy with apt-get when it is missing (as root, or with a
# password-less sudo). If it cannot be installed the test prints "SKIP: <reason>" and
# exits 77, which ctest reports as skipped (SKIP_RETURN_CODE).
#
# Everything runs on loopback addresses with ports the system picks. Clients run from
# 127.0.0.2 so their real address differs from HAProxy's (127.0.0.1). Waits poll the
# programs' output every 50 ms up to a deadline; nothing sleeps a fixed long time.
# Every process started here is stopped by the EXIT trap.
#
# Checks:
#   a  clients through HAProxy (send-proxy-v2) get their echoes
#   b  the servers show each client's own address (its getsockname) "via" HAProxy's;
#      HAProxy's health checks (PROXY v2 LOCAL header + a framed "ping") cause no
#      protocol error
#   c  20 clients with balance roundrobin reach both instances
#   d  one instance quits; once HAProxy marks it DOWN (inter 200ms fall 1), new clients
#      are all served by the other
#   e  hand-written headers sent straight to an instance: PROXY v1 TCP4 (also split
#      over two reads), TCP6, and v2 with TLVs: the console shows the address inside
#      the header, "via" the sender
#   f  a malformed header and a missing one (required mode) are closed before the host
#      hears of them and counted in stats as protocol errors; so is a well-formed header
#      from 127.0.0.2, which is not in --proxy-trusted (counted as untrusted too)
#   g  optional mode serves a plain client without a header, also from the untrusted
#      127.0.0.2 (as itself), but closes a header from it unseen
#   j  --max-per-source 3 behind HAProxy: of 5 clients from 127.0.0.2 three are served
#      and two refused, while 3 from 127.0.0.3 are all served at the same time (the
#      address counted is the one in HAProxy's header, never HAProxy's own)
#   h  --reuseport: two iocpsrv-echo on one port, both get connections; without it a
#      second listener fails
#   i  samples/haproxy/haproxy.cfg passes haproxy -c and, with its ports swapped for
#      free ones, serves clients through two iocpsrv-echo instances
set -u

SKIP=77
HERE=$(cd "$(dirname "$0")" && pwd)
CONSOLE=
ECHO=
SAMPLE_CFG=$HERE/../../samples/haproxy/haproxy.cfg

while [ $# -gt 0 ]; do
  case $1 in
    --console) CONSOLE=$2; shift 2 ;;
    --echo) ECHO=$2; shift 2 ;;
    --sample-cfg) SAMPLE_CFG=$2; shift 2 ;;
    *) echo "usage: $0 --console PATH --echo PATH [--sample-cfg PATH]" >&2; exit 2 ;;
  esac
done
[ -x "$CONSOLE" ] && [ -x "$ECHO" ] || { echo "FAIL: --console and --echo need the sample programs" >&2; exit 2; }

T0=$(date +%s%N)
elapsed() { echo "$(( ($(date +%s%N) - T0) / 1000000 )) ms"; }
say() { echo "[$(elapsed)] $*"; }
ok() { say "ok   $*"; }
skip() { echo "SKIP: $*"; exit "$SKIP"; }

# ---- prerequisites: python3 (clients) and haproxy -------------------------------------
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3 || true)
[ -n "$PY" ] || skip "no python3 for the test clients"

find_haproxy() {
  HAPROXY=$(command -v haproxy 2>/dev/null || true)
  [ -z "$HAPROXY" ] && [ -x /usr/sbin/haproxy ] && HAPROXY=/usr/sbin/haproxy
  [ -n "$HAPROXY" ]
}
if ! find_haproxy; then
  command -v apt-get >/dev/null || skip "haproxy is not installed and there is no apt-get to install it"
  SUDO=
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"
    else skip "haproxy is not installed; installing it needs root (or password-less sudo)"; fi
  fi
  say "haproxy missing: apt-get install -y haproxy"
  if ! { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q haproxy; } >/tmp/iocpsrv-haproxy-apt.$$ 2>&1; then
    tail -n 5 /tmp/iocpsrv-haproxy-apt.$$
    rm -f /tmp/iocpsrv-haproxy-apt.$$
    skip "apt-get could not install haproxy (see above)"
  fi
  rm -f /tmp/iocpsrv-haproxy-apt.$$
  find_haproxy || skip "haproxy still not found after apt-get install"
fi
say "using $("$HAPROXY" -v 2>/dev/null | head -n 1)"

# ---- bookkeeping: a work directory, our processes, cleanup ----------------------------
W=$(mktemp -d "${TMPDIR:-/tmp}/iocpsrv-haproxy.XXXXXX")
PIDS=()
FAILED=0

cleanup() {
  local p i
  exec 6>&- 7>&- 8>&- 9>&- 2>/dev/null
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for i in $(seq 40); do # up to 2 s for them to go, then force
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.05
  done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  if [ "$FAILED" = 1 ]; then
    for f in "$W"/*.log; do
      [ -f "$f" ] || continue
      echo "---- last lines of $(basename "$f") ----"
      tail -n 25 "$f"
    done
  fi
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fail() {
  FAILED=1
  say "FAIL $*"
  exit 1
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
lines() { wc -l <"$1" | tr -d ' '; }

# wait_for FILE FROM_LINE REGEX TIMEOUT_S [COUNT]: until FILE has COUNT (default 1) lines
# matching REGEX after line FROM_LINE; prints the first such line. Returns 1 on timeout.
wait_for() {
  local file=$1 from=$2 re=$3 t=$4 want=${5:-1} end n
  end=$(( $(now_ms) + t * 1000 ))
  while :; do
    n=$(tail -n +"$((from + 1))" "$file" 2>/dev/null | grep -cE -- "$re")
    if [ "$n" -ge "$want" ]; then
      tail -n +"$((from + 1))" "$file" | grep -m1 -E -- "$re"
      return 0
    fi
    [ "$(now_ms)" -ge "$end" ] && return 1
    sleep 0.05
  done
}

# count FILE REGEX [FROM_LINE]
count() { tail -n +"$(( ${3:-0} + 1 ))" "$1" | grep -cE -- "$2"; }

# wait_exit PID TIMEOUT_S
wait_exit() {
  local end=$(( $(now_ms) + $2 * 1000 ))
  while kill -0 "$1" 2>/dev/null; do
    [ "$(now_ms)" -ge "$end" ] && return 1
    sleep 0.05
  done
  return 0
}

# exited_ok WHAT PID: our child PID ends within 10 s with status 0 (under the sanitizer
# presets a report or a leak makes the status non-zero).
exited_ok() {
  local what=$1 pid=$2 rc
  wait_exit "$pid" 10 || fail "$what did not exit"
  wait "$pid"; rc=$?
  [ "$rc" = 0 ] || fail "$what exited with status $rc"
}

client() { "$PY" "$HERE/client.py" "$@"; }

# An address as an extended regex matching only itself ("[2001:db8::1]:80" has brackets).
re_quote() { printf '%s' "$1" | sed 's/[][\.*^$+?(){}|]/\\&/g'; }

# start_console NAME FD ARGS...: iocpsrv-console reading commands from a FIFO on file
# descriptor FD, output in $W/NAME.log; sets NAME_PID and NAME_PORT.
start_console() {
  local name=$1 fd=$2 line port
  shift 2
  mkfifo "$W/$name.in"
  "$CONSOLE" --port 0 "$@" <"$W/$name.in" >"$W/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  eval "exec $fd>\"\$W/\$name.in\"" # opens once the console has opened its end
  line=$(wait_for "$W/$name.log" 0 '^listening on 127\.0\.0\.1:[0-9]+$' 10) ||
    fail "console $name did not start: $(head -c 300 "$W/$name.log")"
  port=${line##*:}
  eval "${name}_PID=$pid ${name}_PORT=$port"
}

# stats NAME FD: run the console's stats command, print its "protocol errors" count.
protocol_errors() {
  local name=$1 fd=$2 mark line
  mark=$(lines "$W/$name.log")
  echo stats >&"$fd"
  line=$(wait_for "$W/$name.log" "$mark" 'protocol errors [0-9]+' 5) ||
    fail "console $name did not answer stats"
  line=${line#*protocol errors }
  echo "${line%%,*}"
}

# listening PORT: a TCP socket listens on 127.0.0.1:PORT (from /proc/net/tcp: no
# connection is made, so no client reaches a server just to probe).
listening() {
  grep -qE "^ *[0-9]+: 0100007F:$(printf '%04X' "$1") 00000000:0000 0A " /proc/net/tcp
}

# start_haproxy NAME CONFIG_TEMPLATE: substitutes @FRONT@ with a free port (another one
# if that port was taken meanwhile), runs haproxy -db until its front port listens;
# sets HAP_PID and FRONT_PORT.
start_haproxy() {
  local name=$1 template=$2 try end
  for try in 1 2 3; do
    FRONT_PORT=$(client freeport) || fail "no free port"
    sed "s/@FRONT@/$FRONT_PORT/g" "$template" >"$W/$name.cfg"
    "$HAPROXY" -c -q -f "$W/$name.cfg" >"$W/$name-check.log" 2>&1 ||
      fail "haproxy -c rejects the generated config: $(cat "$W/$name-check.log")"
    "$HAPROXY" -db -f "$W/$name.cfg" >"$W/$name.log" 2>&1 &
    HAP_PID=$!
    PIDS+=("$HAP_PID")
    end=$(( $(now_ms) + 10000 ))
    while kill -0 "$HAP_PID" 2>/dev/null && ! listening "$FRONT_PORT"; do
      [ "$(now_ms)" -ge "$end" ] && fail "haproxy did not listen on $FRONT_PORT within 10 s"
      sleep 0.05
    done
    kill -0 "$HAP_PID" 2>/dev/null && return 0
    grep -q 'cannot bind' "$W/$name.log" || fail "haproxy exited: $(cat "$W/$name.log")"
  done
  fail "haproxy could not bind a front port in 3 tries"
}

# stat_of NAME FD LABEL: run the console's stats command, print the number after LABEL
# (e.g. "untrusted PROXY peers", "refused per source").
stat_of() {
  local name=$1 fd=$2 label=$3 mark line
  mark=$(lines "$W/$name.log")
  echo stats >&"$fd"
  line=$(wait_for "$W/$name.log" "$mark" "$label [0-9]+" 5) ||
    fail "console $name did not answer stats with \"$label\""
  line=${line#*"$label" }
  echo "${line%%[!0-9]*}"
}

# =========================================================================================
# Two consoles behind HAProxy: A requires the PROXY header, B takes it optionally. Both
# believe headers from HAProxy (127.0.0.1) only.
start_console A 7 --echo --proxy-protocol required --proxy-trusted 127.0.0.1
start_console B 8 --echo --proxy-protocol optional --proxy-trusted 127.0.0.1
ok "consoles A (required) on $A_PORT and B (optional) on $B_PORT"

# HAProxy's config: roundrobin, PROXY v2 to the servers, fast health checks that
# send a PROXY v2 LOCAL header and a framed "ping" and expect its echo.
cat >"$W/hap.tmpl" <<EOF
global
    maxconn 256
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    retries 1
frontend fe
    bind 127.0.0.1:@FRONT@
    default_backend be
backend be
    balance roundrobin
    option tcp-check
    tcp-check send-binary 0400000070696e67
    tcp-check expect binary 0400000070696e67
    default-server send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 1
    server s1 127.0.0.1:$A_PORT
    server s2 127.0.0.1:$B_PORT
EOF
start_haproxy hap "$W/hap.tmpl"
# A health check's ping reaching both consoles: both servers are up for HAProxy.
wait_for "$W/A.log" 0 'packet, 4 bytes: "ping"' 10 >/dev/null || fail "no health check reached console A"
wait_for "$W/B.log" 0 'packet, 4 bytes: "ping"' 10 >/dev/null || fail "no health check reached console B"
ok "haproxy on 127.0.0.1:$FRONT_PORT, health checks (PROXY v2 LOCAL + ping) answered by both"

# ---- a, b, c: 20 clients from 127.0.0.2 through HAProxy -------------------------------
A_MARK=$(lines "$W/A.log")
B_MARK=$(lines "$W/B.log")
client clients "$FRONT_PORT" 20 127.0.0.2 spread >"$W/clients1.out" || fail "(a) $(cat "$W/clients1.out")"
[ "$(grep -c '^ok ' "$W/clients1.out")" = 20 ] || fail "(a) not 20 echoes: $(cat "$W/clients1.out")"
ok "(a) 20 clients through haproxy got their echoes"

VIA_RE='via 127\.0\.0\.1:[0-9]+$'
while read -r _ addr; do
  re="connected from $(re_quote "$addr") $VIA_RE"
  if ! wait_for "$W/A.log" "$A_MARK" "$re" 0 >/dev/null && ! wait_for "$W/B.log" "$B_MARK" "$re" 0 >/dev/null; then
    fail "(b) no console shows \"connected from $addr via 127.0.0.1:PORT\" (A: $(grep -m3 'connected from 127.0.0.2' "$W/A.log" | tr '\n' '|') B: $(grep -m3 'connected from 127.0.0.2' "$W/B.log" | tr '\n' '|'))"
  fi
done <"$W/clients1.out"
line=$(grep -m1 -E "connected from 127\.0\.0\.2:[0-9]+ $VIA_RE" "$W/A.log" "$W/B.log" | head -n 1)
ok "(b) each client's own address shown with haproxy's: ${line#*:}"

# list shows the real address and the balancer in its "via" column: one client stays
# connected (client.py hold) while both consoles list their clients.
client hold "$FRONT_PORT" 127.0.0.2 >"$W/hold.out" 2>&1 &
HOLD_PID=$!; PIDS+=("$HOLD_PID")
line=$(wait_for "$W/hold.out" 0 '^(ok|FAIL) ' 10) || fail "(b) the held client did not connect"
[ "${line%% *}" = ok ] || fail "(b) held client: $line"
addr=${line#ok }
a_mark=$(lines "$W/A.log"); b_mark=$(lines "$W/B.log")
echo list >&7
echo list >&8
row_re="^[0-9]+ +$(re_quote "$addr") .* open +127\\.0\\.0\\.1:[0-9]+\$"
row=$(wait_for "$W/A.log" "$a_mark" "$row_re" 3 || wait_for "$W/B.log" "$b_mark" "$row_re" 0) ||
  fail "(b) no list row shows $addr with state open and via 127.0.0.1:PORT: $(tail -n +"$((a_mark + 1))" "$W/A.log" | grep -A3 '^id ' | tr '\n' '|')"
grep -qE '^id +address .* state +via$' "$W/A.log" "$W/B.log" || fail "(b) list has no via column"
kill "$HOLD_PID" 2>/dev/null
ok "(b) list: $row"

A_N=$(count "$W/A.log" "connected from 127\.0\.0\.2:[0-9]+ via" "$A_MARK")
B_N=$(count "$W/B.log" "connected from 127\.0\.0\.2:[0-9]+ via" "$B_MARK")
[ $((A_N + B_N)) -ge 20 ] || fail "(c) consoles saw $A_N + $B_N proxied clients, expected 20"
[ "$A_N" -ge 1 ] && [ "$B_N" -ge 1 ] || fail "(c) not spread: A saw $A_N, B saw $B_N"
ok "(c) spread over both instances: A $A_N, B $B_N"

# ---- health checks must not count as protocol errors ----------------------------------
pe=$(protocol_errors A 7)
[ "$pe" = 0 ] || fail "(b) console A counts $pe protocol errors from haproxy's health checks and clients"
pe=$(protocol_errors B 8)
[ "$pe" = 0 ] || fail "(b) console B counts $pe protocol errors from haproxy's health checks and clients"
ok "(b) no protocol errors on either instance after $(count "$W/A.log" '"ping"') + $(count "$W/B.log" '"ping"') health checks"

# ---- d: A quits; after HAProxy marks it down, everything goes to B --------------------
echo quit >&7
exited_ok "(d) console A after quit" "$A_PID"
wait_for "$W/hap.log" 0 'Server be/s1 is DOWN' 10 >/dev/null || fail "(d) haproxy did not mark s1 DOWN"
B_MARK=$(lines "$W/B.log")
client clients "$FRONT_PORT" 10 127.0.0.2 failover >"$W/clients2.out" || fail "(d) $(cat "$W/clients2.out")"
[ "$(grep -c '^ok ' "$W/clients2.out")" = 10 ] || fail "(d) not 10 echoes: $(cat "$W/clients2.out")"
while read -r _ addr; do
  wait_for "$W/B.log" "$B_MARK" "connected from $(re_quote "$addr") $VIA_RE" 2 >/dev/null ||
    fail "(d) console B did not serve $addr"
done <"$W/clients2.out"
ok "(d) s1 marked DOWN by the health check; 10 new clients all served by B"

# ---- e, f: hand-written headers straight to a third console (no health-check noise) ---
start_console C 9 --echo --proxy-protocol required --proxy-trusted 127.0.0.1

direct_echo() { # direct_echo WHAT EXPECTED_PEER ARGS...: one client, the console must show EXPECTED_PEER via it
  local what=$1 peer=$2 out mark
  shift 2
  mark=$(lines "$W/C.log")
  out=$(client direct "$C_PORT" echo "$@") || fail "(e) $what: $out"
  local me=${out#echo }
  wait_for "$W/C.log" "$mark" "connected from $(re_quote "$peer") via $(re_quote "$me")\$" 5 >/dev/null ||
    fail "(e) $what: console C does not show \"connected from $peer via $me\": $(tail -n +"$((mark + 1))" "$W/C.log" | head -n 5 | tr '\n' '|')"
  ok "(e) $what: \"connected from $peer via $me\", echo back"
}
direct_echo "PROXY v1 TCP4" "192.0.2.1:56324" --v1 "PROXY TCP4 192.0.2.1 127.0.0.1 56324 5000"
direct_echo "PROXY v1 TCP4 split over two reads" "198.51.100.7:40000" --v1 "PROXY TCP4 198.51.100.7 127.0.0.1 40000 5000" --split
direct_echo "PROXY v1 TCP6" "[2001:db8::1]:56324" --v1 "PROXY TCP6 2001:db8::1 ::1 56324 5000"
direct_echo "PROXY v2 TCP4 with TLVs" "203.0.113.9:61000" --v2 203.0.113.9 61000 127.0.0.1 5000

pe0=$(protocol_errors C 9)
mark=$(lines "$W/C.log")
for bad in "PROXY TCP4 not-an-address 127.0.0.1 1 2" "PROXY UDP9 1.2.3.4 5.6.7.8 1 2" "GET / HTTP/1.0"; do
  out=$(client direct "$C_PORT" closed --raw "$bad") || fail "(f) malformed header \"$bad\": $out"
done
out=$(client direct "$C_PORT" closed) || fail "(f) no header in required mode: $out"
pe1=$(protocol_errors C 9)
[ $((pe1 - pe0)) = 4 ] || fail "(f) protocol errors went from $pe0 to $pe1, expected +4"
n=$(count "$W/C.log" 'connected from' "$mark")
[ "$n" = 0 ] || fail "(f) the host heard of $n rejected connections: $(tail -n +"$((mark + 1))" "$W/C.log" | grep 'connected from' | head -n 3)"
ok "(f) 3 malformed headers and 1 missing one closed unseen by the host, protocol errors $pe0 -> $pe1"

un0=$(stat_of C 9 "untrusted PROXY peers")
mark=$(lines "$W/C.log")
out=$(client direct "$C_PORT" closed --bind 127.0.0.2 --v1 "PROXY TCP4 192.0.2.66 127.0.0.1 6666 5000") ||
  fail "(f) a header from the untrusted 127.0.0.2: $out"
un1=$(stat_of C 9 "untrusted PROXY peers")
pe2=$(protocol_errors C 9)
[ $((un1 - un0)) = 1 ] && [ $((pe2 - pe1)) = 1 ] ||
  fail "(f) untrusted header: untrusted peers $un0 -> $un1, protocol errors $pe1 -> $pe2, expected +1 each"
n=$(count "$W/C.log" 'connected from' "$mark")
[ "$n" = 0 ] || fail "(f) the host heard of the untrusted peer's connection: $(tail -n +"$((mark + 1))" "$W/C.log" | grep 'connected from' | head -n 1)"
ok "(f) a spoofed header from the untrusted 127.0.0.2 closed unseen, untrusted peers $un0 -> $un1"

# ---- g: optional mode serves a plain client --------------------------------------------
mark=$(lines "$W/B.log")
out=$(client direct "$B_PORT" echo) || fail "(g) plain client on optional console B: $out"
me=${out#echo }
wait_for "$W/B.log" "$mark" "connected from $(re_quote "$me")\$" 5 >/dev/null ||
  fail "(g) console B does not show the plain client $me"
out=$(client direct "$B_PORT" echo --v1 "PROXY TCP4 192.0.2.44 127.0.0.1 1234 5000") || fail "(g) v1 header on optional console B: $out"
wait_for "$W/B.log" "$mark" "connected from 192\.0\.2\.44:1234 via " 5 >/dev/null ||
  fail "(g) console B (optional) did not parse a v1 header"
ok "(g) optional mode: plain client $me served as itself, a v1 header still parsed"

mark=$(lines "$W/B.log")
out=$(client direct "$B_PORT" echo --bind 127.0.0.2) || fail "(g) plain client from 127.0.0.2 on optional console B: $out"
me=${out#echo }
wait_for "$W/B.log" "$mark" "connected from $(re_quote "$me")\$" 5 >/dev/null ||
  fail "(g) console B does not show the untrusted plain client $me as itself"
un0=$(stat_of B 8 "untrusted PROXY peers")
out=$(client direct "$B_PORT" closed --bind 127.0.0.2 --v1 "PROXY TCP4 192.0.2.67 127.0.0.1 6666 5000") ||
  fail "(g) a header from the untrusted 127.0.0.2 on optional console B: $out"
un1=$(stat_of B 8 "untrusted PROXY peers")
[ $((un1 - un0)) = 1 ] || fail "(g) untrusted peers on B went from $un0 to $un1, expected +1"
[ "$(count "$W/B.log" 'connected from 192\.0\.2\.67' "$mark")" = 0 ] || fail "(g) console B met the spoofed 192.0.2.67"
ok "(g) optional mode, untrusted 127.0.0.2: plain client $me served as itself, its header closed unseen"

echo quit >&8
echo quit >&9
exited_ok "console B after quit" "$B_PID"
exited_ok "console C after quit" "$C_PID"
kill "$HAP_PID" 2>/dev/null
wait_exit "$HAP_PID" 5 || fail "haproxy did not stop on SIGTERM"

# ---- j: --max-per-source behind HAProxy -------------------------------------------------
start_console D 6 --echo --proxy-protocol required --proxy-trusted 127.0.0.1 --max-per-source 3
cat >"$W/hap2.tmpl" <<EOF
global
    maxconn 256
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:@FRONT@
    default_backend be
backend be
    server d 127.0.0.1:$D_PORT send-proxy-v2
EOF
start_haproxy hap2 "$W/hap2.tmpl"
mark=$(lines "$W/D.log")
client limit "$FRONT_PORT" 127.0.0.2 5 127.0.0.3 3 >"$W/limit.out" || fail "(j) $(cat "$W/limit.out")"
grep -qx '127.0.0.2 served 3 closed 2' "$W/limit.out" && grep -qx '127.0.0.3 served 3 closed 0' "$W/limit.out" ||
  fail "(j) expected 127.0.0.2: 3 served, 2 closed; 127.0.0.3: 3 served: $(tr '\n' '|' <"$W/limit.out")"
rps=$(stat_of D 6 "refused per source")
[ "$rps" = 2 ] || fail "(j) console D counts $rps refused per source, expected 2"
n=$(count "$W/D.log" "connected from 127\.0\.0\.2:[0-9]+ $VIA_RE" "$mark")
[ "$n" = 3 ] || fail "(j) console D met $n clients from 127.0.0.2, expected 3"
ok "(j) --max-per-source 3 via haproxy: $(tr '\n' ';' <"$W/limit.out") refused per source $rps"
echo quit >&6
exited_ok "console D after quit" "$D_PID"
kill "$HAP_PID" 2>/dev/null
wait_exit "$HAP_PID" 5 || fail "haproxy (j) did not stop on SIGTERM"

# ---- h: SO_REUSEPORT ---------------------------------------------------------------------
"$ECHO" --port 0 --reuseport --verbose >"$W/R1.log" 2>&1 &
R1_PID=$!; PIDS+=("$R1_PID")
line=$(wait_for "$W/R1.log" 0 '^listening on 127\.0\.0\.1:[0-9]+$' 10) || fail "(h) iocpsrv-echo --reuseport did not start: $(cat "$W/R1.log")"
RP=${line##*:}
"$ECHO" --port "$RP" --reuseport --verbose >"$W/R2.log" 2>&1 &
R2_PID=$!; PIDS+=("$R2_PID")
wait_for "$W/R2.log" 0 '^listening on ' 10 >/dev/null || fail "(h) a second iocpsrv-echo --reuseport on port $RP did not start: $(cat "$W/R2.log")"
client clients "$RP" 20 127.0.0.2 reuse >"$W/clients3.out" || fail "(h) $(cat "$W/clients3.out")"
n1=$(count "$W/R1.log" '^connect ')
n2=$(count "$W/R2.log" '^connect ')
[ $((n1 + n2)) = 20 ] || fail "(h) the two reuseport listeners saw $n1 + $n2 connections, expected 20"
[ "$n1" -ge 1 ] && [ "$n2" -ge 1 ] || fail "(h) the kernel did not spread: $n1 and $n2"
"$ECHO" --port "$RP" --verbose >"$W/R3.log" 2>&1 &
R3_PID=$!; PIDS+=("$R3_PID")
wait_exit "$R3_PID" 10 || fail "(h) iocpsrv-echo without --reuseport on a taken port kept running"
wait "$R3_PID"; rc=$?
[ "$rc" = 1 ] && grep -q 'address already in use' "$W/R3.log" || fail "(h) without --reuseport: exit $rc, $(cat "$W/R3.log")"
ok "(h) two iocpsrv-echo --reuseport on port $RP: $n1 + $n2 of 20 connections; without the flag: address already in use"
kill "$R1_PID" "$R2_PID" 2>/dev/null
exited_ok "(h) iocpsrv-echo --reuseport 1 after SIGTERM" "$R1_PID"
exited_ok "(h) iocpsrv-echo --reuseport 2 after SIGTERM" "$R2_PID"

# ---- i: the sample config, ports swapped for free ones --------------------------------
[ -f "$SAMPLE_CFG" ] || fail "(i) no $SAMPLE_CFG"
"$HAPROXY" -c -q -f "$SAMPLE_CFG" >"$W/sample-check.log" 2>&1 || fail "(i) haproxy -c rejects $SAMPLE_CFG: $(cat "$W/sample-check.log")"
"$ECHO" --port 0 --proxy-protocol required --proxy-trusted 127.0.0.1 --verbose >"$W/S1.log" 2>&1 &
S1_PID=$!; PIDS+=("$S1_PID")
"$ECHO" --port 0 --proxy-protocol required --proxy-trusted 127.0.0.1 --verbose >"$W/S2.log" 2>&1 &
S2_PID=$!; PIDS+=("$S2_PID")
line=$(wait_for "$W/S1.log" 0 '^listening on 127\.0\.0\.1:[0-9]+$' 10) || fail "(i) echo 1 did not start: $(cat "$W/S1.log")"
P1=${line##*:}
line=$(wait_for "$W/S2.log" 0 '^listening on 127\.0\.0\.1:[0-9]+$' 10) || fail "(i) echo 2 did not start: $(cat "$W/S2.log")"
P2=${line##*:}
grep -q '127\.0\.0\.1:5000$' "$SAMPLE_CFG" && grep -q '127\.0\.0\.1:5001$' "$SAMPLE_CFG" && grep -q '127\.0\.0\.1:5002$' "$SAMPLE_CFG" ||
  fail "(i) $SAMPLE_CFG no longer binds 127.0.0.1:5000 with servers on 5001 and 5002"
sed -e 's/127\.0\.0\.1:5000$/127.0.0.1:@FRONT@/' -e "s/127\.0\.0\.1:5001\$/127.0.0.1:$P1/" \
    -e "s/127\.0\.0\.1:5002\$/127.0.0.1:$P2/" "$SAMPLE_CFG" >"$W/sample.tmpl"
start_haproxy sample "$W/sample.tmpl"
# The sample checks every second; its first checks reaching both servers mean HAProxy is up.
wait_for "$W/S1.log" 0 '^connect ' 10 >/dev/null || fail "(i) no health check reached echo 1"
wait_for "$W/S2.log" 0 '^connect ' 10 >/dev/null || fail "(i) no health check reached echo 2"
m1=$(lines "$W/S1.log"); m2=$(lines "$W/S2.log")
client clients "$FRONT_PORT" 6 127.0.0.2 sample >"$W/clients4.out" || fail "(i) $(cat "$W/clients4.out")"
n1=$(count "$W/S1.log" "^connect +[0-9]+ 127\.0\.0\.2:[0-9]+ $VIA_RE" "$m1")
n2=$(count "$W/S2.log" "^connect +[0-9]+ 127\.0\.0\.2:[0-9]+ $VIA_RE" "$m2")
[ $((n1 + n2)) = 6 ] || fail "(i) the sample's servers logged $n1 + $n2 proxied clients, expected 6"
ok "(i) samples/haproxy/haproxy.cfg: 6 clients echoed through it ($n1 + $n2 per server, leastconn)"
kill "$S1_PID" "$S2_PID" 2>/dev/null
exited_ok "(i) iocpsrv-echo 1 after SIGTERM" "$S1_PID"
exited_ok "(i) iocpsrv-echo 2 after SIGTERM" "$S2_PID"

# No sanitizer report in any program's output (the asan/tsan presets run this test too).
if grep -lE 'ERROR: (Address|Leak)Sanitizer|runtime error:|WARNING: ThreadSanitizer' "$W"/*.log >/dev/null 2>&1; then
  fail "sanitizer report in $(grep -lE 'ERROR: (Address|Leak)Sanitizer|runtime error:|WARNING: ThreadSanitizer' "$W"/*.log | xargs -n1 basename | tr '\n' ' ')"
fi

say "PASS test_haproxy"
exit 0
