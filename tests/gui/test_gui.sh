#!/usr/bin/env bash
# test_samples_gui: iocpsrv-server-gui and iocpsrv-client-gui under Wine on a virtual X
# display (Xvfb). Both run on iocpsrv.dll: the server listens, the client uses the
# library's client role (iocpsrv_start, iocpsrv_connect). The client connects, sends a
# line and waits for its echo, then floods the server (99,999 "Test Item N" packets by
# default, every echo verified) while the server echoes; the test checks what both
# programs report (exit status, summary lines on stdout and in --summary files, the
# client's engine, the bytes its flood engine sent against those the server received),
# takes a screenshot of each window while it is shown, checks that neither is blank, and
# keeps them under ARTIFACTS. Then, with the server gone, the client connects to its
# port again and must report the refusal with the engine's reason (connect-refused).
# With --objdump, the client's imports are checked too: iocpsrv_connect from
# iocpsrv.dll, and no Winsock DLL (the library does all of its networking).
#
#   test_gui.sh --server EXE --client EXE --wine-run cmake/wine-run.sh --artifacts DIR
#               [--prefix WINEPREFIX] [--count N] [--objdump OBJDUMP]
#
# Exit 0 pass, 1 fail, 77 skipped (no Xvfb and it cannot be installed: the reason is
# printed). Tools come from Debian (xvfb, x11-apps for xwd, imagemagick); when missing
# and we are root with apt-get, they are installed. Wine runs in a prefix of its own
# (default: next to ARTIFACTS), so `wineserver -k` at the end touches no other test,
# and that prefix gets two settings the screenshots need: Wine draws the windows' title
# bars itself (there is no window manager), with the Marlett font for their buttons.
set -u

server= client= wine_run= artifacts= prefix= count=99999 objdump=
while [ $# -gt 0 ]; do
  case "$1" in
    --server) server=$2; shift 2 ;;
    --client) client=$2; shift 2 ;;
    --wine-run) wine_run=$2; shift 2 ;;
    --artifacts) artifacts=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --count) count=$2; shift 2 ;;
    --objdump) objdump=$2; shift 2 ;;
    *) echo "test_gui.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$server" ] || [ -z "$client" ] || [ -z "$wine_run" ] || [ -z "$artifacts" ]; then
  echo "usage: test_gui.sh --server EXE --client EXE --wine-run SCRIPT --artifacts DIR" >&2
  exit 2
