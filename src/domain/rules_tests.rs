//! Exhaustive tests of the message state machine, the channel rules and who
//! may do what, against DESIGN §2–3 and "Precise rules" in §4.
//!
//! Every expected outcome is written out here from DESIGN, never computed by
//! the code under test. The big tests enumerate every message state × every
//! action × every actor in loops, so no combination is skipped, and report
//! every combination that differs (not just the first).
//!
//! The cast: `iran` sends to `united-states` through `france`, then `japan`;
//! `germany` is on no route and the admin is no party.

use std::collections::{BTreeMap, BTreeSet};

use super::decide::{self, Context, Loaded, Write};
use super::rules::{self, Role, Step};
use super::{
    Caller, Channel, ChannelAction, ChannelState, Class, Command, EventType, Hop, HopState, Id,
    Message, MessageAction, MessageMove, MessageState, NewMessage, PartyId, Reason, Rejection,
    Subject, Time,
};

use HopState::{
    Accepted as ACC, Cancelled as CAN, Declined as DEC, Forwarded as FWD, Pending as PEN,
};

// ---------------------------------------------------------------------------
// The cast, the clock and the messages
// ---------------------------------------------------------------------------

const SENDER: &str = "iran";
const RECIPIENT: &str = "united-states";
/// The route from the sender to the recipient.
const ROUTE: [&str; 2] = ["france", "japan"];
/// A registered party on no route of the message.
const OUTSIDER: &str = "germany";
/// The note every step in the big tables is taken with.
const NOTE: &str = "handed over in Biarritz";

fn party(id: &str) -> PartyId {
    PartyId::parse(id).expect("a valid party id")
}

fn as_party(id: &str) -> Caller {
    Caller::Party(party(id))
}

const HOUR: i64 = 3_600;
const DAY: i64 = 24 * HOUR;

/// 25 August 2019, 12:00 UTC: the Biarritz summit. Every time is relative to it.
fn at(secs: i64) -> Time {
    Time(1_566_734_400_000_000).plus_secs(secs)
}

/// When the server records the step under test.
fn now() -> Time {
    at(DAY)
}

/// When the caller reports the step happened: back-dated ten minutes.
fn occur() -> Time {
    at(DAY - 600)
}

/// A hop of `mediator` at position `index` in `state`, with the times and
/// note such a hop would have.
fn hop(mediator: &str, index: i64, state: HopState) -> Hop {
    let taken = (index + 1) * HOUR;
    let (accept_time, forward_time, note) = match state {
        PEN | CAN => (None, None, ""),
        ACC => (Some(at(taken)), None, "received; will carry it"),
        FWD => (Some(at(taken)), Some(at(taken + HOUR / 2)), "handed on"),
        DEC => (Some(at(taken)), None, "we will not carry this"),
    };
    Hop {
        mediator: party(mediator),
        state,
        accept_time,
        forward_time,
        note: note.to_owned(),
    }
}

/// A message from `iran` to `united-states` in `state`, with one hop per
/// mediator of `route` in the given hop states. Its deadline is a week ahead.
fn message_on(route: &[&str], state: MessageState, hops: &[HopState]) -> Message {
    assert_eq!(route.len(), hops.len(), "one hop state per mediator");
    let id = Id::new();
    Message {
        id,
        channel_id: Id::new(),
        sender: party(SENDER),
        recipient: party(RECIPIENT),
        subject: "A proposal to talk".to_owned(),
        body: "We are prepared to meet without preconditions.".to_owned(),
        labels: BTreeMap::from([("topic".to_owned(), "sanctions".to_owned())]),
        respond_by: Some(at(7 * DAY)),
        in_reply_to: None,
        thread_id: id,
        state,
        hops: route
            .iter()
            .zip(0..)
            .zip(hops)
            .map(|((m, i), &s)| hop(m, i, s))
            .collect(),
        version: 4,
        create_time: at(0),
        update_time: at(3 * HOUR),
        send_time: at(0),
    }
}

/// One realistic message per state and hop sub-state, on the two-mediator
/// route `france → japan`.
#[derive(Debug, Clone, Copy)]
struct Fixture {
    /// What happened to the message, in words.
    story: &'static str,
    state: MessageState,
    hops: [HopState; 2],
}

const FIXTURES: [Fixture; 15] = {
    use MessageState::*;
    [
        Fixture {
            story: "just sent; no mediator has taken it",
            state: Submitted,
            hops: [PEN, PEN],
        },
        Fixture {
            story: "France holds it",
            state: InTransit,
            hops: [ACC, PEN],
        },
        Fixture {
            story: "France handed it on; Japan has not taken it yet",
            state: InTransit,
            hops: [FWD, PEN],
        },
        Fixture {
            story: "France handed it on; Japan holds it",
            state: InTransit,
            hops: [FWD, ACC],
        },
        Fixture {
            story: "Japan handed it to the recipient",
            state: Delivered,
            hops: [FWD, FWD],
        },
        Fixture {
            story: "the recipient confirmed receipt",
            state: Acknowledged,
            hops: [FWD, FWD],
        },
        Fixture {
            story: "the recipient replied",
            state: Answered,
            hops: [FWD, FWD],
        },
        Fixture {
            story: "France refused to carry it",
            state: Declined,
            hops: [DEC, CAN],
        },
        Fixture {
            story: "France carried it; Japan refused to",
            state: Declined,
            hops: [FWD, DEC],
        },
        Fixture {
            story: "the recipient refused it",
            state: Rejected,
            hops: [FWD, FWD],
        },
        Fixture {
            story: "the sender took it back before anyone carried it",
            state: Withdrawn,
            hops: [CAN, CAN],
        },
        Fixture {
            story: "the sender took it back while Japan held it",
            state: Withdrawn,
            hops: [FWD, CAN],
        },
        Fixture {
            story: "the deadline passed before anyone took it",
            state: Expired,
            hops: [CAN, CAN],
        },
        Fixture {
            story: "the deadline passed while Japan held it",
            state: Expired,
            hops: [FWD, CAN],
        },
        Fixture {
            story: "the deadline passed after delivery, unanswered",
            state: Expired,
            hops: [FWD, FWD],
        },
    ]
};

fn message(f: &Fixture) -> Message {
    message_on(&ROUTE, f.state, &f.hops)
}

/// DESIGN §2: "The current hop is the first hop that is not FORWARDED."
fn current_hop(hops: &[HopState]) -> Option<usize> {
    hops.iter().position(|&h| h != FWD)
}

/// The states from which a passing `respond_by` expires a message (DESIGN
/// §4 Writes: "while it is SUBMITTED, IN_TRANSIT, DELIVERED or ACKNOWLEDGED").
const EXPIRABLE: [MessageState; 4] = [
    MessageState::Submitted,
    MessageState::InTransit,
    MessageState::Delivered,
    MessageState::Acknowledged,
];

// ---------------------------------------------------------------------------
// The actors
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Actor {
    Sender,
    Recipient,
    /// The mediator of the current hop; once every hop is forwarded (there is
    /// no current hop) the last mediator, who handed the message over.
    CurrentMediator,
    /// The other mediator on the route.
    OtherMediator,
    /// A party on no route of the message.
    Outsider,
    Admin,
}

