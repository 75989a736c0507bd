//! `send`, `reply`, the steps of a message, `messages`, `show` and `history`.

use std::collections::BTreeMap;
use std::io::Read;

use super::connect::{Client, connect};
use super::output::{Out, Table, line};
use super::records::route;
use super::time::{between, human, local, now, parse, parse_expiry};
use super::{CliError, ClientArgs, Content, HistoryArgs, MessagesArgs, ReplyArgs};
use super::{SendArgs, ShowArgs, StepArgs};
use crate::pb;
use crate::pb::event::Type;

/// A message's steps after it is sent.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// AcceptMessage.
    Accept,
    /// ForwardMessage.
    Forward,
    /// DeclineMessage.
    Decline,
    /// AcknowledgeMessage.
    Acknowledge,
    /// RejectMessage.
    Reject,
    /// WithdrawMessage.
    Withdraw,
}

fn request(
    content: Content,
    channel_id: String,
    in_reply_to: String,
) -> Result<pb::SendMessageRequest, CliError> {
    let body = match (&content.body, &content.body_file) {
        (Some(b), _) => b.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|e| {
                CliError::Local(format!("cannot read the body from standard input: {e}"))
            })?;
            s
        }
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| {
            CliError::Local(format!("cannot read the body file {}: {e}", f.display()))
        })?,
        (None, None) => String::new(),
    };
    let mut labels = BTreeMap::new();
    for l in &content.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--label '{l}' is not KEY=VALUE")))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    Ok(pb::SendMessageRequest {
        channel_id,
        subject: content.subject,
        body,
        labels,
        respond_by: content
            .respond_by
            .map(|t| parse_expiry("--respond-by", &t))
            .transpose()?,
        in_reply_to,
        occur_time: content.at.map(|t| parse("--at", &t)).transpose()?,
        request_id: content.request_id.unwrap_or_default(),
    })
}

/// `backchannel send`.
pub async fn send(args: &ClientArgs, out: &Out, a: SendArgs) -> Result<(), CliError> {
    let req = request(a.content, a.channel, String::new())?;
    let mut c = connect(args).await?;
    let m = c.messages.send_message(req).await?.into_inner();
    print_message(out, &m)
}

/// `backchannel reply`.
pub async fn reply(args: &ClientArgs, out: &Out, a: ReplyArgs) -> Result<(), CliError> {
    let req = request(a.content, a.channel.unwrap_or_default(), a.message)?;
    let mut c = connect(args).await?;
    let m = c.messages.send_message(req).await?.into_inner();
    print_message(out, &m)
}

/// `backchannel accept|forward|decline|acknowledge|reject|withdraw`.
pub async fn step(args: &ClientArgs, out: &Out, step: Step, a: StepArgs) -> Result<(), CliError> {
    let occur_time = a.at.map(|t| parse("--at", &t)).transpose()?;
    let (message_id, note) = (a.message, a.note.unwrap_or_default());
    let (expected_version, request_id) = (
        a.expect_version.unwrap_or(0),
        a.request_id.unwrap_or_default(),
    );
    let mut c = connect(args).await?;
    let m = &mut c.messages;
    // The six steps' requests have the same fields.
    macro_rules! call {
        ($method:ident, $request:ident) => {
            m.$method(pb::$request {
                message_id,
                note,
                occur_time,
                expected_version,
                request_id,
            })
            .await
        };
    }
    let m = match step {
        Step::Accept => call!(accept_message, AcceptMessageRequest),
        Step::Forward => call!(forward_message, ForwardMessageRequest),
        Step::Decline => call!(decline_message, DeclineMessageRequest),
        Step::Acknowledge => call!(acknowledge_message, AcknowledgeMessageRequest),
        Step::Reject => call!(reject_message, RejectMessageRequest),
        Step::Withdraw => call!(withdraw_message, WithdrawMessageRequest),
    }?
    .into_inner();
    print_message(out, &m)
}

fn state_name(s: i32) -> &'static str {
    pb::message::State::try_from(s).map_or("?", |s| s.as_str_name())
}

fn hop_state(s: i32) -> pb::hop::State {
    pb::hop::State::try_from(s).unwrap_or(pb::hop::State::Unspecified)
}

