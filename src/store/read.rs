//! The read side, written once for every SQL backend. A backend provides
//! the few things that differ ([`Reads`]: running a statement, one
//! snapshot for a page and the head it was read at, a page of events cut
//! at a byte budget); what is read and how it becomes records is here.

use std::future::Future;

use super::error::{Fault, StoreError};
use super::query::{self, Arg, Sql, Style};
use super::record::{corrupt, decode_channel, decode_event, decode_message, decode_party};
use super::{ChannelQuery, EventQuery, Frame, MessageQuery, TokenRecord};
use crate::domain::{Channel, Event, Id, Message, Party, PartyId, Time};

/// A column's value as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer (or a boolean, as 0 or 1).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

/// A row as read: its columns in select order.
#[derive(Debug, Clone, Default)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::new(Fault::Internal, format!("no column {i}")))
    }

    fn mistyped(&self, i: usize, want: &str) -> StoreError {
        corrupt(format!("column {i} is not {want}: {:?}", self.0.get(i)))
    }

    /// An integer column.
    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?
            .ok_or_else(|| self.mistyped(i, "an integer"))
    }

    /// An integer column that may be NULL.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(n) => Ok(Some(*n)),
            _ => Err(self.mistyped(i, "an integer")),
        }
    }

    /// A boolean column (an integer on SQLite).
    pub fn bool(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.int(i)? != 0)
    }

    /// A sequence or count: a non-negative integer.
    pub fn count(&self, i: usize) -> Result<u64, StoreError> {
        u64::try_from(self.int(i)?).map_err(corrupt)
    }

    /// A text column.
    pub fn text(&self, i: usize) -> Result<&str, StoreError> {
        self.opt_text(i)?.ok_or_else(|| self.mistyped(i, "text"))
    }

    /// A text column that may be NULL.
    pub fn opt_text(&self, i: usize) -> Result<Option<&str>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s)),
            _ => Err(self.mistyped(i, "text")),
        }
    }

    /// A bytes column, taken out of the row.
    pub fn take_bytes(&mut self, i: usize) -> Result<Vec<u8>, StoreError> {
        self.take_opt_bytes(i)?
            .ok_or_else(|| self.mistyped(i, "bytes"))
    }

    /// A bytes column that may be NULL, taken out of the row.
    pub fn take_opt_bytes(&mut self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        match self.0.get_mut(i) {
            Some(Value::Null) => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(std::mem::take(b))),
            _ => Err(self.mistyped(i, "bytes")),
        }
    }

    /// A bytes column.
    pub fn bytes(&self, i: usize) -> Result<&[u8], StoreError> {
        match self.at(i)? {
            Value::Bytes(b) => Ok(b),
            _ => Err(self.mistyped(i, "bytes")),
        }
    }
}

