//! `sustained`: a minute of sends on a store that already holds a million
//! messages, with the write-ahead log watched.

use crate::*;

/// `sustained`: tops the store up to [`SustainedPlan::preload`] messages,
/// measures a no-op baseline at the same concurrency, then sends with a
/// fresh `request_id` per call for [`SustainedPlan::run`], slice by slice,
/// while it watches the write-ahead log; last, the disk used per message.
pub(crate) async fn run_sustained(
    world: &World,
    plan: &Plan,
    storage: &Storage,
    report: &mut Report,
    text: &mut String,
) -> Result<()> {
    let sp = plan.sustained;
    let channel = world.channel("bench sustained").await?;
    let wal = storage.wal_path();

    // The store must already hold `preload` messages: what earlier
    // scenarios stored counts, the rest is written now, as fast as the
    // server takes it.
    let stored_before = world.stored.load(Ordering::Relaxed);
    let missing = sp.preload.saturating_sub(stored_before);
    let mut preload = None;
    let mut preload_wal = None;
    if missing > 0 {
        progress(format!(
            "sustained: preloading {} messages ({} stored already)",
            fmt_count(missing),
            fmt_count(stored_before)
        ));
        let watch = wal.clone().map(WalWatch::start);
        let b = bulk_write(
            world,
            &channel,
            missing,
            BULK_CONCURRENCY,
            "sustained preload",
            None,
            PRELOAD_PROGRESS,
            // As the measured sends: a store written by careful clients
            // holds their idempotency records, and its index is no
            // longer empty when the first slice is measured.
            sp.request_id,
            report,
        )
        .await?;
        if let Some(w) = watch {
            preload_wal = w.stop().await.iter().map(|(_, n)| *n).max();
        }
        progress(format!(
            "sustained: preloaded {} messages in {:.1} s ({}/s)",
            fmt_count(b.written),
            b.secs,
            fmt_rate(b.written as f64 / b.secs)
        ));
        preload = Some(b);
    }
    let at_start = world.stored.load(Ordering::Relaxed);

    // The no-op ceiling, at the same concurrency, on the same server state.
    let base = closed_loop(
        sp.in_flight,
        plan.timing,
        world.server_pid,
        health_op(world),
    )
    .await;
    report.error("sustained baseline", &base);
    progress(format!(
        "sustained: baseline c={}: {} calls/s, p99 {} ms",
        sp.in_flight,
        fmt_rate(base.rate()),
        fmt_ms(base.whole.ms(0.99))
    ));

    progress(format!(
        "sustained: {} SendMessage calls {} in flight for {:.0} s, on {} messages",
        sp.in_flight,
        if sp.request_id {
            "with request_id"
        } else {
            "without request_id"
        },
        sp.run.as_secs_f64(),
        fmt_count(at_start)
    ));
    let timing = Timing {
        warmup: plan.timing.warmup,
        measure: sp.run,
    };
    let watch = wal.clone().map(WalWatch::start);
    let sends = closed_loop_sliced(
        sp.in_flight,
        timing,
        Some(sp.slice),
        world.server_pid,
        send_op(world, &channel, sp.request_id),
    )
    .await;
    let wal_samples = match watch {
        Some(w) => Some(w.stop().await),
        None => None,
    };
    report.error("sustained", &sends);
    let disk = match storage.bytes().await {
        Ok(b) => b,
        Err(e) => {
            progress(format!("sustained: cannot measure the disk used: {e}"));
            None
        }
    };
    let s = Sustained::new(
        plan,
        storage,
        Preload {
            stored_before,
            bulk: preload,
            wal_peak: preload_wal,
        },
        at_start,
        base,
        sends,
        wal_samples.as_deref(),
        wal.as_deref().and_then(file_len),
        disk,
        world.stored.load(Ordering::Relaxed),
    );
    progress(format!(
        "sustained: {} calls/s ({}x baseline), last/first slice {}, WAL peak {} MiB, {} bytes/message",
        fmt_rate(s.sends.rate()),
        fmt_ratio(s.to_baseline),
        fmt_ratio(s.last_to_first),
        fmt_mib(s.wal_peak),
        s.per_message
            .map_or("-".into(), |v| fmt_count(v.round() as u64))
    ));
    text.push_str(&s.text());
    report.json.insert("sustained".into(), s.json());
    Ok(())
}