/// The index of the current hop: the first not forwarded.
fn current_hop(m: &pb::Message) -> Option<usize> {
    m.hops
        .iter()
        .position(|h| hop_state(h.state) != pb::hop::State::Forwarded)
}

/// Who has the message now (or had it last): a mediator, the recipient, the sender.
pub fn holder(m: &pb::Message) -> String {
    use pb::message::State as S;
    let state = pb::message::State::try_from(m.state).unwrap_or(S::Unspecified);
    match state {
        S::Submitted | S::InTransit | S::Declined => current_hop(m)
            .and_then(|i| m.hops.get(i))
            .map_or_else(|| m.recipient.clone(), |h| h.mediator.clone()),
        S::Withdrawn => m.sender.clone(),
        S::Expired => "-".to_owned(),
        _ => m.recipient.clone(),
    }
}

/// The state and who has the message: `IN_TRANSIT with france`.
fn with_holder(m: &pb::Message) -> String {
    match holder(m).as_str() {
        "-" => state_name(m.state).to_owned(),
        h => format!("{} with {h}", state_name(m.state)),
    }
}

/// One message, briefly: after a send or a step.
fn print_message(out: &Out, m: &pb::Message) -> Result<(), CliError> {
    if out.machine(m, "backchannel.v1.Message", &m.id)? {
        return Ok(());
    }
    line(&format!("message   {}", m.id))?;
    line(&format!("subject   {}", m.subject))?;
    line(&format!(
        "state     {}  (version {})",
        with_holder(m),
        m.version
    ))
}

/// `backchannel messages`.
pub async fn list(args: &ClientArgs, out: &Out, a: MessagesArgs) -> Result<(), CliError> {
    let state = a.state.unwrap_or(0);
    let mut c = connect(args).await?;
    let mut all = Vec::new();
    let mut page_token = String::new();
    let limit = a.limit as usize;
    while all.len() < limit {
        let r = c
            .messages
            .list_messages(pb::ListMessagesRequest {
                channel_id: a.channel.clone().unwrap_or_default(),
                party_id: a.party.clone().unwrap_or_default(),
                thread_id: a.thread.clone().unwrap_or_default(),
                state,
                page_size: i32::try_from(limit - all.len()).unwrap_or(1000).min(1000),
                page_token,
            })
            .await?
            .into_inner();
        all.extend(r.messages);
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    all.truncate(limit);
    if out.is_json() {
        for m in &all {
            out.machine(m, "backchannel.v1.Message", &m.id)?;
        }
        return Ok(());
    }
    // `show` has the times; the list stays narrow.
    let mut t = Table::new(&["ID", "STATE", "WITH", "SUBJECT"]);
    for m in &all {
        t.row(vec![
            m.id.clone(),
            state_name(m.state).to_owned(),
            holder(m),
            m.subject.clone(),
        ]);
    }
    t.print("no messages")
}

/// Every event of a listing, all pages.
async fn events(
    c: &mut Client,
    channel_id: String,
    message_id: String,
    after: u64,
) -> Result<Vec<pb::Event>, CliError> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = c
            .messages
            .list_events(pb::ListEventsRequest {
                channel_id: channel_id.clone(),
                message_id: message_id.clone(),
                after_sequence: after,
                page_size: 1000,
                page_token,
            })
            .await?
            .into_inner();
        all.extend(r.events);
        if r.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = r.next_page_token;
    }
}

/// `backchannel history`.
pub async fn history(args: &ClientArgs, out: &Out, a: HistoryArgs) -> Result<(), CliError> {
    let mut c = connect(args).await?;
    let all = events(
        &mut c,
        a.channel.unwrap_or_default(),
        a.message.unwrap_or_default(),
        a.after,
    )
    .await?;
    if out.is_json() {
        for e in &all {
            out.machine(e, "backchannel.v1.Event", &e.sequence.to_string())?;
        }
        return Ok(());
    }
    if all.is_empty() {
        return line("no events");
    }
    for e in &all {
        line(&event_line(e))?;
    }
    Ok(())
}

/// An event as one line: its sequence, when it happened, and a sentence.
pub fn event_line(e: &pb::Event) -> String {
    format!(
        "{:>6}  {}  {}",
        e.sequence,
        local(e.occur_time.as_ref()),
        sentence(e, None)
    )
}

