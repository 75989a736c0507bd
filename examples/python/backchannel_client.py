#!/usr/bin/env python3
"""A Backchannel client in Python, with grpcio.

What any client needs, in any language:
  * the contract, proto/backchannel/v1/backchannel.proto, compiled for the
    language (here: grpc_tools.protoc, at start, into a temporary directory);
  * `authorization: Bearer TOKEN` metadata on every call;
  * google.rpc.ErrorInfo from a refusal's status details, to act on its
    `reason` and `metadata` rather than parse its message (here: the
    grpcio-status and googleapis-common-protos packages);
  * for a stream, the last sequence it saw: Subscribe with start_after =
    that sequence resumes with no gap and no duplicate, after any
    disconnect or server restart.

Usage (the admin token in BACKCHANNEL_TOKEN, the server in BACKCHANNEL_ADDR,
default 127.0.0.1:50051):

  backchannel_client.py demo          registers parties, opens a channel,
                                      relays a message while a watcher
                                      prints each event, and shows what a
                                      refusal's ErrorInfo says
  backchannel_client.py watch [--after N] [--until-caught-up]
                                      prints every event the token may see,
                                      resuming across disconnects

Install: pip install grpcio grpcio-tools grpcio-status
"""

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto")


def load_contract():
    """Compiles the proto into a temporary directory and imports it."""
    from grpc_tools import protoc
    import importlib.resources

    out = tempfile.mkdtemp(prefix="backchannel-py-")
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    code = protoc.main([
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "backchannel/v1/backchannel.proto",
    ])
    if code != 0:
        sys.exit(f"error: cannot compile {PROTO_ROOT}/backchannel/v1/backchannel.proto")
    sys.path.insert(0, out)
    from backchannel.v1 import backchannel_pb2, backchannel_pb2_grpc
    return backchannel_pb2, backchannel_pb2_grpc


pb, rpc = load_contract()


class Refused(Exception):
    """A refusal, with what its ErrorInfo says."""

    def __init__(self, error):
        self.code = error.code()
        self.message = error.details()
        self.reason = ""
        self.metadata = {}
        status = rpc_status.from_call(error)
        for detail in status.details if status else []:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                self.reason = info.reason
                self.metadata = dict(info.metadata)
        super().__init__(f"{self.code.name} {self.reason}: {self.message}")


class Client:
    """The three services, calling with one token."""

    def __init__(self, addr, token):
        self.channel = grpc.insecure_channel(addr)
        self.metadata = [("authorization", f"Bearer {token}")]
        self.parties = rpc.PartyServiceStub(self.channel)
        self.channels = rpc.ChannelServiceStub(self.channel)
        self.messages = rpc.MessageServiceStub(self.channel)

    def call(self, method, request):
        try:
            return method(request, metadata=self.metadata, timeout=10)
        except grpc.RpcError as e:
            raise Refused(e) from None


_say_lock = threading.Lock()


def say(line, file=None):
    """Prints one line in a single write: the watcher thread and the main
    thread both print, and print() writes the text and its newline apart."""
    out = file or sys.stdout
    with _say_lock:
        out.write(line + "\n")
        out.flush()


def event_line(e):
    kind = pb.Event.Type.Name(e.type)
    subject = e.message.subject if e.HasField("message") else e.channel.display_name
    return f"#{e.sequence} {kind} by {e.actor}: {subject}"


