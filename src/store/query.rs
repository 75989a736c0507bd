//! The listing queries, written once for every SQL backend: each builds its
//! statement text and arguments, with the backend's placeholder style.

use super::{ChannelQuery, EventQuery, Frame, MessageQuery};
use crate::convert;
use crate::domain::{Id, MessageState};
use crate::store::error::{Fault, StoreError};

/// A bound argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A 64-bit integer.
    Int(i64),
    /// Text.
    Text(String),
    /// A 64-bit integer or NULL.
    OptInt(Option<i64>),
    /// A boolean (an integer on SQLite).
    Bool(bool),
    /// Bytes.
    Bytes(Vec<u8>),
}

/// How a backend writes its placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// SQLite: `?1`.
    Question,
    /// PostgreSQL: `$1`.
    Dollar,
}

/// A statement and its arguments.
#[derive(Debug, Clone)]
pub struct Sql {
    /// The statement text.
    pub text: String,
    /// Its arguments, in placeholder order.
    pub args: Vec<Arg>,
    style: Style,
}

/// The `n`th placeholder (from 1) in `style`.
fn placeholder(style: Style, n: usize) -> String {
    match style {
        Style::Question => format!("?{n}"),
        Style::Dollar => format!("${n}"),
    }
}

/// Converts a sequence or count to the database's signed integer.
pub fn int(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::new(Fault::Internal, "number out of range"))
}

impl Sql {
    /// A statement written with `{1}`, `{2}`, … for its arguments, in
    /// `style`.
    pub fn with(style: Style, text: &str, args: Vec<Arg>) -> Sql {
        let mut text = text.to_owned();
        for i in (1..=args.len()).rev() {
            text = text.replace(&format!("{{{i}}}"), &placeholder(style, i));
        }
        Sql { text, args, style }
    }

    fn new(style: Style, text: &str) -> Sql {
        Sql {
            text: text.to_owned(),
            args: Vec::new(),
            style,
        }
    }

    /// Adds an argument and returns its placeholder.
    pub fn arg(&mut self, a: Arg) -> String {
        self.args.push(a);
        placeholder(self.style, self.args.len())
    }

    /// Appends ` AND <party is a member of the row's channel>`. A correlated
    /// test rather than `IN (…)`, so the rows are still read in sequence
    /// order and a page stops after `LIMIT` rows instead of sorting every
    /// row of the party's channels.
    ///
    /// `channel_members` holds each channel's [`Channel::members`], the
    /// audience the domain defines for the channel and everything on it
    /// (`Caller::may_see`); this is that rule read through the index.
    ///
    /// [`Channel::members`]: crate::domain::Channel::members
    fn member_of(&mut self, column: &str, party: &str) {
        let p = self.arg(Arg::Text(party.to_owned()));
        self.text += &format!(
            " AND EXISTS (SELECT 1 FROM channel_members m \
               WHERE m.party_id = {p} AND m.channel_id = {column})"
        );
    }

    /// Appends ` AND <column> = <value>`.
    fn eq(&mut self, column: &str, value: Arg) {
        let p = self.arg(value);
        self.text += &format!(" AND {column} = {p}");
    }

    fn order_limit(&mut self, order: &str, limit: usize) -> Result<(), StoreError> {
        let p = self.arg(Arg::Int(int(limit as u64)?));
        self.text += &format!(" ORDER BY {order} LIMIT {p}");
        Ok(())
    }
}

/// Channels, newest first: rows of (seq, data).
pub fn channels(q: &ChannelQuery, style: Style) -> Result<Sql, StoreError> {
    let mut s = Sql::new(style, "SELECT seq, data FROM channels WHERE seq < ");
    let p = s.arg(Arg::Int(int(q.before)?));
    s.text += &p;
    for party in [&q.viewer, &q.party].into_iter().flatten() {
        s.member_of("channels.id", party.as_str());
    }
    if let Some(state) = q.state {
        s.eq(
            "state",
            Arg::Int(i64::from(convert::channel_state_pb(state) as i32)),
        );
    }
    s.order_limit("seq DESC", q.limit)?;
    Ok(s)
}

/// Messages sent at or before `head`, newest first: rows of (seq, data).
pub fn messages(q: &MessageQuery, head: u64, style: Style) -> Result<Sql, StoreError> {
    let mut s = Sql::new(style, "SELECT seq, data FROM messages WHERE seq < ");
    let p = s.arg(Arg::Int(int(q.before)?));
    s.text += &p;
    let p = s.arg(Arg::Int(int(head)?));
    s.text += &format!(" AND seq <= {p}");
    for party in [&q.viewer, &q.party].into_iter().flatten() {
        s.member_of("messages.channel_id", party.as_str());
    }
    if let Some(c) = q.channel {
        s.eq("channel_id", Arg::Text(c.to_string()));
    }
    if let Some(t) = q.thread {
        s.eq("thread_id", Arg::Text(t.to_string()));
    }
    if let Some(state) = q.state {
        s.eq(
            "state",
            Arg::Int(i64::from(convert::message_state_pb(state) as i32)),
        );
    }
    s.order_limit("seq DESC", q.limit)?;
    Ok(s)
}

