#!/usr/bin/env bash
# Tells the August 2019 exchange between Tehran and Washington through
# President Macron (the Élysée channel) and Prime Minister Abe (the Tokyo
# channel), with the backchannel command line, against a running server
# whose record is empty. After each day of the story it prints the events
# that day recorded, one line each, as `backchannel watch` shows them. At the
# end it says where the board (DESIGN §9) shows the whole story, and with
# which token to sign in.
#
#   cargo run --release               # in another terminal: a fresh server;
#   examples/biarritz.sh              # in this one, once it logs `serving`
#
# Settings (environment):
#   BACKCHANNEL_ADDR        the server (default http://127.0.0.1:50051)
#   BACKCHANNEL_TOKEN       the admin token (default: the file
#                           BACKCHANNEL_TOKEN_FILE names, else the server's
#                           ./backchannel-data/admin.token, or
#                           $BACKCHANNEL_DATA_DIR/admin.token)
#   BACKCHANNEL_BIN         the backchannel binary (default: on PATH, else
#                           target/release or target/debug of this checkout)
#   DEADLINE_SECONDS        how far ahead the stand-in for the 6 September
#                           deadline lies (default 6)
# The texts are paraphrases written for this example.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BACKCHANNEL_BIN:-}
if [ -z "$BIN" ]; then
  if command -v backchannel >/dev/null; then BIN=backchannel
  elif [ -x "$here/target/release/backchannel" ]; then BIN=$here/target/release/backchannel
  elif [ -x "$here/target/debug/backchannel" ]; then BIN=$here/target/debug/backchannel
  else echo "error: no backchannel binary: run 'cargo build --release' first, or set BACKCHANNEL_BIN" >&2; exit 1
  fi
fi
export BACKCHANNEL_ADDR=${BACKCHANNEL_ADDR:-http://127.0.0.1:50051}
DEADLINE_SECONDS=${DEADLINE_SECONDS:-6}
token_from="BACKCHANNEL_TOKEN"
if [ -z "${BACKCHANNEL_TOKEN:-}" ]; then
  token_file=${BACKCHANNEL_TOKEN_FILE:-${BACKCHANNEL_DATA_DIR:-./backchannel-data}/admin.token}
  if [ ! -r "$token_file" ]; then
    echo "error: no admin token in $token_file: set BACKCHANNEL_TOKEN, or run this where the server keeps it (a server still starting has not written it yet)" >&2
    exit 1
  fi
  BACKCHANNEL_TOKEN=$(cat "$token_file")
  token_from=$token_file
fi
ADMIN=$BACKCHANNEL_TOKEN
unset BACKCHANNEL_TOKEN BACKCHANNEL_TOKEN_FILE BACKCHANNEL_OUTPUT

# bc TOKEN ARGS…: one call as the party holding TOKEN.
bc() { local token=$1; shift; BACKCHANNEL_TOKEN=$token "$BIN" "$@"; }
# json_field NAME: the string value of NAME in one JSON line on stdin.
json_field() { sed -E "s/.*\"$1\":\"([^\"]*)\".*/\\1/"; }
say() { printf '\n== %s\n' "$*"; }

# The record must be empty, so the story is the whole of it.
if ! status=$(bc "$ADMIN" status -o json 2>&1); then
  first=$(printf '%s\n' "$status" | head -n 1)
  case "$first" in
    *"UNAVAILABLE: cannot reach"*)
      echo "error: no Backchannel server answers at $BACKCHANNEL_ADDR; start one with 'cargo run --release'" >&2 ;;
    *)
      echo "error: the server at $BACKCHANNEL_ADDR refused the admin token (${first#error: }); set BACKCHANNEL_TOKEN to its admin token" >&2 ;;
  esac
  exit 1
fi
head=$(printf '%s' "$status" | json_field headSequence)
if [ "$head" != "0" ]; then
  echo "error: the record at $BACKCHANNEL_ADDR already holds $head events; run this against a fresh server (stop it, move ./backchannel-data aside, start it again)" >&2
  exit 1
fi

# show AFTER ARGS…: the events after sequence AFTER that ARGS select, as
# watch prints them, once they are all recorded (a write is acknowledged
# only when its events are in the log).
show() { local after=$1; shift; bc "$ADMIN" watch --after "$after" --until-caught-up "$@"; }
position() { bc "$ADMIN" status -o json | json_field headSequence; }

party() { # ID NAME: registers a party and prints a token for it
  bc "$ADMIN" party create "$1" --name "$2" >/dev/null
  bc "$ADMIN" token issue "$1" -o json 2>/dev/null | json_field token
}
send() { bc "$@" -o json | json_field id; }
step() { bc "$@" >/dev/null; }

say "The parties: Tehran, Washington, and two mediators (Macron, Abe)"
IRAN=$(party iran "Islamic Republic of Iran")
US=$(party united-states "United States of America")
FRANCE=$(party france "France (President Macron)")
JAPAN=$(party japan "Japan (Prime Minister Abe)")
bc "$ADMIN" party list