const ACTORS: [Actor; 6] = [
    Actor::Sender,
    Actor::Recipient,
    Actor::CurrentMediator,
    Actor::OtherMediator,
    Actor::Outsider,
    Actor::Admin,
];

fn caller(f: &Fixture, actor: Actor) -> Caller {
    let holder = current_hop(&f.hops).unwrap_or(ROUTE.len() - 1);
    match actor {
        Actor::Sender => as_party(SENDER),
        Actor::Recipient => as_party(RECIPIENT),
        Actor::CurrentMediator => as_party(ROUTE[holder]),
        Actor::OtherMediator => as_party(ROUTE[1 - holder]),
        Actor::Outsider => as_party(OUTSIDER),
        Actor::Admin => Caller::Admin,
    }
}

// ---------------------------------------------------------------------------
// What DESIGN prescribes
// ---------------------------------------------------------------------------

/// A successful step: the message's new state, the one event recorded, the
/// hop it concerns (hop events only) and every hop's state afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Move {
    to: MessageState,
    event: EventType,
    hop_index: Option<usize>,
    hops: Vec<HopState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Moves(Move),
    Refused(Reason),
}

const OK: Option<Reason> = None;
const NF: Option<Reason> = Some(Reason::MESSAGE_NOT_FOUND);
const ADM: Option<Reason> = Some(Reason::ADMIN_NOT_A_PARTY);
const NAM: Option<Reason> = Some(Reason::NOT_A_MEDIATOR);
const NTR: Option<Reason> = Some(Reason::NOT_THE_RECIPIENT);
const NTS: Option<Reason> = Some(Reason::NOT_THE_SENDER);

/// `NOT_FOUND`, then `PERMISSION_DENIED`: may this actor *ever* take this
/// step, whatever the message's state? (DESIGN §3: "to everyone else it does
/// not exist (NOT_FOUND, never a hint)"; §4: "PERMISSION_DENIED (the caller's
/// role can never do this: a recipient accepting, a mediator withdrawing, …,
/// the admin sending or moving messages — the admin is not a party)"; §2:
/// accept/forward/decline by a mediator, acknowledge/reject/reply by the
/// recipient, withdraw by the sender.) Whether a mediator's hop is the current
/// one is a matter of state: FAILED_PRECONDITION, below.
fn permission(actor: Actor, action: MessageAction) -> Option<Reason> {
    //                                 Accept Forward Decline Acknowledge Reject Withdraw Answer
    const SENDER_ROW: [Option<Reason>; 7] = [NAM, NAM, NAM, NTR, NTR, OK, NTR];
    const RECIPIENT_ROW: [Option<Reason>; 7] = [NAM, NAM, NAM, OK, OK, NTS, OK];
    const MEDIATOR_ROW: [Option<Reason>; 7] = [OK, OK, OK, NTR, NTR, NTS, NTR];
    const OUTSIDER_ROW: [Option<Reason>; 7] = [NF; 7];
    const ADMIN_ROW: [Option<Reason>; 7] = [ADM; 7];
    let row = match actor {
        Actor::Sender => SENDER_ROW,
        Actor::Recipient => RECIPIENT_ROW,
        Actor::CurrentMediator | Actor::OtherMediator => MEDIATOR_ROW,
        Actor::Outsider => OUTSIDER_ROW,
        Actor::Admin => ADMIN_ROW,
    };
    let column = match action {
        MessageAction::Accept => 0,
        MessageAction::Forward => 1,
        MessageAction::Decline => 2,
        MessageAction::Acknowledge => 3,
        MessageAction::Reject => 4,
        MessageAction::Withdraw => 5,
        MessageAction::Answer => 6,
    };
    row[column]
}

/// DESIGN §2: "hops that can no longer happen (after a decline or a
/// withdrawal) become CANCELLED"; §4: expiry "cancels the hops still PENDING
/// or ACCEPTED".
fn cancel_open(hops: &mut [HopState]) {
    for h in hops {
        if matches!(*h, PEN | ACC) {
            *h = CAN;
        }
    }
}

/// `FAILED_PRECONDITION` or the move, for an actor who passed `permission`.
fn by_state(f: &Fixture, action: MessageAction, actor: Actor) -> Expect {
    use Expect::Refused;
    use MessageAction::*;
    use MessageState::*;
    let moves = |to, event, hop_index, hops: &[HopState]| {
        Expect::Moves(Move {
            to,
            event,
            hop_index,
            hops: hops.to_vec(),
        })
    };
    let mut hops = f.hops;
    match action {
        Accept | Forward | Decline => {
            // Allowed moves: only SUBMITTED and IN_TRANSIT go on to
            // IN_TRANSIT, DELIVERED or DECLINED.
            if !matches!(f.state, Submitted | InTransit) {
                return Refused(Reason::MESSAGE_NOT_IN_TRANSIT);
            }
            // "Only the mediator of the current hop may accept, forward or
            // decline": "a mediator on the route whose hop is not yet current
            // gets NOT_CURRENT_MEDIATOR".
            let i = current_hop(&hops).expect("a travelling message has a current hop");
            if actor != Actor::CurrentMediator {
                return Refused(Reason::NOT_CURRENT_MEDIATOR);
            }
            match action {
                // Hop state: PENDING → ACCEPTED, once.
                Accept if hops[i] == ACC => Refused(Reason::HOP_ALREADY_ACCEPTED),
                Accept => {
                    hops[i] = ACC;
                    moves(InTransit, EventType::MessageAccepted, Some(i), &hops)
                }
                // "ForwardMessage on a PENDING hop accepts and forwards at
                // once"; "A forward by the last mediator is one
                // MESSAGE_DELIVERED event."
                Forward => {
                    hops[i] = FWD;
                    if i + 1 == hops.len() {
                        moves(Delivered, EventType::MessageDelivered, Some(i), &hops)
                    } else {
                        moves(InTransit, EventType::MessageForwarded, Some(i), &hops)
                    }
                }
                _ => {
                    hops[i] = DEC;
                    cancel_open(&mut hops);
                    moves(Declined, EventType::MessageDeclined, Some(i), &hops)
                }
            }
        }
        // "WITHDRAWN: the sender took it back before delivery".
        Withdraw => match f.state {
            Submitted | InTransit => {
                cancel_open(&mut hops);
                moves(Withdrawn, EventType::MessageWithdrawn, None, &hops)
            }
            _ => Refused(Reason::MESSAGE_NOT_IN_TRANSIT),
        },
        // "DELIVERED → ACKNOWLEDGED | ANSWERED | REJECTED | EXPIRED;
        // ACKNOWLEDGED → ANSWERED | REJECTED | EXPIRED".
        Acknowledge => match f.state {
            Delivered => moves(Acknowledged, EventType::MessageAcknowledged, None, &hops),
            _ => Refused(Reason::MESSAGE_NOT_DELIVERED),
        },
        Reject => match f.state {
            Delivered | Acknowledged => moves(Rejected, EventType::MessageRejected, None, &hops),
            _ => Refused(Reason::MESSAGE_NOT_DELIVERED),
        },
        // "A reply is sent … by the original message's recipient, while the
        // original is DELIVERED or ACKNOWLEDGED."
        Answer => match f.state {
            Delivered | Acknowledged => moves(Answered, EventType::MessageAnswered, None, &hops),
            _ => Refused(Reason::MESSAGE_NOT_DELIVERED),
        },
    }
}