fi
mkdir -p "$artifacts" && artifacts=$(cd "$artifacts" && pwd) || exit 1
[ -n "$prefix" ] || prefix="$(dirname "$artifacts")/wineprefix-gui"
case "$prefix" in /*) ;; *) prefix="$PWD/$prefix" ;; esac

say() { echo "test_gui: $*"; }
skip() { echo "test_gui: SKIPPED: $*"; exit 77; }
failures=0
fail() { echo "test_gui: FAIL: $*"; failures=$((failures + 1)); }

# ---- Tools --------------------------------------------------------------------------
# /usr/bin/convert, not a stand-in earlier in PATH: identify and convert from one place.
have_tools() {
  command -v Xvfb >/dev/null && command -v xwd >/dev/null && [ -x /usr/bin/identify ] &&
    [ -x /usr/bin/convert ]
}
if ! have_tools; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing xvfb, x11-apps and imagemagick with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update && apt-get install -y --no-install-recommends xvfb x11-apps imagemagick \
        xauth; } >"${TMPDIR:-/tmp}/test_gui_apt.log" 2>&1 ||
      skip "apt-get could not install xvfb/x11-apps/imagemagick (see ${TMPDIR:-/tmp}/test_gui_apt.log)"
  fi
  have_tools || skip "Xvfb, xwd and ImageMagick are needed (Debian: xvfb x11-apps imagemagick)"
fi
identify=/usr/bin/identify
convert=/usr/bin/convert
[ -f "$server" ] || { echo "test_gui: no $server"; exit 1; }
[ -f "$client" ] || { echo "test_gui: no $client"; exit 1; }

# ---- The client is built on the library ---------------------------------------------
# Its import table: the client role from iocpsrv.dll, and no socket library of its own.
if [ -n "$objdump" ] && [ -x "$objdump" ]; then
  imports=$("$objdump" -p "$client" 2>/dev/null)
  dlls=$(printf '%s\n' "$imports" | sed -n 's/^[[:space:]]*DLL Name: //p' | tr '\n' ' ')
  echo "test_gui: client imports: $dlls"
  printf '%s\n' "$dlls" | grep -qi 'iocpsrv\.dll' || fail "the client does not import iocpsrv.dll"
  for fn in iocpsrv_start iocpsrv_connect; do
    printf '%s\n' "$imports" | grep -Eq "[[:space:]]$fn\$" || fail "the client does not import $fn"
  done
  if printf '%s\n' "$dlls" | grep -Eqi 'ws2_32|wsock32|mswsock'; then
    fail "the client imports a Winsock DLL: it should leave its sockets to iocpsrv"
  fi
else
  echo "test_gui: no --objdump: the client's imports are not checked"
fi

# ---- Scratch space and cleanup ------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/test_gui.XXXXXX")
rm -f "$artifacts"/*.png "$artifacts"/*.txt
export WINEPREFIX="$prefix"
xvfb_pid= server_pid= client_pid=
cleanup() {
  # Our own processes only, by pid; then the prefix's wineserver (ours alone).
  for p in $client_pid $server_pid; do kill -9 "$p" 2>/dev/null; done
  if command -v wineserver >/dev/null; then wineserver -k 2>/dev/null
  elif [ -x /usr/lib/wine/wineserver ]; then /usr/lib/wine/wineserver -k 2>/dev/null; fi
  [ -n "$xvfb_pid" ] && kill "$xvfb_pid" 2>/dev/null
  [ -n "$xvfb_pid" ] && wait "$xvfb_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# Windows paths for the programs' --summary files: Wine maps / to Z:.
winpath() { printf 'Z:%s' "$(printf '%s' "$1" | sed 's,/,\\,g')"; }

# wait_for FILE REGEX SECONDS [PID]: until a line of FILE matches, or the time is up
# (or PID is gone). Prints the line.
wait_for() {
  local file=$1 re=$2 secs=$3 pid=${4:-} i line
  for ((i = 0; i < secs * 10; i++)); do
    line=$(grep -E -m1 "$re" "$file" 2>/dev/null) && { printf '%s\n' "$line"; return 0; }
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      line=$(grep -E -m1 "$re" "$file" 2>/dev/null) && { printf '%s\n' "$line"; return 0; }
      return 1
    fi
    sleep 0.1
  done
  return 1
}

# wait_exit PID SECONDS: the exit status, or 124 after SECONDS (the process is killed).
wait_exit() {
  local pid=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid"; return $?; }
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 124
}

# ---- The display --------------------------------------------------------------------
# -displayfd: Xvfb picks a free display number itself and writes it when it is ready.
Xvfb -displayfd 9 -screen 0 1600x900x24 -nolisten tcp 9>"$tmp/display" >"$tmp/xvfb.log" 2>&1 &
xvfb_pid=$!
for ((i = 0; i < 100; i++)); do
  [ -s "$tmp/display" ] && break
  kill -0 "$xvfb_pid" 2>/dev/null || break
  sleep 0.1
done
[ -s "$tmp/display" ] || { cat "$tmp/xvfb.log"; skip "Xvfb did not start"; }
export DISPLAY=":$(tr -d '\n' <"$tmp/display")"
say "Xvfb on display $DISPLAY, Wine prefix $WINEPREFIX"

# screenshot NAME [X Y W H]: the screen, or a window's part of it, as a PNG artifact.
screenshot() {
  local name=$1 geometry=
  [ $# -ge 5 ] && geometry="-crop ${4}x${5}+${2}+${3} +repage"
  # shellcheck disable=SC2086
  xwd -root -silent -display "$DISPLAY" >"$tmp/$name.xwd" 2>"$tmp/xwd.err" &&
    "$convert" "xwd:$tmp/$name.xwd" $geometry "$artifacts/$name.png" 2>>"$tmp/xwd.err"
}

# The window's rectangle from a program's "window x= y= w= h=" report line.
window_of() {
  sed -n 's/.*: window x=\(-\{0,1\}[0-9]*\) y=\(-\{0,1\}[0-9]*\) w=\([0-9]*\) h=\([0-9]*\).*/\1 \2 \3 \4/p' "$1" |
    head -1
}

