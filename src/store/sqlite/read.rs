//! How the read side reaches the file: a small pool of connections used
//! off the async threads ([`Reads`]).

use super::*;

impl Sqlite {
    /// Runs `f` on a pooled read connection, off the async threads.
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        // At most READERS connections (and blocking threads) read at once.
        let permit = self
            .readers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::new(Fault::Closing, "the store is closing"))?;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = this.idle.lock().ok().and_then(|mut v| v.pop());
            let mut conn = match conn {
                Some(c) => c,
                None => open(&this.path)?,
            };
            let r = f(&mut conn);
            if let Ok(mut idle) = this.idle.lock() {
                idle.push(conn);
            }
            r
        })
        .await
        .map_err(|e| StoreError::new(Fault::Internal, format!("reader failed: {e}")))?
    }
}

/// A rusqlite row as the read side's [`Row`].
pub(super) fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    use rusqlite::types::ValueRef;
    let n = r.as_ref().column_count();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(match r.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Real(v) => Value::Text(v.to_string()),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
        });
    }
    Ok(Row(out))
}

pub(super) fn params(args: &[Arg]) -> impl Iterator<Item = rusqlite::types::Value> + '_ {
    args.iter().map(|a| match a {
        Arg::Int(i) => rusqlite::types::Value::Integer(*i),
        Arg::Text(t) => rusqlite::types::Value::Text(t.clone()),
        Arg::OptInt(Some(i)) => rusqlite::types::Value::Integer(*i),
        Arg::OptInt(None) => rusqlite::types::Value::Null,
        Arg::Bool(b) => rusqlite::types::Value::Integer(i64::from(*b)),
        Arg::Bytes(b) => rusqlite::types::Value::Blob(b.clone()),
    })
}

/// The rows of `sql` on `c`.
pub(super) fn sql_rows(c: &Connection, sql: &Sql) -> Result<Vec<Row>, StoreError> {
    let mut s = c.prepare_cached(&sql.text).map_err(db_err)?;
    s.query_map(rusqlite::params_from_iter(params(&sql.args)), row_of)
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)
}

impl Reads for Arc<Sqlite> {
    const STYLE: Style = Style::Question;

    async fn rows(&self, sql: Sql) -> Result<Vec<Row>, StoreError> {
        self.read(move |c| sql_rows(c, &sql)).await
    }

    async fn at_head(
        &self,
        known: Option<u64>,
        page: impl FnOnce(u64) -> Result<Sql, StoreError> + Send + 'static,
    ) -> Result<(Vec<Row>, u64), StoreError> {
        self.read(move |c| {
            // One read transaction: the page and the head come from one snapshot.
            let tx = c.transaction().map_err(db_err)?;
            let head = match known {
                Some(h) => h,
                None => head(&tx)?,
            };
            let rows = sql_rows(&tx, &page(head)?)?;
            tx.commit().map_err(db_err)?;
            Ok((rows, head))
        })
        .await
    }

    async fn event_rows(&self, sql: Sql, max_bytes: usize) -> Result<Vec<Row>, StoreError> {
        self.read(move |c| {
            let mut s = c.prepare_cached(&sql.text).map_err(db_err)?;
            let mut rows = s
                .query(rusqlite::params_from_iter(params(&sql.args)))
                .map_err(db_err)?;
            // Rows are read one at a time, and no more once the page holds
            // `max_bytes`.
            let (mut out, mut bytes) = (Vec::new(), 0usize);
            while bytes < max_bytes
                && let Some(r) = rows.next().map_err(db_err)?
            {
                let row = row_of(r).map_err(db_err)?;
                bytes = bytes.saturating_add(row.bytes(5).map_or(0, <[u8]>::len));
                out.push(row);
            }
            Ok(out)
        })
        .await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.read(|c| head(c)).await
    }
}