/// Events after `q.after`, oldest first: rows of
/// (seq, channel_id, message_id, thread_id, type, data, leaf_hash).
pub fn events(q: &EventQuery, style: Style) -> Result<Sql, StoreError> {
    let mut s = Sql::new(
        style,
        "SELECT seq, channel_id, message_id, thread_id, type, data, leaf_hash FROM events WHERE seq > ",
    );
    let p = s.arg(Arg::Int(int(q.after)?));
    s.text += &p;
    if let Some(t) = q.through {
        let p = s.arg(Arg::Int(int(t)?));
        s.text += &format!(" AND seq <= {p}");
    }
    if let Some(v) = &q.viewer {
        s.member_of("events.channel_id", v.as_str());
    }
    if let Some(c) = q.channel {
        s.eq("channel_id", Arg::Text(c.to_string()));
    }
    if let Some(m) = q.message {
        s.eq("message_id", Arg::Text(m.to_string()));
    }
    s.order_limit("seq", q.limit)?;
    Ok(s)
}

/// The frames of a page up to its first damaged event, and whether it
/// stopped there: a page that meets one ends just before it, so what is
/// intact is still served, and the next page (which starts at the damaged
/// event) is `RECORD_CORRUPT`.
pub fn intact(
    frames: impl IntoIterator<Item = Result<Frame, StoreError>>,
) -> Result<(Vec<Frame>, bool), StoreError> {
    let mut page = Vec::new();
    for f in frames {
        match f {
            Ok(f) => page.push(f),
            Err(e) if page.is_empty() => return Err(e),
            Err(_) => return Ok((page, true)),
        }
    }
    Ok((page, false))
}

/// A row of [`events`] as a [`Frame`], checked against its leaf hash
/// (`RECORD_CORRUPT` if damaged); the encoding is not decoded.
#[allow(clippy::too_many_arguments)]
pub fn frame(
    seq: i64,
    channel_id: &str,
    message_id: Option<&str>,
    thread_id: Option<&str>,
    kind: i64,
    data: Vec<u8>,
    leaf_hash: Option<Vec<u8>>,
) -> Result<Frame, StoreError> {
    let sequence = u64::try_from(seq).map_err(super::record::corrupt)?;
    super::record::check_leaf(sequence, &data, leaf_hash.as_deref().unwrap_or_default())?;
    let bad = |e: String| {
        tracing::error!(sequence, error = %e, "damaged event row");
        super::record::damaged(sequence)
    };
    let id = |s: &str| Id::parse(s).map_err(bad);
    Ok(Frame {
        sequence,
        channel_id: id(channel_id)?,
        message_id: message_id.map(id).transpose()?,
        thread_id: thread_id.map(id).transpose()?,
        kind: convert::event_type(i32::try_from(kind).map_err(|e| bad(e.to_string()))?)
            .map_err(bad)?,
        data: data.into(),
    })
}

/// The messages whose deadline has passed, in a state that expires: the
/// predicate of the `messages_due` partial index, derived from
/// [`MessageState::can_expire`] (the index's own text must be this, or a
/// backend cannot use it; a test compares them).
pub fn due_predicate() -> &'static str {
    static PREDICATE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let states: Vec<String> = MessageState::ALL
            .iter()
            .filter(|s| s.can_expire())
            .map(|&s| (convert::message_state_pb(s) as i32).to_string())
            .collect();
        format!(
            "respond_by IS NOT NULL AND state IN ({})",
            states.join(", ")
        )
    });
    &PREDICATE
}

/// The ids of at most `limit` messages due at `now`, soonest deadline
/// first (`?1`/`$1` the time, `?2`/`$2` the limit).
pub fn overdue(style: Style) -> &'static str {
    static TEXTS: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
        let text = |index: &str, now: &str, limit: &str| {
            format!(
                "SELECT id FROM messages {index} WHERE {} AND respond_by <= {now} \
                 ORDER BY respond_by LIMIT {limit}",
                due_predicate()
            )
        };
        [
            text("INDEXED BY messages_due", "?1", "?2"),
            text("", "$1", "$2"),
        ]
    });
    match style {
        Style::Question => &TEXTS[0],
        Style::Dollar => &TEXTS[1],
    }
}

/// Whether any message is due at `now` (`?1` / `$1`), read without the
/// writer.
pub fn any_due(style: Style) -> &'static str {
    static TEXTS: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
        let text = |index: &str, now: &str| {
            format!(
                "SELECT EXISTS (SELECT 1 FROM messages {index} WHERE {} AND respond_by <= {now})",
                due_predicate()
            )
        };
        [text("INDEXED BY messages_due", "?1"), text("", "$1")]
    });
    match style {
        Style::Question => &TEXTS[0],
        Style::Dollar => &TEXTS[1],
    }
}

#[cfg(test)]
mod due_tests {
    use super::due_predicate;

    /// Whitespace runs as one space.
    fn squeeze(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn the_due_index_of_each_backend_is_the_domains_predicate() {
        let want = format!("ON messages (respond_by) WHERE {};", due_predicate());
        for (backend, sql) in [
            (
                "sqlite",
                include_str!("../../migrations/sqlite/0001_init.sql"),
            ),
            (
                "postgres",
                include_str!("../../migrations/postgres/0001_init.sql"),
            ),
        ] {
            assert!(
                squeeze(sql).contains(&want),
                "{backend}'s messages_due index is not `{want}`"
            );
        }
        assert_eq!(
            due_predicate(),
            "respond_by IS NOT NULL AND state IN (1, 2, 3, 4)"
        );
    }
}
