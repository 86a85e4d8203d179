#!/bin/bash
# `pyro-agent files commit` across kill -9, against a scratch directory (no sandbox needed):
# a commit stopped at each PYRO_FILES_PAUSE_AT point and killed is rolled back (or forward once
# committed) by the next files command; forged journals touch nothing outside ROOT. TAP output.
#   tests/test_files_journal.sh AGENT [RUN]     (RUN: e.g. qemu-aarch64)
set -u
AGENT=$1
RUN=${2:-}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
WS=$T/ws
n=0
fails=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }
files() { $RUN "$AGENT" files "$@"; }

reset() {
  rm -rf "$WS" "$T"/.pyro-files.* "$T/outside"
  mkdir -p "$WS/d"
  echo old-a > "$WS/a"
  echo old-b > "$WS/d/b"
  echo old-g > "$WS/gone"
}
# Every file with its content, and every directory: compared whole.
state() { (cd "$WS" && find . | LC_ALL=C sort | while read -r f; do if [ -f "$f" ]; then echo "$f $(cat "$f")"; else echo "$f"; fi; done; ls -a "$T" | grep '^\.pyro-files\.journal'); }
records() { printf 'W 644 6 a\0new-a\nW 644 6 d/b\0new-b\nD gone\0W 644 6 n/e/c\0new-c\nE\0'; }

reset
OLD=$(state)
records | files commit "$WS" > "$T/out" 2> "$T/err"
ok $? "a commit goes through"
NEW=$(state)
[ "$NEW" = "$(printf '.\n./a new-a\n./d\n./d/b new-b\n./n\n./n/e\n./n/e/c new-c')" ]
ok $? "it changed exactly what it was asked to ($(tr '\n' ' ' <<< "$NEW"))"

for point in commit-writing commit-written commit-renaming commit-renamed commit-placed commit-committed commit-cleaned; do
  reset
  # Not through files(): $! must be the agent itself, not a subshell around it.
  records | PYRO_FILES_PAUSE_AT=$point $RUN "$AGENT" files commit "$WS" > "$T/out" 2> "$T/err" &
  pid=$!
  for _ in $(seq 1 500); do grep -q "paused at $point" "$T/err" && break; sleep 0.01; done
  grep -q "paused at $point" "$T/err"
  ok $? "$point: the commit paused there"
  kill -9 $pid
  wait $pid 2> /dev/null
  files ls "$WS" "" > /dev/null 2> "$T/rec"
  ok $? "$point: the next files command runs ($(cat "$T/rec"))"
  now=$(state)
  case $point in commit-committed | commit-cleaned) want=$NEW ;; *) want=$OLD ;; esac
  [ "$now" = "$want" ]
  ok $? "$point: wholly $([ "$want" = "$OLD" ] && echo old || echo new), no temporary, no journal ($(tr '\n' ' ' <<< "$now"))"
done

# Forged journals: nothing outside ROOT changes, the journal goes.
forge() {
  reset
  mkdir -p "$T/outside"
  echo precious > "$T/outside/x"
  echo aside > "$T/outside/.pyro-old.1.1"
  echo temp > "$T/outside/.pyro-new.1.1"
  ln -s "$T/outside" "$WS/link"
  before=$(ls -la "$T/outside"; cat "$T/outside"/* "$T/outside"/.pyro-*; state)
  printf "$1" > "$T/.pyro-files.journal"
  files ls "$WS" "" > /dev/null 2> "$T/rec"
  rc=$?
  after=$(ls -la "$T/outside"; cat "$T/outside"/* "$T/outside"/.pyro-*; state)
  [ $rc = 0 ] && [ "$before" = "$after" ] && [ ! -e "$T/.pyro-files.journal" ]
  ok $? "forged: $2 ($(cat "$T/rec"))"
}
forge 'PYROF1\0F1W .pyro-new.1.1 .pyro-old.1.1 ../outside/x\0P\0' '`..` in a path'
forge "PYROF1\0F1W .pyro-new.1.1 .pyro-old.1.1 $T/outside/x\0P\0" 'an absolute path'
forge 'PYROF1\0F1W .pyro-new.1.1 .pyro-old.1.1 link/x\0F1D - .pyro-old.1.1 link/x\0Mlink/y\0P\0' 'a symlink on the way, to real pattern names'
forge 'PYROF1\0F1W .pyro-new.1.1 ../outside/x a\0F1W ../outside/x .pyro-old.1.1 a\0F1W .pyro-new.1.1 .pyro-old.1.2 a\0P\0' 'names off the pattern, an aside pointing outside'
forge 'PYROF1\0F0W .pyro-new.1.1 .pyro-old.1.1 link\0P\0' 'the symlink itself named as a placed new file'
forge 'PYROF1\0F1W .pyro-new.1.1 .pyro-old.1.1 a' 'a torn last record'
forge 'garbage\0' 'not a journal'
reset
ln -s "$T/outside/j" "$T/.pyro-files.journal"
mkdir -p "$T/outside" && printf 'PYROF1\0F1W .pyro-new.1.1 .pyro-old.1.1 a\0P\0' > "$T/outside/j"
files ls "$WS" "" > /dev/null 2> "$T/rec"
[ ! -L "$T/.pyro-files.journal" ] && [ -f "$T/outside/j" ] && [ "$(state)" = "$OLD" ]
ok $? "a journal that is a symlink is removed, its target untouched ($(cat "$T/rec"))"

echo "1..$n"
[ $fails = 0 ]