# check_picture NAME: not blank (a window has text, frames, buttons: many colours).
check_picture() {
  local f="$artifacts/$1.png" colours size
  [ -s "$f" ] || { fail "screenshot $1 was not taken: $(cat "$tmp/xwd.err" 2>/dev/null)"; return; }
  colours=$("$identify" -format '%k' "$f" 2>/dev/null)
  size=$("$identify" -format '%wx%h' "$f" 2>/dev/null)
  if [ -z "$colours" ] || [ "$colours" -lt 16 ]; then
    fail "screenshot $1 ($size) looks blank: ${colours:-?} colours"
  else
    say "screenshot $artifacts/$1.png: $size, $colours colours"
  fi
}

# ---- The Wine prefix ----------------------------------------------------------------
# Created by wine-run.sh on first use. No window manager runs on the display, so Wine
# draws the title bars itself ("Decorated"="N", for these two programs only); their
# caption buttons use Marlett, which Wine 8 finds only in the prefix's Fonts folder.
"$wine_run" cmd /c exit 0 >/dev/null 2>&1
cat >"$tmp/gui.reg" <<'EOF'
REGEDIT4

[HKEY_CURRENT_USER\Software\Wine\AppDefaults\iocpsrv-server-gui.exe\X11 Driver]
"Decorated"="N"

[HKEY_CURRENT_USER\Software\Wine\AppDefaults\iocpsrv-client-gui.exe\X11 Driver]
"Decorated"="N"
EOF
"$wine_run" regedit /S "$(winpath "$tmp/gui.reg")" >/dev/null 2>&1 || say "regedit failed (no title bars)"
for f in /usr/share/wine/fonts/marlett.ttf; do
  [ -f "$f" ] && [ -d "$WINEPREFIX/drive_c/windows/Fonts" ] &&
    cp -f "$f" "$WINEPREFIX/drive_c/windows/Fonts/" 2>/dev/null
done

# ---- The server ---------------------------------------------------------------------
: >"$tmp/server.txt"
: >"$tmp/client.txt"
"$wine_run" "$server" --port 0 --autostart --exit-after-clients 2 --quiet \
  --window 0,0,780,560 --summary "$(winpath "$tmp/server.txt")" \
  >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!
if ! line=$(wait_for "$tmp/server.txt" ': listening ' 60 "$server_pid"); then
  fail "the server did not report 'listening' within 60 s"
  cat "$tmp/server.txt" "$tmp/server.out"
  tail -20 "$tmp/server.err"
  exit 1