/// The whole check order of DESIGN §4: NOT_FOUND → PERMISSION_DENIED →
/// ABORTED (version) → FAILED_PRECONDITION (an overdue message first, then the
/// state).
fn expected(
    f: &Fixture,
    action: MessageAction,
    actor: Actor,
    version_matches: bool,
    overdue: bool,
) -> Expect {
    if let Some(reason) = permission(actor, action) {
        return Expect::Refused(reason);
    }
    // An answer is a `SendMessage`, which carries no expected_version.
    if !version_matches && action != MessageAction::Answer {
        return Expect::Refused(Reason::VERSION_MISMATCH);
    }
    if overdue && EXPIRABLE.contains(&f.state) {
        return Expect::Refused(Reason::MESSAGE_EXPIRED);
    }
    by_state(f, action, actor)
}

/// The message as DESIGN says it looks after `mv`: the new state and hop
/// states, version + 1, `update_time` the recording time, and on the hop
/// concerned the note and the reported times of its step.
fn after(before: &Message, action: MessageAction, mv: &Move) -> Message {
    let mut m = before.clone();
    m.state = mv.to;
    m.version = before.version + 1;
    m.update_time = now();
    for (h, &s) in m.hops.iter_mut().zip(&mv.hops) {
        h.state = s;
    }
    if let Some(i) = mv.hop_index {
        let h = &mut m.hops[i];
        // "Hop.note is the note of that hop's latest step."
        h.note = NOTE.to_owned();
        match action {
            MessageAction::Accept => h.accept_time = Some(occur()),
            MessageAction::Forward => {
                if before.hops[i].state == PEN {
                    h.accept_time = Some(occur());
                }
                h.forward_time = Some(occur());
            }
            _ => {}
        }
    }
    m
}

// ---------------------------------------------------------------------------
// Running a step as the store does, and judging it
// ---------------------------------------------------------------------------

/// One step through the rules in the store's order (`store::exec`).
/// The step `who` asks for, decided by the real write path's decision
/// ([`decide::decide`]) over the message as loaded: a move is a
/// `MoveMessage`, an answer a `SendMessage` replying to it on the channel
/// back from its recipient to its sender.
fn attempt(
    msg: &Message,
    action: MessageAction,
    who: &Caller,
    expected_version: u64,
) -> Result<Step, Rejection> {
    let (cmd, channel) = match action {
        MessageAction::Answer => (
            Command::SendMessage(NewMessage {
                channel_id: None,
                subject: "Re: a proposal to talk".to_owned(),
                body: "We will listen.".to_owned(),
                labels: BTreeMap::new(),
                respond_by: None,
                in_reply_to: Some(msg.id),
                occur_time: Some(occur()),
                request_id: None,
            }),
            Some(reply_channel(msg)),
        ),
        _ => (
            Command::MoveMessage(MessageMove {
                message_id: msg.id,
                action,
                note: NOTE.to_owned(),
                occur_time: Some(occur()),
                expected_version,
                request_id: None,
            }),
            None,
        ),
    };
    let loaded = Loaded {
        message: Some(msg.clone()),
        channel,
        ..Loaded::default()
    };
    let cx = Context {
        caller: who,
        now: now(),
        fresh: Id::new(),
    };
    let d = decide::decide(cx, &cmd, &loaded)?;
    let mut steps = d.writes.into_iter().filter_map(|w| match w {
        Write::Event(e) => match e.subject {
            Subject::Message(m) if m.id == msg.id => Some(Step {
                message: *m,
                kind: e.kind,
                hop_index: e.hop_index,
            }),
            _ => None,
        },
        _ => None,
    });
    let step = steps.next().expect("a step of the message");
    assert!(steps.next().is_none(), "one step of the message");
    Ok(step)
}

/// The open channel `msg` travelled on, which a reply without a channel
/// takes back: its two principals, its mediators in the sender's order.
fn reply_channel(msg: &Message) -> Channel {
    Channel {
        id: msg.channel_id,
        display_name: "the way there and back".to_owned(),
        parties: [msg.sender.clone(), msg.recipient.clone()],
        mediators: msg.hops.iter().map(|h| h.mediator.clone()).collect(),
        state: ChannelState::Open,
        version: 1,
        create_time: at(0),
        update_time: at(0),
    }
}

fn describe(got: &Result<Step, Rejection>) -> String {
    match got {
        Ok(s) => format!(
            "Ok({:?}, {:?}, hop_index {:?}, hops {:?}, version {})",
            s.message.state,
            s.kind,
            s.hop_index,
            s.message.hops.iter().map(|h| h.state).collect::<Vec<_>>(),
            s.message.version
        ),
        Err(e) => format!("Err({})", e.reason.as_str()),
    }
}

/// `None` if `got` is what `want` prescribes, else what differs.
fn judge(
    before: &Message,
    action: MessageAction,
    got: &Result<Step, Rejection>,
    want: &Expect,
) -> Option<String> {
    match (want, got) {
        (Expect::Refused(r), Err(e)) if e.reason == *r => {
            if e.message.trim().is_empty() {
                Some(format!("{} has no message a person can act on", r.as_str()))
            } else {
                None
            }
        }
        (Expect::Moves(mv), Ok(step)) => {
            let hop_index = mv.hop_index.map(|i| i32::try_from(i).expect("small"));
            let want_msg = after(before, action, mv);
            if step.kind == mv.event && step.hop_index == hop_index && step.message == want_msg {
                None
            } else {
                Some(format!(
                    "expected {mv:?}, got {}\n      expected message {want_msg:?}\n      got message      {:?}",
                    describe(got),
                    step.message
                ))
            }
        }
        _ => Some(format!("expected {want:?}, got {}", describe(got))),
    }
}