/// An event as a line of a message's timeline, noting when it was
/// recorded if that was more than a minute after it happened.
fn timed(e: &pb::Event, sentence: String) -> String {
    let mut text = format!(
        "{:>6}  {}  {}",
        e.sequence,
        local(e.occur_time.as_ref()),
        sentence
    );
    if let Some(d) = between(e.occur_time.as_ref(), e.record_time.as_ref())
        && d.num_seconds() > 60
    {
        text += &format!("  (recorded +{})", human(d));
    }
    text
}

/// What an event says, as a sentence: `france forwarded "Subject" to
/// japan`; with `it`, the message is named so instead of by its subject.
pub fn sentence(e: &pb::Event, it: Option<&str>) -> String {
    let t = Type::try_from(e.r#type).unwrap_or(Type::Unspecified);
    let note = if e.note.is_empty() {
        String::new()
    } else {
        format!(": {}", e.note)
    };
    let actor = &e.actor;
    match &e.subject {
        Some(pb::event::Subject::Message(m)) => {
            let quoted = format!("\"{}\"", m.subject);
            let s = it.unwrap_or(&quoted);
            let next = e
                .hop_index
                .and_then(|i| usize::try_from(i).ok())
                .map(|i| {
                    m.hops
                        .get(i + 1)
                        .map_or(m.recipient.as_str(), |h| h.mediator.as_str())
                })
                .unwrap_or(&m.recipient);
            match t {
                Type::MessageSent => {
                    let via: Vec<&str> = m.hops.iter().map(|h| h.mediator.as_str()).collect();
                    let reply = if m.in_reply_to.is_empty() {
                        ""
                    } else {
                        " (a reply)"
                    };
                    // Named by its subject, the line ends with the id to act on.
                    let id = if it.is_some() {
                        String::new()
                    } else {
                        format!("  [{}]", m.id)
                    };
                    format!(
                        "{actor} sent {s}{reply} to {} via {}{id}",
                        m.recipient,
                        via.join(", ")
                    )
                }
                Type::MessageAccepted => format!("{actor} accepted {s}{note}"),
                Type::MessageForwarded => format!("{actor} forwarded {s} to {next}{note}"),
                Type::MessageDelivered => format!("{actor} delivered {s} to {}{note}", m.recipient),
                Type::MessageDeclined => format!("{actor} declined to carry {s}{note}"),
                Type::MessageAcknowledged => format!("{actor} acknowledged {s}{note}"),
                Type::MessageRejected => format!("{actor} rejected {s}{note}"),
                Type::MessageWithdrawn => format!("{actor} withdrew {s}{note}"),
                Type::MessageAnswered => format!("{actor} answered {s}"),
                Type::MessageExpired => format!("{s} expired unanswered (its deadline passed)"),
                _ => format!("{actor}: {} on {s}", t.as_str_name()),
            }
        }
        Some(pb::event::Subject::Channel(ch)) => {
            let n = &ch.display_name;
            match t {
                Type::ChannelOpened => format!("{actor} opened the channel \"{n}\": {}", route(ch)),
                Type::ChannelSuspended => format!("{actor} suspended the channel \"{n}\"{note}"),
                Type::ChannelResumed => format!("{actor} resumed the channel \"{n}\"{note}"),
                Type::ChannelClosed => format!("{actor} closed the channel \"{n}\"{note}"),
                _ => format!("{actor}: {} on \"{n}\"", t.as_str_name()),
            }
        }
        None => format!("{actor}: {}", t.as_str_name()),
    }
}

/// `backchannel show`: the message, its route as a timeline of custody,
/// and its history.
pub async fn show(args: &ClientArgs, out: &Out, a: ShowArgs) -> Result<(), CliError> {
    let mut c = connect(args).await?;
    let m = c
        .messages
        .get_message(pb::GetMessageRequest {
            message_id: a.message.clone(),
        })
        .await?
        .into_inner();
    if out.machine(&m, "backchannel.v1.Message", &m.id)? {
        return Ok(());
    }
    let history = events(&mut c, String::new(), a.message, 0).await?;
    let sent = m.send_time.or(m.create_time);
    line(&format!("message     {}", m.id))?;
    line(&format!("subject     {}", m.subject))?;
    let mut stops = vec![m.sender.as_str()];
    stops.extend(m.hops.iter().map(|h| h.mediator.as_str()));
    stops.push(&m.recipient);
    line(&format!("route       {}", stops.join(" → ")))?;
    line(&format!(
        "state       {}  (version {})",
        with_holder(&m),
        m.version
    ))?;
    line(&format!(
        "sent        {} by {}",
        local(sent.as_ref()),
        m.sender
    ))?;
    if let Some(rb) = &m.respond_by {
        let left = between(Some(&now()), Some(rb)).map_or(String::new(), |d| {
            if d.num_seconds() > 0 {
                format!("  ({} left)", human(d))
            } else {
                String::new()
            }
        });
        line(&format!("respond by  {}{left}", local(Some(rb))))?;
    }
    if !m.in_reply_to.is_empty() {
        line(&format!("replies to  {}", m.in_reply_to))?;
    }
    if m.thread_id != m.id && !m.thread_id.is_empty() {
        line(&format!("thread      {}", m.thread_id))?;
    }
    if !m.labels.is_empty() {
        let l: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line(&format!("labels      {}", l.join(" ")))?;
    }
    line(&format!("channel     {}", m.channel_id))?;
    line("")?;
    custody(&m, sent.as_ref(), &history)?;
    if !m.body.is_empty() {
        line("")?;
        for l in m.body.lines() {
            line(&format!("  {l}"))?;
        }
    }
    line("")?;
    for e in &history {
        line(&timed(e, sentence(e, Some("it"))))?;
    }
    Ok(())
}

/// The route as a table of custody: each mediator, when the message
/// reached it, when it passed it on, and how long it held it.
fn custody(
    m: &pb::Message,
    sent: Option<&prost_types::Timestamp>,
    history: &[pb::Event],
) -> Result<(), CliError> {
    use pb::hop::State as H;
    // When a hop ended other than by a forward: its decline, or the
    // withdrawal or expiry that cancelled it.
    let ended = |i: usize| {
        history.iter().find_map(|e| {
            let t = Type::try_from(e.r#type).ok()?;
            let this_hop = e.hop_index.and_then(|h| usize::try_from(h).ok()) == Some(i);
            match t {
                Type::MessageDeclined if this_hop => e.occur_time,
                Type::MessageWithdrawn | Type::MessageExpired => e.occur_time,
                _ => None,
            }
        })
    };
    let fmt = super::time::local_minute;
    let mut t = Table::new(&["HOP", "MEDIATOR", "STATE", "RECEIVED", "PASSED ON", "HELD"]);
    let mut received = sent.cloned();
    for (i, h) in m.hops.iter().enumerate() {
        let state = hop_state(h.state);
        let (to, held) = match state {
            H::Forwarded => (
                h.forward_time,
                between(received.as_ref(), h.forward_time.as_ref()).map(human),
            ),
            H::Declined | H::Cancelled if received.is_some() => {
                let end = ended(i);
                (end, between(received.as_ref(), end.as_ref()).map(human))
            }
            H::Pending | H::Accepted if received.is_some() => (
                None,
                between(received.as_ref(), Some(&now())).map(|d| format!("{} so far", human(d))),
            ),
            _ => (None, None),
        };
        let passed = match state {
            H::Forwarded => fmt(to.as_ref()),
            H::Declined => format!("declined {}", fmt(to.as_ref())),
            H::Cancelled if to.is_some() => format!("cancelled {}", fmt(to.as_ref())),
            H::Pending | H::Accepted if received.is_some() => "(holding)".to_owned(),
            _ => "-".to_owned(),
        };
        t.row(vec![
            (i + 1).to_string(),
            h.mediator.clone(),
            state.as_str_name().to_owned(),
            fmt(received.as_ref()),
            passed,
            held.unwrap_or_else(|| "-".to_owned()),
        ]);
        received = if state == H::Forwarded {
            h.forward_time
        } else {
            None
        };
    }
    t.print("no hops")?;
    if let Some(at) = &received {
        line(&format!(
            "delivered to {} at {}",
            m.recipient,
            fmt(Some(at))
        ))?;
    }
    Ok(())
}