/// How `sustained` met its preload.
pub(crate) struct Preload {
    /// Messages earlier scenarios had stored.
    pub(crate) stored_before: u64,
    /// What was written to make up the rest, if anything was missing.
    pub(crate) bulk: Option<Bulk>,
    /// The WAL's largest size while that was written.
    pub(crate) wal_peak: Option<u64>,
}

/// One slice of the `sustained` sends.
pub(crate) struct Slice {
    /// From the start of the measurement window.
    pub(crate) from: Duration,
    pub(crate) to: Duration,
    /// Calls that ended in the slice, per second.
    pub(crate) rate: f64,
    /// The WAL's largest size sampled in the slice.
    pub(crate) wal_peak: Option<u64>,
}

/// What `sustained` measured, and the figures derived from it.
pub(crate) struct Sustained<'a> {
    pub(crate) plan: &'a Plan,
    pub(crate) storage: &'a Storage,
    pub(crate) preload: Preload,
    /// Messages stored when the sends started.
    pub(crate) at_start: u64,
    /// `Health/Check` at the same concurrency.
    pub(crate) base: Load,
    /// The sends, with their slices.
    pub(crate) sends: Load,
    pub(crate) slices: Vec<Slice>,
    /// The WAL's largest size while sending (warm-up included).
    pub(crate) wal_peak: Option<u64>,
    /// Its size when the disk was measured, right after the sends.
    pub(crate) wal_now: Option<u64>,
    /// What [`Storage::bytes`] said right after the sends.
    pub(crate) disk: Option<u64>,
    /// Messages stored then.
    pub(crate) stored: u64,
    pub(crate) per_message: Option<f64>,
    /// The same without the WAL, which a checkpoint empties into the
    /// database file (and which a WAL over its bound dominates).
    pub(crate) per_message_without_wal: Option<f64>,
    pub(crate) last_to_first: Option<f64>,
    pub(crate) to_baseline: Option<f64>,
}