/// Runs `check` for every fixture × every action × every actor and fails
/// with every disagreement listed. Returns the number of combinations.
fn for_every_combination(
    mut check: impl FnMut(&Fixture, MessageAction, Actor) -> Vec<String>,
) -> usize {
    let mut failures = Vec::new();
    let mut combinations = 0;
    for f in &FIXTURES {
        for action in MessageAction::ALL {
            for actor in ACTORS {
                combinations += 1;
                for failure in check(f, action, actor) {
                    failures.push(format!(
                        "{:?} [{}] ({:?}), {action:?} by {actor:?}: {failure}",
                        f.state, f.story, f.hops
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} outcomes differ from DESIGN:\n{}",
        failures.len(),
        failures.join("\n")
    );
    combinations
}

const COMBINATIONS: usize = FIXTURES.len() * MessageAction::ALL.len() * ACTORS.len();

// ---------------------------------------------------------------------------
// The fixtures themselves
// ---------------------------------------------------------------------------

#[test]
fn the_fixtures_cover_every_message_state_and_every_action_and_actor_is_enumerated() {
    let covered: Vec<MessageState> = FIXTURES.iter().map(|f| f.state).collect();
    for state in MessageState::ALL {
        assert!(covered.contains(&state), "no fixture in {state:?}");
    }
    assert_eq!(MessageAction::ALL.len(), 7);
    assert_eq!(ACTORS.len(), 6);
    assert_eq!(COMBINATIONS, 630);
    // The route really has two mediators and the cast is distinct.
    let mut names = BTreeSet::from([SENDER, RECIPIENT, OUTSIDER]);
    names.extend(ROUTE);
    assert_eq!(names.len(), 5);
}

// ---------------------------------------------------------------------------
// The exhaustive tables
// ---------------------------------------------------------------------------

#[test]
fn every_action_by_every_actor_in_every_state_has_the_outcome_design_prescribes() {
    let n = for_every_combination(|f, action, actor| {
        let msg = message(f);
        let who = caller(f, actor);
        let want = expected(f, action, actor, true, false);
        // expected_version 0 is unchecked; the current version passes too.
        [0, msg.version]
            .into_iter()
            .filter_map(|v| {
                judge(&msg, action, &attempt(&msg, action, &who, v), &want)
                    .map(|d| format!("expected_version {v}: {d}"))
            })
            .collect()
    });
    assert_eq!(n, COMBINATIONS);
}

#[test]
fn a_stale_expected_version_is_aborted_after_not_found_and_permission_but_before_any_state_check() {
    let n = for_every_combination(|f, action, actor| {
        let msg = message(f);
        let who = caller(f, actor);
        let want = expected(f, action, actor, false, false);
        [msg.version - 1, msg.version + 1]
            .into_iter()
            .filter_map(|v| {
                judge(&msg, action, &attempt(&msg, action, &who, v), &want)
                    .map(|d| format!("expected_version {v}: {d}"))
            })
            .collect()
    });
    assert_eq!(n, COMBINATIONS);
}

#[test]
fn a_step_on_an_overdue_message_is_message_expired_unless_refused_earlier_or_already_ended() {
    let n = for_every_combination(|f, action, actor| {
        let mut msg = message(f);
        msg.respond_by = Some(at(DAY - 1));
        let who = caller(f, actor);
        let mut out = Vec::new();
        let want = expected(f, action, actor, true, true);
        if let Some(d) = judge(&msg, action, &attempt(&msg, action, &who, 0), &want) {
            out.push(format!("overdue: {d}"));
        }
        // The version check comes before the deadline check.
        let want = expected(f, action, actor, false, true);
        let got = attempt(&msg, action, &who, msg.version + 1);
        if let Some(d) = judge(&msg, action, &got, &want) {
            out.push(format!("overdue, stale version: {d}"));
        }
        out
    });
    assert_eq!(n, COMBINATIONS);
}

#[test]
fn the_role_of_each_actor_follows_the_route_and_the_current_hop() {
    let n = for_every_combination(|f, _, actor| {
        let want = match actor {
            Actor::Sender => Role::Sender,
            Actor::Recipient => Role::Recipient,
            // Once every hop is forwarded there is no current hop, so no
            // mediator is the current one.
            Actor::CurrentMediator if current_hop(&f.hops).is_none() => Role::OtherMediator,
            Actor::CurrentMediator => Role::CurrentMediator,
            Actor::OtherMediator => Role::OtherMediator,
            Actor::Outsider => Role::Outsider,
            Actor::Admin => Role::Admin,
        };
        let got = rules::role(&message(f), &caller(f, actor));
        if got == want {
            Vec::new()
        } else {
            vec![format!("role {got:?}, expected {want:?}")]
        }
    });
    assert_eq!(n, COMBINATIONS);
}

/// DESIGN §2: "Allowed moves, and nothing else".
const ALLOWED_MOVES: [(MessageState, MessageState); 17] = {
    use MessageState::*;
    [
        (Submitted, InTransit),
        (Submitted, Delivered),
        (Submitted, Declined),
        (Submitted, Withdrawn),
        (Submitted, Expired),
        (InTransit, InTransit),
        (InTransit, Delivered),
        (InTransit, Declined),
        (InTransit, Withdrawn),
        (InTransit, Expired),
        (Delivered, Acknowledged),
        (Delivered, Answered),
        (Delivered, Rejected),
        (Delivered, Expired),
        (Acknowledged, Answered),
        (Acknowledged, Rejected),
        (Acknowledged, Expired),
    ]
};

#[test]
fn every_move_the_rules_make_is_an_allowed_move_and_every_allowed_move_can_be_made() {
    let mut made = BTreeSet::new();
    let mut record = |from: MessageState, to: MessageState| {
        made.insert((format!("{from:?}"), format!("{to:?}")));
        assert!(
            ALLOWED_MOVES.contains(&(from, to)),
            "{from:?} → {to:?} is not an allowed move"
        );
    };
    for f in &FIXTURES {
        for action in MessageAction::ALL {
            for actor in ACTORS {
                let msg = message(f);
                if let Ok(step) = attempt(&msg, action, &caller(f, actor), 0) {
                    record(msg.state, step.message.state);
                }
            }
        }
        let mut late = message(f);
        late.respond_by = Some(at(DAY - 1));
        if let Some((step, _)) = rules::expire(&late, now()) {
            record(late.state, step.message.state);
        }
    }
    // SUBMITTED → DELIVERED needs a route of one mediator.
    let single = message_on(&["france"], MessageState::Submitted, &[PEN]);
    let step = attempt(&single, MessageAction::Forward, &as_party("france"), 0)
        .expect("the sole mediator forwards");
    record(single.state, step.message.state);

    let allowed: BTreeSet<_> = ALLOWED_MOVES
        .iter()
        .map(|(a, b)| (format!("{a:?}"), format!("{b:?}")))
        .collect();
    assert_eq!(made, allowed);
    // The domain's own table is DESIGN's, no more and no less.
    let domain: BTreeSet<_> = MessageState::MOVES
        .iter()
        .map(|(a, b)| (format!("{a:?}"), format!("{b:?}")))
        .collect();
    assert_eq!(
        domain, allowed,
        "MessageState::MOVES differs from DESIGN §2"
    );
}

#[test]
fn answered_and_the_final_states_admit_no_step_at_all() {
    use MessageState::*;
    for f in FIXTURES.iter().filter(|f| {
        matches!(
            f.state,
            Answered | Declined | Rejected | Withdrawn | Expired
        )
    }) {
        let mut late = message(f);
        late.respond_by = Some(at(DAY - 1));
        assert!(rules::expire(&late, now()).is_none(), "{f:?} expired");
        for action in MessageAction::ALL {
            for actor in ACTORS {
                let got = attempt(&message(f), action, &caller(f, actor), 0);
                assert!(got.is_err(), "{f:?}: {action:?} by {actor:?} moved it");
            }
        }
    }
}

#[test]
fn each_refusal_has_the_status_class_design_gives_it() {
    use Reason::*;
    let classes = [
        (MESSAGE_NOT_FOUND, Class::NotFound),
        (CHANNEL_NOT_FOUND, Class::NotFound),
        (ADMIN_NOT_A_PARTY, Class::PermissionDenied),
        (NOT_A_MEDIATOR, Class::PermissionDenied),
        (NOT_THE_RECIPIENT, Class::PermissionDenied),
        (NOT_THE_SENDER, Class::PermissionDenied),
        (NOT_A_PRINCIPAL, Class::PermissionDenied),
        (VERSION_MISMATCH, Class::Aborted),
        (NOT_CURRENT_MEDIATOR, Class::FailedPrecondition),
        (HOP_ALREADY_ACCEPTED, Class::FailedPrecondition),
        (MESSAGE_NOT_IN_TRANSIT, Class::FailedPrecondition),
        (MESSAGE_NOT_DELIVERED, Class::FailedPrecondition),
        (MESSAGE_EXPIRED, Class::FailedPrecondition),
        (CHANNEL_SUSPENDED, Class::FailedPrecondition),
        (CHANNEL_CLOSED, Class::FailedPrecondition),
        (CHANNEL_NOT_OPEN, Class::FailedPrecondition),
        (CHANNEL_NOT_SUSPENDED, Class::FailedPrecondition),
        (CHANNEL_ALREADY_CLOSED, Class::FailedPrecondition),
    ];
    for (reason, status) in classes {
        assert_eq!(reason.class(), status, "{}", reason.as_str());
    }
}

// ---------------------------------------------------------------------------
// Named behaviours
// ---------------------------------------------------------------------------

fn fixture(state: MessageState, hops: [HopState; 2]) -> Fixture {
    *FIXTURES
        .iter()
        .find(|f| f.state == state && f.hops == hops)
        .expect("such a fixture")
}

fn take(msg: &Message, who: &str, action: MessageAction, note: &str, occur: Time) -> Step {
    let who = as_party(who);
    let role = rules::role(msg, &who);
    rules::authorize(action, role).expect("authorized");
    rules::apply(msg, action, role, note, occur, now()).expect("allowed")
}

fn refusal(msg: &Message, who: &Caller, action: MessageAction) -> Reason {
    match attempt(msg, action, who, 0) {
        Ok(step) => panic!("{action:?} moved the message to {:?}", step.message.state),
        Err(e) => e.reason,
    }
}

fn hop_states(m: &Message) -> Vec<HopState> {
    m.hops.iter().map(|h| h.state).collect()
}

#[test]
fn forward_on_a_pending_hop_accepts_and_forwards_at_once() {
    let msg = message(&fixture(MessageState::Submitted, [PEN, PEN]));
    let t = at(DAY - 2 * HOUR);
    let step = take(&msg, "france", MessageAction::Forward, "passed on", t);
    assert_eq!(step.kind, EventType::MessageForwarded);
    assert_eq!(step.hop_index, Some(0));
    assert_eq!(step.message.state, MessageState::InTransit);
    let hop = &step.message.hops[0];
    assert_eq!(hop.state, FWD);
    assert_eq!(hop.accept_time, Some(t));
    assert_eq!(hop.forward_time, Some(t));
    assert_eq!(hop.note, "passed on");
    assert_eq!(
        step.message.hops[1], msg.hops[1],
        "the next hop is untouched"
    );
    assert_eq!(
        step.message.version,
        msg.version + 1,
        "one step, one version"
    );
}

#[test]
fn forward_on_an_accepted_hop_keeps_the_time_it_was_accepted() {
    let msg = message(&fixture(MessageState::InTransit, [ACC, PEN]));
    let t = at(DAY - HOUR);
    let step = take(&msg, "france", MessageAction::Forward, "", t);
    let hop = &step.message.hops[0];
    assert_eq!(hop.accept_time, msg.hops[0].accept_time);
    assert_eq!(hop.forward_time, Some(t));
    assert_eq!(step.kind, EventType::MessageForwarded);
}

#[test]
fn a_forward_by_the_last_mediator_is_one_message_delivered_event() {
    for hops in [[FWD, PEN], [FWD, ACC]] {
        let msg = message(&fixture(MessageState::InTransit, hops));
        let step = take(&msg, "japan", MessageAction::Forward, "delivered", occur());
        assert_eq!(step.kind, EventType::MessageDelivered, "from {hops:?}");
        assert_eq!(step.hop_index, Some(1));
        assert_eq!(step.message.state, MessageState::Delivered);
        assert_eq!(hop_states(&step.message), [FWD, FWD]);
        assert_eq!(step.message.hops[1].forward_time, Some(occur()));
    }
}

#[test]
fn a_sole_mediator_forwarding_a_submitted_message_delivers_it() {
    let msg = message_on(&["france"], MessageState::Submitted, &[PEN]);
    let step = take(&msg, "france", MessageAction::Forward, "", occur());
    assert_eq!(step.kind, EventType::MessageDelivered);
    assert_eq!(step.hop_index, Some(0));
    assert_eq!(step.message.state, MessageState::Delivered);
    assert_eq!(step.message.hops[0].accept_time, Some(occur()));
    assert_eq!(step.message.hops[0].forward_time, Some(occur()));
}

#[test]
fn a_mediator_whose_hop_is_not_current_gets_not_current_mediator() {
    // Japan waits for France to hand it on.
    for (state, hops) in [
        (MessageState::Submitted, [PEN, PEN]),
        (MessageState::InTransit, [ACC, PEN]),
    ] {
        let msg = message(&fixture(state, hops));
        for action in [
            MessageAction::Accept,
            MessageAction::Forward,
            MessageAction::Decline,
        ] {
            assert_eq!(
                refusal(&msg, &as_party("japan"), action),
                Reason::NOT_CURRENT_MEDIATOR,
                "japan {action:?} with hops {hops:?}"
            );
        }
    }
    // France already handed it on.
    for hops in [[FWD, PEN], [FWD, ACC]] {
        let msg = message(&fixture(MessageState::InTransit, hops));
        for action in [
            MessageAction::Accept,
            MessageAction::Forward,
            MessageAction::Decline,
        ] {
            assert_eq!(
                refusal(&msg, &as_party("france"), action),
                Reason::NOT_CURRENT_MEDIATOR,
                "france {action:?} with hops {hops:?}"
            );
        }
    }
}

#[test]
fn accepting_a_hop_twice_is_hop_already_accepted() {
    for hops in [[ACC, PEN], [FWD, ACC]] {
        let msg = message(&fixture(MessageState::InTransit, hops));
        let holder = ROUTE[current_hop(&hops).expect("current")];
        assert_eq!(
            refusal(&msg, &as_party(holder), MessageAction::Accept),
            Reason::HOP_ALREADY_ACCEPTED
        );
    }
}

#[test]
fn a_decline_cancels_every_later_hop_and_ends_the_message() {
    let route = ["france", "japan", "oman"];
    let msg = message_on(&route, MessageState::InTransit, &[FWD, ACC, PEN]);
    let step = take(
        &msg,
        "japan",
        MessageAction::Decline,
        "not our affair",
        occur(),
    );
    assert_eq!(step.kind, EventType::MessageDeclined);
    assert_eq!(step.hop_index, Some(1));
    assert_eq!(step.message.state, MessageState::Declined);
    assert_eq!(hop_states(&step.message), [FWD, DEC, CAN]);
    assert_eq!(step.message.hops[1].note, "not our affair");
    assert_eq!(step.message.hops[0], msg.hops[0], "a forwarded hop stays");

    let msg = message_on(&route, MessageState::Submitted, &[PEN, PEN, PEN]);
    let step = take(&msg, "france", MessageAction::Decline, "no", occur());
    assert_eq!(hop_states(&step.message), [DEC, CAN, CAN]);
    assert_eq!(step.hop_index, Some(0));
}

#[test]
fn a_withdrawal_cancels_every_hop_still_pending_or_accepted() {
    let route = ["france", "japan", "oman"];
    for (before, after) in [
        ([PEN, PEN, PEN], [CAN, CAN, CAN]),
        ([ACC, PEN, PEN], [CAN, CAN, CAN]),
        ([FWD, PEN, PEN], [FWD, CAN, CAN]),
        ([FWD, ACC, PEN], [FWD, CAN, CAN]),
        ([FWD, FWD, ACC], [FWD, FWD, CAN]),
    ] {
        let state = if before[0] == PEN {
            MessageState::Submitted
        } else {
            MessageState::InTransit
        };
        let msg = message_on(&route, state, &before);
        let step = take(&msg, SENDER, MessageAction::Withdraw, "overtaken", occur());
        assert_eq!(step.kind, EventType::MessageWithdrawn);
        assert_eq!(step.hop_index, None, "not a hop event");
        assert_eq!(step.message.state, MessageState::Withdrawn);
        assert_eq!(hop_states(&step.message), after, "from {before:?}");
    }
}

#[test]
fn the_admin_is_not_a_party_and_moves_no_message_in_any_state() {
    for f in &FIXTURES {
        for action in MessageAction::ALL {
            assert_eq!(
                refusal(&message(f), &Caller::Admin, action),
                Reason::ADMIN_NOT_A_PARTY
            );
        }
    }
}

#[test]
fn a_party_on_no_route_is_told_the_message_does_not_exist_even_with_a_stale_version() {
    for f in &FIXTURES {
        let msg = message(f);
        for action in MessageAction::ALL {
            let got = attempt(&msg, action, &as_party(OUTSIDER), msg.version + 1);
            assert_eq!(
                got.map(|s| s.kind).map_err(|e| e.reason),
                Err(Reason::MESSAGE_NOT_FOUND)
            );
        }
    }
}

#[test]
fn every_step_raises_the_version_by_exactly_one() {
    let mut msg = message_on(&ROUTE, MessageState::Submitted, &[PEN, PEN]);
    msg.version = 1;
    let steps = [
        ("france", MessageAction::Accept),
        ("france", MessageAction::Forward),
        ("japan", MessageAction::Accept),
        ("japan", MessageAction::Forward),
        (RECIPIENT, MessageAction::Acknowledge),
        (RECIPIENT, MessageAction::Answer),
    ];
    for (n, (who, action)) in (2..).zip(steps) {
        let step = take(&msg, who, action, "", occur());
        assert_eq!(step.message.version, n, "{action:?} by {who}");
        assert_eq!(step.message.update_time, now());
        msg = step.message;
    }
    assert_eq!(msg.state, MessageState::Answered);
}

#[test]
fn an_expected_version_of_zero_is_never_checked() {
    for actual in [1, 2, 42, u64::MAX] {
        assert_eq!(rules::check_version(0, actual), Ok(()));
        assert_eq!(rules::check_version(actual, actual), Ok(()));
    }
    for (expected, actual) in [(1, 2), (3, 2), (u64::MAX, 1)] {
        let e = rules::check_version(expected, actual).expect_err("a mismatch");
        assert_eq!(e.reason, Reason::VERSION_MISMATCH);
        assert_eq!(e.class(), Class::Aborted);
    }
}

#[test]
fn the_reported_time_may_precede_earlier_steps() {
    // "occur_time … may precede other steps (a back-dated record is normal)".
    let msg = message(&fixture(MessageState::InTransit, [FWD, ACC]));
    let before_everything = at(-DAY);
    let step = take(&msg, "japan", MessageAction::Forward, "", before_everything);
    assert_eq!(step.message.hops[1].forward_time, Some(before_everything));
    assert_eq!(step.message.update_time, now(), "server time is kept apart");
}

// ---------------------------------------------------------------------------
// Deadlines
// ---------------------------------------------------------------------------

#[test]
fn expiry_ends_only_a_submitted_in_transit_delivered_or_acknowledged_message() {
    for f in &FIXTURES {
        let mut msg = message(f);
        let deadline = at(DAY - HOUR);
        msg.respond_by = Some(deadline);
        let got = rules::expire(&msg, now());
        if !EXPIRABLE.contains(&f.state) {
            assert!(got.is_none(), "{f:?} expired");
            continue;
        }
        let (step, occurred) = got.expect("an overdue message expires");
        assert_eq!(occurred, deadline, "the event occurs at respond_by");
        assert_eq!(step.kind, EventType::MessageExpired);
        assert_eq!(step.hop_index, None);
        let mut hops = f.hops;
        cancel_open(&mut hops);
        let mut want = msg.clone();
        want.state = MessageState::Expired;
        want.version = msg.version + 1;
        want.update_time = now();
        for (h, s) in want.hops.iter_mut().zip(hops) {
            h.state = s;
        }
        assert_eq!(step.message, want, "{f:?}");
    }
}

#[test]
fn expiry_cancels_the_hops_still_pending_or_accepted() {
    let route = ["france", "japan", "oman"];
    let mut msg = message_on(&route, MessageState::InTransit, &[FWD, ACC, PEN]);
    msg.respond_by = Some(at(DAY - 1));
    let (step, _) = rules::expire(&msg, now()).expect("expires");
    assert_eq!(hop_states(&step.message), [FWD, CAN, CAN]);
    assert_eq!(step.message.hops[1].accept_time, msg.hops[1].accept_time);
}

#[test]
fn a_message_without_a_deadline_or_with_one_still_ahead_does_not_expire() {
    for f in &FIXTURES {
        let mut msg = message(f);
        msg.respond_by = None;
        assert!(
            rules::expire(&msg, now()).is_none(),
            "{f:?} without deadline"
        );
        msg.respond_by = Some(at(DAY + 1));
        assert!(
            rules::expire(&msg, now()).is_none(),
            "{f:?} before deadline"
        );
        assert!(!msg.is_overdue(now()));
    }
}

#[test]
fn at_the_deadline_instant_apply_and_expire_agree_the_message_is_overdue() {
    for f in FIXTURES.iter().filter(|f| EXPIRABLE.contains(&f.state)) {
        let mut msg = message(f);
        msg.respond_by = Some(now());
        assert!(rules::expire(&msg, now()).is_some(), "{f:?}");
        for action in MessageAction::ALL {
            for actor in [
                Actor::Sender,
                Actor::Recipient,
                Actor::CurrentMediator,
                Actor::OtherMediator,
            ] {
                if permission(actor, action).is_some() {
                    continue;
                }
                assert_eq!(
                    refusal(&msg, &caller(f, actor), action),
                    Reason::MESSAGE_EXPIRED,
                    "{f:?}: {action:?} by {actor:?}"
                );
            }
        }
        // A microsecond earlier it is not overdue yet.
        msg.respond_by = Some(Time(now().0 + 1));
        assert!(rules::expire(&msg, now()).is_none(), "{f:?}");
    }
}

// ---------------------------------------------------------------------------
// A whole journey, both ways
// ---------------------------------------------------------------------------

fn elysee_channel(state: ChannelState) -> Channel {
    Channel {
        id: Id::new(),
        display_name: "The Élysée channel".to_owned(),
        parties: [party(SENDER), party(RECIPIENT)],
        mediators: vec![party("france"), party("japan")],
        state,
        version: 3,
        create_time: at(-DAY),
        update_time: at(-HOUR),
    }
}

fn sent_on(channel: &Channel, sender: &str) -> Message {
    let recipient = rules::authorize_send(channel, &as_party(sender))
        .expect("a principal may send")
        .clone();
    let mut msg = message_on(&[], MessageState::Submitted, &[]);
    msg.channel_id = channel.id;
    msg.sender = party(sender);
    msg.recipient = recipient;
    msg.hops = rules::route(channel, &party(sender));
    msg.version = 1;
    msg
}

#[test]
fn a_message_travels_from_iran_through_france_and_japan_and_is_answered() {
    let channel = elysee_channel(ChannelState::Open);
    let msg = sent_on(&channel, SENDER);
    assert_eq!(msg.recipient, party(RECIPIENT));

    // Japan may not take it before France has handed it on.
    assert_eq!(
        refusal(&msg, &as_party("japan"), MessageAction::Accept),
        Reason::NOT_CURRENT_MEDIATOR
    );
    let s1 = take(&msg, "france", MessageAction::Accept, "received", at(HOUR));
    assert_eq!(
        (s1.kind, s1.hop_index, s1.message.state),
        (EventType::MessageAccepted, Some(0), MessageState::InTransit)
    );
    let s2 = take(
        &s1.message,
        "france",
        MessageAction::Forward,
        "",
        at(2 * HOUR),
    );
    assert_eq!(
        (s2.kind, s2.hop_index, s2.message.state),
        (
            EventType::MessageForwarded,
            Some(0),
            MessageState::InTransit
        )
    );
    assert_eq!(s2.message.hops[0].accept_time, Some(at(HOUR)));
    assert_eq!(s2.message.hops[0].forward_time, Some(at(2 * HOUR)));
    // The recipient cannot acknowledge what has not arrived.
    assert_eq!(
        refusal(
            &s2.message,
            &as_party(RECIPIENT),
            MessageAction::Acknowledge
        ),
        Reason::MESSAGE_NOT_DELIVERED
    );
    let s3 = take(
        &s2.message,
        "japan",
        MessageAction::Forward,
        "",
        at(3 * HOUR),
    );
    assert_eq!(
        (s3.kind, s3.hop_index, s3.message.state),
        (
            EventType::MessageDelivered,
            Some(1),
            MessageState::Delivered
        )
    );
    // Delivered: too late to withdraw.
    assert_eq!(
        refusal(&s3.message, &as_party(SENDER), MessageAction::Withdraw),
        Reason::MESSAGE_NOT_IN_TRANSIT
    );
    let s4 = take(
        &s3.message,
        RECIPIENT,
        MessageAction::Acknowledge,
        "",
        occur(),
    );
    assert_eq!(
        (s4.kind, s4.hop_index, s4.message.state),
        (
            EventType::MessageAcknowledged,
            None,
            MessageState::Acknowledged
        )
    );
    let s5 = take(&s4.message, RECIPIENT, MessageAction::Answer, "", occur());
    assert_eq!(
        (s5.kind, s5.hop_index, s5.message.state),
        (EventType::MessageAnswered, None, MessageState::Answered)
    );
    assert_eq!(s5.message.version, 6);
    assert_eq!(
        refusal(&s5.message, &as_party(RECIPIENT), MessageAction::Reject),
        Reason::MESSAGE_NOT_DELIVERED
    );
}

#[test]
fn a_reply_from_the_united_states_travels_the_route_reversed() {
    let channel = elysee_channel(ChannelState::Open);
    let msg = sent_on(&channel, RECIPIENT);
    assert_eq!(msg.recipient, party(SENDER));
    let route: Vec<&str> = msg.hops.iter().map(|h| h.mediator.as_str()).collect();
    assert_eq!(route, ["japan", "france"]);
    assert_eq!(
        refusal(&msg, &as_party("france"), MessageAction::Forward),
        Reason::NOT_CURRENT_MEDIATOR
    );
    let s1 = take(&msg, "japan", MessageAction::Forward, "", occur());
    assert_eq!(s1.hop_index, Some(0));
    let s2 = take(&s1.message, "france", MessageAction::Forward, "", occur());
    assert_eq!(
        (s2.kind, s2.hop_index, s2.message.state),
        (
            EventType::MessageDelivered,
            Some(1),
            MessageState::Delivered
        )
    );
    let s3 = take(
        &s2.message,
        SENDER,
        MessageAction::Reject,
        "unacceptable",
        occur(),
    );
    assert_eq!(s3.message.state, MessageState::Rejected);
}

// ---------------------------------------------------------------------------
// Channels
// ---------------------------------------------------------------------------

#[test]
fn route_copies_the_mediators_in_order_and_reverses_them_for_the_second_principal() {
    let mut channel = elysee_channel(ChannelState::Open);
    channel.mediators = vec![party("france"), party("japan"), party("oman")];
    let fresh = |m: &str| Hop {
        mediator: party(m),
        state: PEN,
        accept_time: None,
        forward_time: None,
        note: String::new(),
    };
    assert_eq!(
        rules::route(&channel, &party(SENDER)),
        vec![fresh("france"), fresh("japan"), fresh("oman")]
    );
    assert_eq!(
        rules::route(&channel, &party(RECIPIENT)),
        vec![fresh("oman"), fresh("japan"), fresh("france")]
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelActor {
    Admin,
    FirstPrincipal,
    SecondPrincipal,
    Mediator,
    Outsider,
}

const CHANNEL_ACTORS: [ChannelActor; 5] = [
    ChannelActor::Admin,
    ChannelActor::FirstPrincipal,
    ChannelActor::SecondPrincipal,
    ChannelActor::Mediator,
    ChannelActor::Outsider,
];

const CHANNEL_STATES: [ChannelState; 3] = [
    ChannelState::Open,
    ChannelState::Suspended,
    ChannelState::Closed,
];

const CHANNEL_ACTIONS: [ChannelAction; 3] = [
    ChannelAction::Suspend,
    ChannelAction::Resume,
    ChannelAction::Close,
];

fn channel_caller(actor: ChannelActor) -> Caller {
    match actor {
        ChannelActor::Admin => Caller::Admin,
        ChannelActor::FirstPrincipal => as_party(SENDER),
        ChannelActor::SecondPrincipal => as_party(RECIPIENT),
        ChannelActor::Mediator => as_party("japan"),
        ChannelActor::Outsider => as_party(OUTSIDER),
    }
}

/// DESIGN §1–4: "Channel state: OPEN ⇄ SUSPENDED, either → CLOSED (final)";
/// "suspended, resumed or closed by the [admin or one of the two
/// principals]"; FAILED_PRECONDITION for "suspending a suspended channel,
/// resuming an open one, closing a closed one".
fn channel_expected(
    action: ChannelAction,
    state: ChannelState,
    actor: ChannelActor,
    version_matches: bool,
) -> Result<(ChannelState, EventType), Reason> {
    use ChannelAction::*;
    use ChannelState::*;
    match actor {
        ChannelActor::Outsider => return Err(Reason::CHANNEL_NOT_FOUND),
        ChannelActor::Mediator => return Err(Reason::NOT_A_PRINCIPAL),
        _ => {}
    }
    if !version_matches {
        return Err(Reason::VERSION_MISMATCH);
    }
    match (action, state) {
        (Suspend, Open) => Ok((Suspended, EventType::ChannelSuspended)),
        (Suspend, Suspended | Closed) => Err(Reason::CHANNEL_NOT_OPEN),
        (Resume, Suspended) => Ok((Open, EventType::ChannelResumed)),
        (Resume, Open | Closed) => Err(Reason::CHANNEL_NOT_SUSPENDED),
        (Close, Open | Suspended) => Ok((Closed, EventType::ChannelClosed)),
        (Close, Closed) => Err(Reason::CHANNEL_ALREADY_CLOSED),
    }
}

#[test]
fn every_channel_change_by_every_actor_in_every_state_has_the_outcome_design_prescribes() {
    let mut failures = Vec::new();
    let mut combinations = 0;
    for action in CHANNEL_ACTIONS {
        for state in CHANNEL_STATES {
            for actor in CHANNEL_ACTORS {
                combinations += 1;
                let channel = elysee_channel(state);
                for (expected_version, matches) in [
                    (0, true),
                    (channel.version, true),
                    (channel.version + 1, false),
                ] {
                    let want = channel_expected(action, state, actor, matches);
                    let got = rules::authorize_channel_change(&channel, &channel_caller(actor))
                        .and_then(|()| rules::check_version(expected_version, channel.version))
                        .and_then(|()| rules::change_channel(&channel, action, now()));
                    let ok = match (&want, &got) {
                        (Ok((to, kind)), Ok((c, k))) => {
                            let mut after = channel.clone();
                            after.state = *to;
                            after.version = channel.version + 1;
                            after.update_time = now();
                            k == kind && *c == after
                        }
                        (Err(r), Err(e)) => e.reason == *r && !e.message.is_empty(),
                        _ => false,
                    };
                    if !ok {
                        failures.push(format!(
                            "{action:?} on {state:?} by {actor:?} (expected_version \
                             {expected_version}): expected {want:?}, got {:?}",
                            got.map(|(c, k)| (c.state, k)).map_err(|e| e.reason)
                        ));
                    }
                }
            }
        }
    }
    assert_eq!(combinations, 45);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn only_an_open_channel_takes_new_messages() {
    let cases = [
        (ChannelState::Open, None),
        (ChannelState::Suspended, Some(Reason::CHANNEL_SUSPENDED)),
        (ChannelState::Closed, Some(Reason::CHANNEL_CLOSED)),
    ];
    for (state, want) in cases {
        let got = rules::channel_accepts_messages(&elysee_channel(state)).err();
        assert_eq!(got.map(|e| e.reason), want, "{state:?}");
    }
}

#[test]
fn only_the_two_principals_may_send_and_each_sends_to_the_other_in_any_channel_state() {
    // authorize_send is the NOT_FOUND / PERMISSION_DENIED check; it comes
    // before the channel's state (FAILED_PRECONDITION), so it ignores it.
    for state in CHANNEL_STATES {
        let channel = elysee_channel(state);
        for actor in CHANNEL_ACTORS {
            let want = match actor {
                ChannelActor::FirstPrincipal => Ok(party(RECIPIENT)),
                ChannelActor::SecondPrincipal => Ok(party(SENDER)),
                ChannelActor::Mediator => Err(Reason::NOT_A_PRINCIPAL),
                ChannelActor::Outsider => Err(Reason::CHANNEL_NOT_FOUND),
                ChannelActor::Admin => Err(Reason::ADMIN_NOT_A_PARTY),
            };
            let got = rules::authorize_send(&channel, &channel_caller(actor))
                .cloned()
                .map_err(|e| e.reason);
            assert_eq!(got, want, "{actor:?} sending on a {state:?} channel");
        }
    }
}

#[test]
fn not_found_and_permission_refusals_carry_the_documented_reasons() {
    assert_eq!(rules::channel_not_found().reason, Reason::CHANNEL_NOT_FOUND);
    assert_eq!(rules::message_not_found().reason, Reason::MESSAGE_NOT_FOUND);
    assert_eq!(
        rules::authorize(MessageAction::Accept, Role::Recipient).map_err(|e| e.reason),
        Err(Reason::NOT_A_MEDIATOR),
        "a recipient accepting"
    );
    assert_eq!(
        rules::authorize(MessageAction::Withdraw, Role::CurrentMediator).map_err(|e| e.reason),
        Err(Reason::NOT_THE_SENDER),
        "a mediator withdrawing"
    );
}

#[test]
fn a_message_is_seen_by_exactly_the_members_of_its_channel_in_both_directions() {
    let iran = party(SENDER);
    let us = party(RECIPIENT);
    let channel = Channel {
        id: Id::new(),
        display_name: "Tehran–Paris–Tokyo–Washington".to_owned(),
        parties: [iran.clone(), us.clone()],
        mediators: ROUTE.iter().map(|m| party(m)).collect(),
        state: ChannelState::Open,
        version: 1,
        create_time: at(0),
        update_time: at(0),
    };
    let members: BTreeSet<_> = channel.members().cloned().collect();
    for sender in [&iran, &us] {
        let route = rules::route(&channel, sender);
        let mut msg = message_on(&ROUTE, MessageState::Submitted, &[PEN, PEN]);
        msg.sender = sender.clone();
        msg.recipient = if sender == &iran {
            us.clone()
        } else {
            iran.clone()
        };
        msg.hops = route;
        let audience: BTreeSet<_> = msg.audience().cloned().collect();
        assert_eq!(audience, members, "sent by {sender}");
        for who in [SENDER, RECIPIENT, ROUTE[0], ROUTE[1], OUTSIDER] {
            let caller = as_party(who);
            assert_eq!(
                msg.visible_to(&caller),
                channel.visible_to(&caller),
                "{who}"
            );
        }
    }
}