fi
port=${line##*:}
say "server: $line"

# ---- The client: a line, its echo, then the flood ----------------------------------
"$wine_run" "$client" --host 127.0.0.1 --port "$port" --send "Hello from test_samples_gui" \
  --flood --count "$count" --message "Test Item " --autoclose --quiet \
  --close-when-exists "$(winpath "$tmp/close.flag")" --window 800,0,760,430 \
  --summary "$(winpath "$tmp/client.txt")" >"$tmp/client.out" 2>"$tmp/client.err" &
client_pid=$!

server_geom=$(window_of "$tmp/server.txt")
if wait_for "$tmp/client.txt" ': flood started ' 60 "$client_pid" >/dev/null; then
  # While the flood runs: both clients in the server's list, packets in the log.
  sleep 2
  # shellcheck disable=SC2086
  screenshot gui-server-flooding $server_geom
else
  fail "the client did not start its flood within 60 s"
fi
if line=$(wait_for "$tmp/client.txt" ': flood ok=' 120 "$client_pid"); then
  say "client: $line"
  sleep 0.5 # the last repaint
  client_geom=$(window_of "$tmp/client.txt")
  # shellcheck disable=SC2086
  screenshot gui-client $client_geom
  # shellcheck disable=SC2086
  screenshot gui-server $server_geom
  screenshot gui-screen
else
  fail "the client did not finish its flood"
fi
touch "$tmp/close.flag" # the client may close now

wait_exit "$client_pid" 30
client_rc=$?
client_pid=
wait_exit "$server_pid" 30
server_rc=$?
server_pid=

# ---- A refused connection: the server is gone, its port closed ----------------------
# The client must get the engine's disconnect with IOCPSRV_REASON_CONNECT_REFUSED and
# show it (exit 1: what was asked did not succeed).
: >"$tmp/refused.txt"
"$wine_run" "$client" --host 127.0.0.1 --port "$port" --connect --autoclose --quiet \
  --window 800,0,760,430 --summary "$(winpath "$tmp/refused.txt")" \
  >"$tmp/refused.out" 2>"$tmp/refused.err" &
client_pid=$!
wait_exit "$client_pid" 60
refused_rc=$?
client_pid=

cp "$tmp/server.txt" "$artifacts/server-summary.txt"
cp "$tmp/client.txt" "$artifacts/client-summary.txt"
cp "$tmp/refused.txt" "$artifacts/client-refused-summary.txt"
say "client report:"; sed 's/^/  /' "$tmp/client.txt"
say "server report:"; sed 's/^/  /' "$tmp/server.txt"
say "client report, refused:"; sed 's/^/  /' "$tmp/refused.txt"

# ---- What the programs said ---------------------------------------------------------
[ "$client_rc" = 0 ] || fail "client exit status $client_rc (want 0)"
[ "$server_rc" = 0 ] || fail "server exit status $server_rc (want 0)"
grep -q ": echo ok bytes=27$" "$tmp/client.txt" || fail "client: no 'echo ok bytes=27' line"
grep -Eq ": flood ok=1 verified=$count count=$count " "$tmp/client.txt" ||
  fail "client: the flood did not verify all $count echoes"
want="summary ok=1 connected=1 line_echoed=1 flood_ok=1 flood_verified=$count flood_count=$count "
grep -q ": $want" "$tmp/client.txt" || fail "client: no '$want' summary"
grep -q ": $want" "$tmp/client.out" || fail "client: the summary line is not on its stdout"
packets=$((count + 1))
want="summary ok=1 port=$port clients=2 packets_in=$packets packets_out=$packets "
grep -q ": $want" "$tmp/server.txt" || fail "server: no '$want' summary"
grep -q ": $want" "$tmp/server.out" || fail "server: the summary line is not on its stdout"
grep -q "protocol_errors=0 echo_errors=0$" "$tmp/server.txt" || fail "server: errors reported"

# The client ran on the library, and its flood engine's counters match the server's:
# the server received the flood's bytes plus the line (27 bytes and a 4-byte header).
grep -Eq ": engine [0-9]+\.[0-9]+\.[0-9]+ iocp$" "$tmp/client.txt" ||
  fail "client: no 'engine <version> iocp' line (is it running on iocpsrv.dll?)"
flood_out=$(sed -n 's/.*: flood ok=1 .* bytes_out=\([0-9]*\) bytes_in=\([0-9]*\) .*/\1/p' "$tmp/client.txt")
flood_in=$(sed -n 's/.*: flood ok=1 .* bytes_out=\([0-9]*\) bytes_in=\([0-9]*\) .*/\2/p' "$tmp/client.txt")
server_in=$(sed -n 's/.*: summary .* bytes_in=\([0-9]*\) .*/\1/p' "$tmp/server.txt")
if [ -z "$flood_out" ] || [ -z "$flood_in" ] || [ -z "$server_in" ]; then
  fail "no byte counts in the client's flood line or the server's summary"
else
  [ "$flood_in" = "$flood_out" ] || fail "client: the flood received $flood_in bytes for $flood_out sent"
  [ "$server_in" = $((flood_out + 31)) ] ||
    fail "server: $server_in bytes in, want the flood's $flood_out + 31 of the line"
fi

# The refusal, with the engine's reason.
[ "$refused_rc" = 1 ] || fail "refused client: exit status $refused_rc (want 1)"
grep -Eq ": connect failed: .*\(connect-refused\)$" "$tmp/refused.txt" ||
  fail "refused client: no 'connect failed: ... (connect-refused)' line"
grep -q ": summary ok=0 connected=0 " "$tmp/refused.txt" ||
  fail "refused client: no 'summary ok=0 connected=0' line"

for shot in gui-server-flooding gui-server gui-client; do check_picture "$shot"; done

if [ "$failures" -gt 0 ]; then
  for f in client.err server.err refused.err; do
    [ -s "$tmp/$f" ] && { say "$f (last lines):"; tail -15 "$tmp/$f" | sed 's/^/  /'; }
  done
  say "$failures check(s) failed; artifacts in $artifacts"
  exit 1
fi
say "passed: $count packets flooded and verified; screenshots in $artifacts"
exit 0