say "Two channels join Tehran and Washington"
ELYSEE=$(send "$ADMIN" channel open iran united-states --via france --name "The Élysée channel")
TOKYO=$(send "$ADMIN" channel open iran united-states --via japan --name "The Tokyo channel")
show 0

say "25 Aug: Zarif arrives in Biarritz; France carries Tehran's overture"
start=$(position)
OVERTURE=$(send "$IRAN" send "$ELYSEE" --subject "Overture from Foreign Minister Zarif" \
  --body "Tehran is willing to hear what a meeting could bring, if it serves the country." \
  --label topic=talks --at 2019-08-25T13:00:00Z)
step "$FRANCE" accept "$OVERTURE" --at 2019-08-25T15:00:00Z --note "Received from Zarif at the summit"
step "$FRANCE" forward "$OVERTURE" --at 2019-08-26T09:00:00Z --note "Put to President Trump"
step "$US" acknowledge "$OVERTURE" --at 2019-08-26T09:30:00Z
show "$start" --message "$OVERTURE"

say "26 Aug: Washington answers, through France"
start=$(position)
ANSWER=$(send "$US" reply "$OVERTURE" --subject "A meeting is possible if the circumstances were correct" \
  --body "The President would meet, in the next few weeks, if the circumstances were correct." \
  --at 2019-08-26T16:00:00Z)
step "$FRANCE" forward "$ANSWER" --at 2019-08-26T18:00:00Z --note "Relayed to Rouhani and Zarif"
step "$IRAN" acknowledge "$ANSWER" --at 2019-08-27T07:00:00Z
show "$start" --message "$ANSWER" --message "$OVERTURE"

say "27 Aug: Tehran states its preconditions, with a deadline (standing in for 6 September)"
start=$(position)
PRECONDITIONS=$(send "$IRAN" reply "$ANSWER" --subject "Preconditions: JCPOA, sanctions relief, credit lines" \
  --body "No meeting unless Washington returns to the JCPOA and lifts sanctions; Europe to open credit lines for oil." \
  --label topic=preconditions --respond-by "+${DEADLINE_SECONDS}s" --at 2019-08-27T10:00:00Z)
step "$FRANCE" accept "$PRECONDITIONS" --at 2019-08-27T12:00:00Z
step "$FRANCE" forward "$PRECONDITIONS" --at 2019-08-27T18:00:00Z \
  --note "Conveyed with a request for an answer before the deadline"
# The deadline's expiry belongs to the end of the story, whenever it comes.
show "$start" --message "$PRECONDITIONS" --message "$ANSWER" \
  --type sent --type answered --type accepted --type delivered
told=$(position)

say "28 Aug: Japan declines to carry a message on oil sales"
start=$(position)
OIL=$(send "$IRAN" send "$TOKYO" --subject "Oil sales and the INSTEX mechanism" --at 2019-08-28T08:00:00Z)
step "$JAPAN" decline "$OIL" --at 2019-08-28T11:00:00Z --note "Tokyo will not carry this before the UN General Assembly"
show "$start" --message "$OIL"

say "29 Aug: Tehran withdraws a request for a meeting at the UN"
start=$(position)
UNGA=$(send "$IRAN" send "$ELYSEE" --subject "A presidential meeting at the UN General Assembly" \
  --at 2019-08-29T06:00:00Z)
step "$FRANCE" accept "$UNGA" --at 2019-08-29T07:00:00Z
step "$IRAN" withdraw "$UNGA" --at 2019-08-29T15:00:00Z \
  --note "Talks with the U.S. are out of the question, says the Leader's office"
show "$start" --message "$UNGA"

say "6 Sep: Washington has not answered the preconditions; the deadline passes (in ${DEADLINE_SECONDS} s)"
expired=""
for _ in $(seq 1 $(( (DEADLINE_SECONDS + 10) * 5 ))); do
  expired=$(show "$told" --message "$PRECONDITIONS" --type expired)
  [ -n "$expired" ] && break
  sleep 0.2
done
if [ -z "$expired" ]; then
  echo "error: the deadline passed, but the preconditions did not expire" >&2
  exit 1
fi
printf '%s\n' "$expired"

say "The preconditions, as the record keeps them"
bc "$ADMIN" show "$PRECONDITIONS"

# Where to see it all: the board on the server's own port. The story leaves
# nothing in flight (every message was answered, declined, withdrawn or
# expired), so the routes are drawn empty; the feed, the timelines, the
# statistics and the checkpoint hold the whole story.
case "$BACKCHANNEL_ADDR" in
  http://* | https://*) board=${BACKCHANNEL_ADDR%/}/ ;;
  *) board=http://${BACKCHANNEL_ADDR%/}/ ;;
esac
say "On the board"
if [ "$token_from" = BACKCHANNEL_TOKEN ]; then
  echo "Open $board and sign in with the admin token (the one in BACKCHANNEL_TOKEN)."
else
  echo "Open $board and sign in with the admin token in $token_from."
fi
echo "Its feed holds every event above; select one for its message's timeline."
echo "(A server started with --web off serves no board.)"