def watch(client, after=None, until_caught_up=False, stop=None, out=say):
    """Prints every event after `after` (None: from now on), then live;
    resumes from the last sequence seen when the stream is lost."""
    position = after
    delay = 0.1
    while stop is None or not stop.is_set():
        request = pb.SubscribeRequest(heartbeat_seconds=1)
        if position is not None:
            request.start_after = position
        try:
            for item in client.messages.Subscribe(request, metadata=client.metadata):
                delay = 0.1
                if item.HasField("event"):
                    if position is not None and item.event.sequence <= position:
                        continue
                    out(event_line(item.event))
                    position = item.event.sequence
                else:
                    # A heartbeat: every matching event up to its head was sent.
                    position = max(position or 0, item.heartbeat.head_sequence)
                    if until_caught_up:
                        return position
                if stop is not None and stop.is_set():
                    return position
        except grpc.RpcError as e:
            refused = Refused(e)
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN,
                                grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED):
                raise refused from None
            say(f"watch: stream lost ({refused.message}); resuming after {position}",
                file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    return position


def demo(addr, admin_token):
    admin = Client(addr, admin_token)
    tokens = {}
    for party in ["iran", "france", "united-states"]:
        try:
            admin.call(admin.parties.CreateParty, pb.CreatePartyRequest(
                party_id=party, display_name=party.title(), kind=pb.Party.STATE))
        except Refused as r:
            if r.reason != "PARTY_EXISTS":
                raise
        tokens[party] = admin.call(admin.parties.IssueToken,
                                   pb.IssueTokenRequest(party_id=party)).token
    iran = Client(addr, tokens["iran"])
    france = Client(addr, tokens["france"])
    us = Client(addr, tokens["united-states"])
    channel = iran.call(iran.channels.CreateChannel, pb.CreateChannelRequest(
        display_name="Python channel", parties=["iran", "united-states"],
        mediators=["france"], request_id=str(uuid.uuid4())))
    say(f"channel {channel.id}: iran -> france -> united-states")

    # The watcher starts at the log's head, as a list-then-subscribe client would.
    head = iran.call(iran.messages.ListEvents,
                     pb.ListEventsRequest(channel_id=channel.id, page_size=1)).head_sequence
    seen = []
    done = threading.Event()
    watcher = threading.Thread(target=watch, kwargs=dict(
        client=iran, after=head, stop=done, out=lambda line: (seen.append(line), say(line))))
    watcher.start()

    message = iran.call(iran.messages.SendMessage, pb.SendMessageRequest(
        channel_id=channel.id, subject="Hello from Python", body="Sent with grpcio",
        request_id=str(uuid.uuid4())))
    france.call(france.messages.AcceptMessage, pb.AcceptMessageRequest(message_id=message.id))

    # A stale version is refused; ErrorInfo says which version is current.
    try:
        france.call(france.messages.ForwardMessage, pb.ForwardMessageRequest(
            message_id=message.id, expected_version=1))
    except Refused as r:
        say(f"refused: {r.code.name} {r.reason}, current_version={r.metadata.get('current_version')}")
        current = int(r.metadata["current_version"])
        france.call(france.messages.ForwardMessage, pb.ForwardMessageRequest(
            message_id=message.id, expected_version=current, note="handed over"))
    # The recipient may not accept: a refusal of its role.
    try:
        us.call(us.messages.AcceptMessage, pb.AcceptMessageRequest(message_id=message.id))
    except Refused as r:
        say(f"refused: {r.code.name} {r.reason}")
    us.call(us.messages.AcknowledgeMessage, pb.AcknowledgeMessageRequest(message_id=message.id))

    deadline = time.monotonic() + 20
    while len(seen) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    watcher.join(timeout=5)
    final = iran.call(iran.messages.GetMessage, pb.GetMessageRequest(message_id=message.id))
    say(f"message {message.id} is {pb.Message.State.Name(final.state)}")
    return 0 if len(seen) >= 4 else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo")
    w = sub.add_parser("watch")
    w.add_argument("--after", type=int)
    w.add_argument("--until-caught-up", action="store_true")
    args = parser.parse_args()
    addr = os.environ.get("BACKCHANNEL_ADDR", "127.0.0.1:50051").removeprefix("http://")
    token = os.environ.get("BACKCHANNEL_TOKEN")
    if not token:
        sys.exit("error: set BACKCHANNEL_TOKEN (the admin token for demo)")
    try:
        if args.command == "demo":
            return demo(addr, token)
        watch(Client(addr, token), after=args.after, until_caught_up=args.until_caught_up)
        return 0
    except Refused as r:
        say(f"error: {r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
