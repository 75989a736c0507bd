//! How the read side reaches the database: a pool of async connections,
//! every read under a deadline ([`Reads`]).

use super::*;

pub(super) fn bind(args: &[Arg]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|a| match a {
            Arg::Int(i) => i as &(dyn ToSql + Sync),
            Arg::Text(t) => t as &(dyn ToSql + Sync),
            Arg::OptInt(i) => i as &(dyn ToSql + Sync),
            Arg::Bool(b) => b as &(dyn ToSql + Sync),
            Arg::Bytes(b) => b as &(dyn ToSql + Sync),
        })
        .collect()
}

impl Postgres {
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// Runs a read with a deadline, so a call never hangs on the database.
    pub(super) async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(DB_TIMEOUT, f)
            .await
            .map_err(|_| unavailable("read timed out"))?
    }

    pub(super) async fn pg_rows(
        &self,
        sql: &str,
        args: &[Arg],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.timed(async {
            let c = self.client().await?;
            let st = c.prepare_cached(sql).await.map_err(pg_err)?;
            c.query(&st, &bind(args)).await.map_err(pg_err)
        })
        .await
    }
}

/// A tokio-postgres row as the read side's [`Row`].
pub(super) fn row_of(r: &tokio_postgres::Row) -> Result<Row, StoreError> {
    use tokio_postgres::types::Type;
    let mut out = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let t = col.type_();
        let v = if *t == Type::INT8 {
            r.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int))
        } else if *t == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)
                .map(|v| v.map(|n| Value::Int(n.into())))
        } else if *t == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)
                .map(|v| v.map(|n| Value::Int(n.into())))
        } else if *t == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)
                .map(|v| v.map(|b| Value::Int(b.into())))
        } else if *t == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)
                .map(|v| v.map(Value::Bytes))
        } else {
            r.try_get::<_, Option<String>>(i)
                .map(|v| v.map(Value::Text))
        };
        out.push(v.map_err(corrupt)?.unwrap_or(Value::Null));
    }
    Ok(Row(out))
}

impl Reads for Arc<Postgres> {
    const STYLE: Style = Style::Dollar;

    async fn rows(&self, sql: Sql) -> Result<Vec<Row>, StoreError> {
        self.pg_rows(&sql.text, &sql.args)
            .await?
            .iter()
            .map(row_of)
            .collect()
    }

    async fn at_head(
        &self,
        known: Option<u64>,
        page: impl FnOnce(u64) -> Result<Sql, StoreError> + Send + 'static,
    ) -> Result<(Vec<Row>, u64), StoreError> {
        self.timed(async {
            let mut c = self.client().await?;
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg_err)?;
            let head = match known {
                Some(h) => h,
                None => {
                    let h: i64 = tx
                        .query_one("SELECT head FROM log_head", &[])
                        .await
                        .map_err(pg_err)?
                        .get(0);
                    u64::try_from(h).map_err(corrupt)?
                }
            };
            let sql = page(head)?;
            let st = tx.prepare_cached(&sql.text).await.map_err(pg_err)?;
            let rows = tx.query(&st, &bind(&sql.args)).await.map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            let rows = rows.iter().map(row_of).collect::<Result<Vec<_>, _>>()?;
            Ok((rows, head))
        })
        .await
    }

    async fn event_rows(&self, mut sql: Sql, max_bytes: usize) -> Result<Vec<Row>, StoreError> {
        if let Ok(max) = i64::try_from(max_bytes) {
            // The server sends only the rows before the one that crosses
            // `max_bytes` (and that one): a page of large events is not
            // sent whole to be cut here.
            let p = sql.arg(Arg::Int(max));
            sql.text = format!(
                "SELECT seq, channel_id, message_id, thread_id, type, data, leaf_hash FROM (
                     SELECT page.*, (SUM(octet_length(page.data)) OVER (ORDER BY page.seq)
                                     - octet_length(page.data))::bigint AS before_bytes
                     FROM ({}) page
                 ) t WHERE before_bytes < {p}::bigint ORDER BY seq",
                sql.text
            );
        }
        let rows = self.pg_rows(&sql.text, &sql.args).await?;
        // The page keeps no more than `max_bytes` (the rows themselves go
        // as soon as this returns).
        let mut bytes = 0usize;
        rows.iter()
            .take_while(|r| {
                let more = bytes < max_bytes;
                bytes = bytes.saturating_add(r.get::<_, &[u8]>(5).len());
                more
            })
            .map(row_of)
            .collect()
    }

    async fn head(&self) -> Result<u64, StoreError> {
        let rows = self.pg_rows("SELECT head FROM log_head", &[]).await?;
        let h: i64 = rows.first().ok_or_else(|| corrupt("no log head"))?.get(0);
        u64::try_from(h).map_err(corrupt)
    }
}
