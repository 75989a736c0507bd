//! `catchup`: writing many messages fast, and one subscriber replaying the
//! log from its start.

use crate::*;

/// Writes `n` messages on `channel` with many requests in flight, saying
/// how far it got every `progress_every`; returns a sample of their ids and
/// how long it took.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn bulk_write(
    world: &World,
    channel: &str,
    n: u64,
    concurrency: usize,
    label: &str,
    cap: Option<Duration>,
    progress_every: Duration,
    request_id: bool,
    report: &mut Report,
) -> Result<Bulk> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let sample = Arc::new(Mutex::new(Vec::new()));
    let stride = (n / 4000).max(1);
    let started = Instant::now();
    let reporter = {
        let done = done.clone();
        let label = label.to_string();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(progress_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let d = done.load(Ordering::Relaxed);
                progress(format!(
                    "{label}: wrote {} of {} messages ({}/s)",
                    fmt_rate(d as f64),
                    fmt_rate(n as f64),
                    fmt_rate(d as f64 / started.elapsed().as_secs_f64())
                ));
            }
        })
    };
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let mut m = world.iran.on(t).messages;
        let (next, done, sample) = (next.clone(), done.clone(), sample.clone());
        let stored = world.stored.clone();
        let channel = channel.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut errors, mut first_error) = (0u64, None);
            loop {
                if cap.is_some_and(|c| started.elapsed() >= c) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let mut req = send_req(&channel, i);
                if request_id {
                    req.request_id = uuid::Uuid::new_v4().to_string();
                }
                match m.send_message(req).await {
                    Ok(r) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        stored.fetch_add(1, Ordering::Relaxed);
                        if i % stride == 0 {
                            sample.lock().unwrap().push(r.into_inner().id);
                        }
                    }
                    Err(s) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (errors, first_error)
        }));
    }
    let mut errors = 0;
    let mut first = None;
    for t in tasks {
        let (e, f) = t.await?;
        errors += e;
        if first.is_none() {
            first = f;
        }
    }
    reporter.abort();
    if errors > 0 {
        report.errors += errors;
        report.failures.push(format!(
            "{label}: {errors} sends failed (first: {})",
            first.unwrap_or_default()
        ));
    }
    let written = done.load(Ordering::Relaxed);
    Ok(Bulk {
        ids: std::mem::take(&mut *sample.lock().unwrap()),
        written,
        secs: started.elapsed().as_secs_f64(),
        capped: written + errors < n,
    })
}

/// What [`bulk_write`] did.
pub(crate) struct Bulk {
    /// A sample of the ids written (about 4,000, spread evenly).
    pub(crate) ids: Vec<String>,
    /// Messages written.
    pub(crate) written: u64,
    /// How long it took.
    pub(crate) secs: f64,
    /// Whether it stopped at its time cap before writing all it was asked.
    pub(crate) capped: bool,
}

/// The catch-up read: one admin subscriber from `start_after = 0` to the
/// caught-up heartbeat.
pub(crate) async fn catchup_read(world: &World) -> Result<Value> {
    let conn = connect(&world.addr).await?;
    let started = Instant::now();
    let mut stream = subscribe_lite(
        conn,
        &world.admin.bearer,
        pb::SubscribeRequest {
            start_after: Some(0),
            ..Default::default()
        },
    )
    .await?;
    let (mut count, mut last, mut gaps, mut disorder) = (0u64, 0u64, 0u64, 0u64);
    let mut next_progress = Instant::now() + Duration::from_secs(3);
    let head = loop {
        let r = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .map_err(|_| "catchup: no item from the stream within 60 s")??
            .ok_or("catchup: the stream ended before the caught-up heartbeat")?;
        if let Some(e) = r.event {
            count += 1;
            if e.sequence <= last {
                disorder += 1;
            } else {
                gaps += e.sequence - last - 1;
                last = e.sequence;
            }
            if count.is_multiple_of(65536) && Instant::now() >= next_progress {
                next_progress = Instant::now() + Duration::from_secs(3);
                progress(format!(
                    "catchup: read {} events ({}/s)",
                    fmt_rate(count as f64),
                    fmt_rate(count as f64 / started.elapsed().as_secs_f64())
                ));
            }
        } else if let Some(h) = r.heartbeat {
            break h.head_sequence;
        }
    };
    let secs = started.elapsed().as_secs_f64();
    // The admin sees every event, unfiltered: anything below the head that
    // did not arrive is lost.
    gaps += head.saturating_sub(last);
    Ok(json!({
        "events": count,
        "head_sequence": head,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "events_per_s": round1(count as f64 / secs),
        "lost": gaps,
        "out_of_order": disorder,
    }))
}