/// What a backend gives the read side.
pub trait Reads: Send + Sync + 'static {
    /// The backend's placeholders.
    const STYLE: Style;

    /// The rows of one statement.
    fn rows(&self, sql: Sql) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send;

    /// The log head (`head`, or read if `None`) and the rows of the
    /// statement `page` builds for it, in one snapshot.
    fn at_head(
        &self,
        head: Option<u64>,
        page: impl FnOnce(u64) -> Result<Sql, StoreError> + Send + 'static,
    ) -> impl Future<Output = Result<(Vec<Row>, u64), StoreError>> + Send;

    /// The rows of an event listing, no more once they hold `max_bytes` of
    /// column 5 (the encoding): the row that crosses it is the last.
    fn event_rows(
        &self,
        sql: Sql,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send;

    /// The log head.
    fn head(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The read side over a backend.
#[derive(Debug, Clone)]
pub struct Reader<B>(pub B);

impl<B: Reads> Reader<B> {
    fn sql(text: &str, args: Vec<Arg>) -> Sql {
        Sql::with(B::STYLE, text, args)
    }

    async fn one_bytes(&self, text: &str, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        let mut rows = self.0.rows(Self::sql(text, vec![Arg::Text(key)])).await?;
        rows.first_mut().map(|r| r.take_bytes(0)).transpose()
    }

    /// The key that signs page tokens.
    pub async fn page_key(&self) -> Result<Vec<u8>, StoreError> {
        self.one_bytes("SELECT value FROM meta WHERE key = {1}", "page_key".into())
            .await?
            .ok_or_else(|| corrupt("no page key"))
    }

    /// Every token, for the authenticator's cache.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = self
            .0
            .rows(Self::sql(
                "SELECT id, party_id, secret_hash, read_only, create_time, expire_time,
                        revoke_time, last_use_time
                 FROM tokens ORDER BY id",
                Vec::new(),
            ))
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(TokenRecord {
                    token_id: Id::parse(r.text(0)?).map_err(corrupt)?,
                    party_id: PartyId::trusted(r.text(1)?.to_owned()),
                    secret_hash: r
                        .bytes(2)?
                        .try_into()
                        .map_err(|_| corrupt("bad token hash"))?,
                    read_only: r.bool(3)?,
                    create_time: Time(r.int(4)?),
                    expire_time: r.opt_int(5)?.map(Time),
                    revoke_time: r.opt_int(6)?.map(Time),
                    last_use_time: r.opt_int(7)?.map(Time),
                })
            })
            .collect()
    }

    /// One party.
    pub async fn party(&self, id: PartyId) -> Result<Option<Party>, StoreError> {
        self.one_bytes("SELECT data FROM parties WHERE id = {1}", id.to_string())
            .await?
            .map(|b| decode_party(&b))
            .transpose()
    }

    /// Parties ordered by id, after `after`.
    pub async fn parties(&self, after: String, limit: usize) -> Result<Vec<Party>, StoreError> {
        let rows = self
            .0
            .rows(Self::sql(
                "SELECT data FROM parties WHERE id > {1} ORDER BY id LIMIT {2}",
                vec![Arg::Text(after), Arg::Int(query::int(limit as u64)?)],
            ))
            .await?;
        rows.iter().map(|r| decode_party(r.bytes(0)?)).collect()
    }

    /// One channel.
    pub async fn channel(&self, id: Id) -> Result<Option<Channel>, StoreError> {
        self.one_bytes("SELECT data FROM channels WHERE id = {1}", id.to_string())
            .await?
            .map(|b| decode_channel(&b))
            .transpose()
    }

    /// One message.
    pub async fn message(&self, id: Id) -> Result<Option<Message>, StoreError> {
        self.one_bytes("SELECT data FROM messages WHERE id = {1}", id.to_string())
            .await?
            .map(|b| decode_message(&b))
            .transpose()
    }

    /// Whether any message is past its deadline at `now`, in a state that
    /// expires.
    pub async fn due(&self, now: Time) -> Result<bool, StoreError> {
        let rows = self
            .0
            .rows(Self::sql(query::any_due(B::STYLE), vec![Arg::Int(now.0)]))
            .await?;
        match rows.first() {
            Some(r) => r.bool(0),
            None => Ok(false),
        }
    }

    /// The last sequence in the log.
    pub async fn head(&self) -> Result<u64, StoreError> {
        self.0.head().await
    }

    /// A page of channels, newest first, with their creation sequences.
    pub async fn channels(&self, q: ChannelQuery) -> Result<Vec<(u64, Channel)>, StoreError> {
        let rows = self.0.rows(query::channels(&q, B::STYLE)?).await?;
        rows.iter()
            .map(|r| Ok((r.count(0)?, decode_channel(r.bytes(1)?)?)))
            .collect()
    }

    /// A page of messages, newest first, with their creation sequences, and
    /// the log head the page was read at (one snapshot).
    pub async fn messages(
        &self,
        q: MessageQuery,
    ) -> Result<(Vec<(u64, Message)>, u64), StoreError> {
        let known = q.head;
        let (rows, head) = self
            .0
            .at_head(known, move |head| query::messages(&q, head, B::STYLE))
            .await?;
        let page = rows
            .iter()
            .map(|r| Ok((r.count(0)?, decode_message(r.bytes(1)?)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((page, head))
    }

    /// A page of events as stored, oldest first, each checked against its
    /// leaf hash.
    pub async fn frame_rows(
        &self,
        q: EventQuery,
    ) -> Result<Vec<Result<Frame, StoreError>>, StoreError> {
        let max_bytes = q.max_bytes;
        let rows = self
            .0
            .event_rows(query::events(&q, B::STYLE)?, max_bytes)
            .await?;
        Ok(rows.into_iter().map(frame).collect())
    }

    /// A page of events, oldest first.
    pub async fn events(&self, q: EventQuery) -> Result<Vec<Event>, StoreError> {
        self.frame_rows(q)
            .await?
            .into_iter()
            .map(|f| decode_event(&f?.data))
            .collect()
    }
}

/// A row of [`query::events`] as a frame, checked against its leaf hash.
fn frame(mut r: Row) -> Result<Frame, StoreError> {
    let data = r.take_bytes(5)?;
    let leaf = r.take_opt_bytes(6)?;
    query::frame(
        r.int(0)?,
        r.text(1)?,
        r.opt_text(2)?,
        r.opt_text(3)?,
        r.int(4)?,
        data,
        leaf,
    )
}