impl<'a> Sustained<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        plan: &'a Plan,
        storage: &'a Storage,
        preload: Preload,
        at_start: u64,
        base: Load,
        sends: Load,
        wal_samples: Option<&[(Instant, u64)]>,
        wal_now: Option<u64>,
        disk: Option<u64>,
        stored: u64,
    ) -> Sustained<'a> {
        let m0 = sends.window_start;
        let slices: Vec<Slice> = slice_bounds(plan.sustained.run, plan.sustained.slice)
            .into_iter()
            .zip(&sends.slices)
            .map(|((from, to), s)| Slice {
                from,
                to,
                rate: s.len() as f64 / (to - from).as_secs_f64(),
                wal_peak: wal_samples.and_then(|w| wal_peak(w, m0 + from, m0 + to)),
            })
            .collect();
        let last_to_first = match (slices.first(), slices.last()) {
            (Some(f), Some(l)) if slices.len() > 1 && f.rate > 0.0 => Some(l.rate / f.rate),
            _ => None,
        };
        Sustained {
            plan,
            storage,
            preload,
            at_start,
            to_baseline: (base.rate() > 0.0).then(|| sends.rate() / base.rate()),
            base,
            wal_peak: wal_samples.and_then(|w| w.iter().map(|(_, n)| *n).max()),
            sends,
            slices,
            wal_now,
            per_message: disk
                .filter(|_| stored > 0)
                .map(|b| b as f64 / stored as f64),
            per_message_without_wal: match (disk, wal_now) {
                (Some(d), Some(w)) if stored > 0 => {
                    Some(d.saturating_sub(w) as f64 / stored as f64)
                }
                _ => None,
            },
            disk,
            stored,
            last_to_first,
        }
    }

    /// The table, with what it was measured on above it.
    pub(crate) fn text(&self) -> String {
        let (sp, timing) = (&self.plan.sustained, &self.plan.timing);
        let mut note = match &self.preload.bulk {
            Some(b) => format!(
                "preload: {} messages written first ({BULK_CONCURRENCY} in flight, {}) in {:.1} s ({}/s), \
                 beside the {} earlier scenarios stored",
                fmt_count(b.written),
                if sp.request_id {
                    "each with a request_id, as the measured sends"
                } else {
                    "no request_id"
                },
                b.secs,
                fmt_rate(b.written as f64 / b.secs),
                fmt_count(self.preload.stored_before)
            ),
            None => format!(
                "preload: none needed, earlier scenarios stored {} messages",
                fmt_count(self.preload.stored_before)
            ),
        };
        note.push_str(&format!(
            "; the store held {} messages at the start{}\n",
            fmt_count(self.at_start),
            if self.at_start < DEFAULT_SUSTAINED_PRELOAD {
                format!(
                    " (NOTE: not the {} of the target; --sustained-preload {DEFAULT_SUSTAINED_PRELOAD} for that)",
                    fmt_count(DEFAULT_SUSTAINED_PRELOAD)
                )
            } else {
                String::new()
            }
        ));
        note.push_str(&format!(
            "no-op baseline (Health/Check, {} in flight, {:.2} s after {:.2} s warm-up): {} calls/s, p99 {} ms, \
             CPU server/bench {} %\n",
            sp.in_flight,
            timing.measure.as_secs_f64(),
            timing.warmup.as_secs_f64(),
            fmt_rate(self.base.rate()),
            fmt_ms(self.base.whole.ms(0.99)),
            self.base.cpu.cell()
        ));
        note.push_str(&format!(
            "sends: {} calls in {:.0} s after {:.2} s warm-up = {} calls/s; sustained/baseline {}; \
             last/first slice {}; {} failed calls; CPU server/bench {} %\n",
            fmt_count(self.sends.whole.len() as u64),
            sp.run.as_secs_f64(),
            timing.warmup.as_secs_f64(),
            fmt_rate(self.sends.rate()),
            fmt_ratio(self.to_baseline),
            fmt_ratio(self.last_to_first),
            self.sends.errors,
            self.sends.cpu.cell()
        ));
        note.push_str(&match (self.storage, self.wal_peak) {
            (Storage::Embedded(_), Some(peak)) => format!(
                "WAL ({}-wal, sampled every {} ms): peak {} MiB while sending{}; \
                 the bound claimed is {} MiB: {}\n",
                backchannel::store::sqlite::DB_FILE,
                WAL_POLL.as_millis(),
                fmt_mib(Some(peak)),
                self.preload.wal_peak.map_or(String::new(), |p| format!(
                    ", {} MiB during the preload",
                    fmt_mib(Some(p))
                )),
                fmt_mib(Some(sp.wal_bound)),
                if peak <= sp.wal_bound {
                    "within it"
                } else {
                    "OVER IT"
                }
            ),
            (Storage::Embedded(_), None) => "WAL: could not be sampled\n".into(),
            (Storage::Postgres { .. }, _) => "WAL: n/a (PostgreSQL)\n".into(),
            (Storage::Remote, _) => "WAL: n/a (a --target server)\n".into(),
        });
        let per_msg = |v: Option<f64>| v.map_or("-".into(), |v| fmt_count(v.round() as u64));
        let per = per_msg(self.per_message);
        note.push_str(&match (self.storage, self.disk) {
            (Storage::Embedded(_), Some(b)) => format!(
                "disk: {} MiB in the data directory (the WAL {} MiB of it) for {} messages stored = {per} bytes/message \
                 ({} without the WAL)",
                fmt_mib(Some(b)),
                fmt_mib(self.wal_now),
                fmt_count(self.stored),
                per_msg(self.per_message_without_wal),
            ),
            (Storage::Postgres { name, .. }, Some(b)) => format!(
                "disk: {} MiB (pg_database_size of {name}) for {} messages stored = {per} bytes/message",
                fmt_mib(Some(b)),
                fmt_count(self.stored),
            ),
            (Storage::Remote, _) => "disk: n/a (a --target server)".into(),
            (_, None) => "disk: could not be measured".into(),
        });
        let mut rows: Vec<Vec<String>> = self
            .slices
            .iter()
            .zip(&self.sends.slices)
            .enumerate()
            .map(|(k, (sl, s))| {
                vec![
                    (k + 1).to_string(),
                    fmt_secs(sl.from),
                    fmt_secs(sl.to),
                    fmt_rate(sl.rate),
                    fmt_ms(s.ms(0.5)),
                    fmt_ms(s.ms(0.99)),
                    fmt_ms(s.max_ms()),
                    fmt_mib(sl.wal_peak),
                ]
            })
            .collect();
        rows.push(vec![
            "all".into(),
            fmt_secs(Duration::ZERO),
            fmt_secs(sp.run),
            fmt_rate(self.sends.rate()),
            fmt_ms(self.sends.whole.ms(0.5)),
            fmt_ms(self.sends.whole.ms(0.99)),
            fmt_ms(self.sends.whole.max_ms()),
            fmt_mib(self.wal_peak),
        ]);
        table(
            &format!(
                "sustained: SendMessage {}, {} in flight for {:.0} s, \
                 on a store holding {} messages",
                if sp.request_id {
                    "with a request_id (a fresh UUID v4 per call)"
                } else {
                    "without a request_id (--sustained-without-request-id)"
                },
                sp.in_flight,
                sp.run.as_secs_f64(),
                fmt_count(self.at_start)
            ),
            &note,
            &[
                "slice",
                "from s",
                "to s",
                "calls/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "WAL peak MiB",
            ],
            &rows,
        )
    }

    /// The same figures, for `--json`.
    pub(crate) fn json(&self) -> Value {
        let sp = &self.plan.sustained;
        let mut j = self.sends.whole.json();
        self.sends.cpu.add_json(&mut j);
        let mut base = self.base.whole.json();
        base["concurrency"] = json!(sp.in_flight);
        base["calls_per_s"] = json!(round1(self.base.rate()));
        base["errors"] = json!(self.base.errors);
        self.base.cpu.add_json(&mut base);
        let slices: Vec<Value> = self
            .slices
            .iter()
            .zip(&self.sends.slices)
            .enumerate()
            .map(|(k, (sl, s))| {
                let mut v = s.json();
                v["slice"] = json!(k + 1);
                v["start_s"] = json!(sl.from.as_secs_f64());
                v["end_s"] = json!(sl.to.as_secs_f64());
                v["calls_per_s"] = json!(round1(sl.rate));
                v["wal_peak_bytes"] = json!(sl.wal_peak);
                v
            })
            .collect();
        let bulk = self.preload.bulk.as_ref();
        j["request_id"] = if sp.request_id {
            json!("uuid_v4")
        } else {
            json!(false)
        };
        j["in_flight"] = json!(sp.in_flight);
        j["warmup_s"] = json!(self.plan.timing.warmup.as_secs_f64());
        j["seconds"] = json!(sp.run.as_secs_f64());
        j["slice_seconds"] = json!(sp.slice.as_secs_f64());
        j["preload"] = json!({
            "asked": sp.preload,
            "stored_before": self.preload.stored_before,
            "written": bulk.map_or(0, |b| b.written),
            "seconds": bulk.map(|b| round3(Some(b.secs))),
            "written_per_s": bulk.map(|b| round1(b.written as f64 / b.secs)),
            "concurrency": BULK_CONCURRENCY,
            "request_id": false,
            "wal_peak_bytes": self.preload.wal_peak,
        });
        j["messages_at_start"] = json!(self.at_start);
        j["calls_per_s"] = json!(round1(self.sends.rate()));
        j["errors"] = json!(self.sends.errors);
        j["slices"] = json!(slices);
        j["last_to_first_slice"] = round3(self.last_to_first);
        j["baseline"] = base;
        j["ratio_to_baseline"] = round3(self.to_baseline);
        j["wal_peak_bytes"] = json!(self.wal_peak);
        j["wal_bound_bytes"] = json!(sp.wal_bound);
        j["wal_within_bound"] = json!(self.wal_peak.map(|p| p <= sp.wal_bound));
        j["wal_poll_ms"] = json!(WAL_POLL.as_millis() as u64);
        // Filled in once the server has stopped (embedded store only).
        j["wal_bytes_after_stop"] = Value::Null;
        j["disk"] = json!({
            "source": self.storage.source(),
            "bytes": self.disk,
            "wal_bytes": self.wal_now,
            "messages_stored": self.stored,
            "bytes_per_message": self.per_message.map(round1),
            "bytes_per_message_without_wal": self.per_message_without_wal.map(round1),
        });
        j
    }
}
