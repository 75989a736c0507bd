//! `fanout`: subscribers on one channel while writers send at a set rate.

use crate::*;

/// What one fan-out subscriber saw.
#[derive(Default)]
pub(crate) struct SubSeen {
    pub(crate) seqs: Vec<u64>,
    pub(crate) latencies: Vec<u64>,
    pub(crate) in_window: u64,
    pub(crate) disorder: u64,
    pub(crate) error: Option<String>,
    pub(crate) timed_out: bool,
}

/// The measurement window of a fan-out point, by the monotonic clock (for
/// counting deliveries) and by the wall clock (for picking the events whose
/// latency counts, by their `record_time`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Windows {
    pub(crate) m0: Instant,
    pub(crate) m1: Instant,
    pub(crate) wall0: i128,
    pub(crate) wall1: i128,
}

/// When subscribers may stop: the last expected sequence, and a deadline.
pub(crate) type EndSignal = Option<(u64, tokio::time::Instant)>;

pub(crate) async fn fanout_subscriber(
    conn: Channel,
    bearer: Bearer,
    req: pb::SubscribeRequest,
    ready: Arc<(AtomicUsize, Notify)>,
    mut end: watch::Receiver<EndSignal>,
    windows: Arc<OnceLock<Windows>>,
) -> SubSeen {
    let mut seen = SubSeen::default();
    let mut stream = match subscribe_lite(conn, &bearer, req).await {
        Ok(s) => s,
        Err(s) => {
            seen.error = Some(format!("subscribe: {:?}: {}", s.code(), s.message()));
            ready.0.fetch_add(1, Ordering::SeqCst);
            ready.1.notify_one();
            return seen;
        }
    };
    let mut is_ready = false;
    let mut last = 0u64;
    loop {
        let target = *end.borrow_and_update();
        if let Some((t, _)) = target
            && last >= t
        {
            break;
        }
        let deadline = target.map(|(_, d)| d);
        tokio::select! {
            biased;
            m = stream.message() => match m {
                Ok(Some(r)) => {
                    if let Some(e) = r.event {
                        if e.sequence <= last {
                            seen.disorder += 1;
                        }
                        last = last.max(e.sequence);
                        seen.seqs.push(e.sequence);
                        if let Some(w) = windows.get() {
                            let now = Instant::now();
                            if now >= w.m0 && now <= w.m1 {
                                seen.in_window += 1;
                            }
                            if let Some(rt) = &e.record_time {
                                let rt = ts_nanos(rt);
                                if rt >= w.wall0 && rt <= w.wall1 {
                                    let lat = unix_nanos(SystemTime::now()) - rt;
                                    seen.latencies.push(lat.max(0) as u64);
                                }
                            }
                        }
                    } else if let Some(h) = r.heartbeat {
                        if !is_ready {
                            is_ready = true;
                            ready.0.fetch_add(1, Ordering::SeqCst);
                            ready.1.notify_one();
                        }
                        if let Some((t, _)) = target && h.head_sequence >= t {
                            break;
                        }
                    }
                }
                Ok(None) => {
                    seen.error = Some("the stream ended without a status".into());
                    break;
                }
                Err(s) => {
                    seen.error = Some(format!("{:?}: {}", s.code(), s.message()));
                    break;
                }
            },
            r = end.changed() => {
                if r.is_err() {
                    break;
                }
            }
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                seen.timed_out = true;
                break;
            }
        }
    }
    if !is_ready {
        ready.0.fetch_add(1, Ordering::SeqCst);
        ready.1.notify_one();
    }
    seen
}

/// Every sequence of `channel` after `after`, as the admin lists them.
pub(crate) async fn channel_sequences(
    world: &World,
    channel: &str,
    after: u64,
) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let mut req = pb::ListEventsRequest {
        channel_id: channel.into(),
        after_sequence: after,
        page_size: 1000,
        ..Default::default()
    };
    let mut m = world.admin.on(0).messages;
    loop {
        let r = m.list_events(req.clone()).await?.into_inner();
        out.extend(r.events.iter().map(|e| e.sequence));
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        req.page_token = r.next_page_token;
    }
}

/// How many of `expected` (sorted) appear in `got`.
pub(crate) fn matched(expected: &[u64], got: &mut Vec<u64>) -> usize {
    got.sort_unstable();
    got.dedup();
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < expected.len() && j < got.len() {
        match expected[i].cmp(&got[j]) {
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
        }
    }
    n
}
pub(crate) async fn fanout_point(
    world: &World,
    plan: &Plan,
    subs: usize,
    rate: u64,
    report: &mut Report,
) -> Result<(Vec<String>, Value)> {
    let channel = world
        .channel(&format!("bench fanout {subs}x{rate}"))
        .await?;
    // Let the previous point's subscriptions wind down first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = world.rss();
    let h0 = world.head(&channel).await?;
    let nconn = subs.div_ceil(SUBSCRIBERS_PER_CONNECTION);
    let mut sub_conns = Vec::new();
    for _ in 0..nconn {
        sub_conns.push(connect(&world.addr).await?);
    }
    let ready = Arc::new((AtomicUsize::new(0), Notify::new()));
    let (end_tx, end_rx) = watch::channel::<EndSignal>(None);
    let windows = Arc::new(OnceLock::new());
    let connecting = Instant::now();
    let mut handles = Vec::with_capacity(subs);
    for s in 0..subs {
        let req = pb::SubscribeRequest {
            start_after: Some(h0),
            channel_ids: vec![channel.clone()],
            heartbeat_seconds: 1,
            ..Default::default()
        };
        handles.push(tokio::spawn(fanout_subscriber(
            sub_conns[s % nconn].clone(),
            world.us.bearer.clone(),
            req,
            ready.clone(),
            end_rx.clone(),
            windows.clone(),
        )));
    }
    // Every subscriber has had its caught-up heartbeat: connected and idle.
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let notified = ready.1.notified();
        if ready.0.load(Ordering::SeqCst) >= subs {
            break;
        }
        if Instant::now() > give_up {
            for h in &handles {
                h.abort();
            }
            return Err(format!(
                "only {} of {subs} subscribers were ready after 60 s",
                ready.0.load(Ordering::SeqCst)
            )
            .into());
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
    }
    let connect_secs = connecting.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = world.rss();

    // Writers: FANOUT_WRITERS tasks, each on its own tick, spread evenly.
    let period = Duration::from_secs_f64(FANOUT_WRITERS as f64 / rate as f64);
    let (i_now, w_now) = (Instant::now(), unix_nanos(SystemTime::now()));
    let start = i_now + Duration::from_millis(20);
    let m0 = start + plan.timing.warmup;
    let m1 = m0 + plan.timing.measure;
    let wall = |t: Instant| w_now + (t - i_now).as_nanos() as i128;
    let _ = windows.set(Windows {
        m0,
        m1,
        wall0: wall(m0),
        wall1: wall(m1),
    });
    // Open loop: each tick starts a send without waiting for the previous
    // one, so the rate does not depend on the latency (up to
    // FANOUT_MAX_IN_FLIGHT sends at once; beyond that the rate drops, and
    // `written/s` shows it).
    let cpu = cpu_window(world.server_pid, m0, m1);
    let written = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(FANOUT_MAX_IN_FLIGHT));
    let mut writers = Vec::new();
    for w in 0..FANOUT_WRITERS {
        let m = world.iran.on(w).messages;
        let channel = channel.clone();
        let (written, failed, first_error) = (written.clone(), failed.clone(), first_error.clone());
        let in_flight = in_flight.clone();
        let first = start + period.mul_f64(w as f64 / FANOUT_WRITERS as f64);
        writers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(first.into(), period);
            let mut i = 0u64;
            loop {
                tick.tick().await;
                if Instant::now() >= m1 {
                    break;
                }
                i += 1;
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let mut m = m.clone();
                let req = send_req(&channel, i);
                let (written, failed, first_error) =
                    (written.clone(), failed.clone(), first_error.clone());
                tokio::spawn(async move {
                    match m.send_message(req).await {
                        Ok(_) => {
                            written.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(s) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap()
                                .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                        }
                    }
                    drop(permit);
                });
            }
        }));
    }
    for w in writers {
        w.await?;
    }
    // Every send has ended once every permit is back.
    drop(in_flight.acquire_many(FANOUT_MAX_IN_FLIGHT as u32).await?);
    let write_errors = failed.load(Ordering::Relaxed);
    let first_error = first_error.lock().unwrap().take();
    let writers_done = Instant::now();
    let written = written.load(Ordering::Relaxed);
    world.stored.fetch_add(written, Ordering::Relaxed);
    let expected = channel_sequences(world, &channel, h0).await?;
    let target = expected.last().copied().unwrap_or(h0);
    let _ = end_tx.send(Some((target, (Instant::now() + plan.drain_timeout).into())));
    let mut all = Samples::default();
    let (mut lost, mut extra, mut disorder, mut in_window) = (0u64, 0u64, 0u64, 0u64);
    let (mut sub_errors, mut timed_out) = (0u64, 0u64);
    let mut first_sub_error = None;
    for h in handles {
        let mut seen = h.await?;
        let n = matched(&expected, &mut seen.seqs);
        lost += (expected.len() - n) as u64;
        extra += (seen.seqs.len() - n) as u64;
        disorder += seen.disorder;
        in_window += seen.in_window;
        all.extend(seen.latencies);
        if seen.timed_out {
            timed_out += 1;
        }
        if let Some(e) = seen.error {
            sub_errors += 1;
            first_sub_error.get_or_insert(e);
        }
    }
    let drain_secs = writers_done.elapsed().as_secs_f64();
    let cpu = cpu.await.unwrap_or_default();
    drop(end_tx);
    drop(sub_conns);
    let rss_after = world.rss();
    all.finish();
    let secs = plan.timing.measure.as_secs_f64();
    let delivered = in_window as f64 / secs;
    let write_rate = written as f64 / (plan.timing.warmup + plan.timing.measure).as_secs_f64();
    let per_sub = match (rss_before, rss_idle) {
        (Some(b), Some(i)) => Some(i.saturating_sub(b) as f64 / subs as f64),
        _ => None,
    };
    report.lost += lost;
    if lost > 0 || extra > 0 || disorder > 0 {
        report.failures.push(format!(
            "fanout {subs}x{rate}: {lost} events lost, {extra} unexpected, {disorder} out of order \
             ({timed_out} subscribers still waiting after {:?})",
            plan.drain_timeout
        ));
    }
    if write_errors > 0 {
        report.errors += write_errors;
        report.failures.push(format!(
            "fanout {subs}x{rate}: {write_errors} sends failed (first: {})",
            first_error.unwrap_or_default()
        ));
    }
    if sub_errors > 0 {
        report.errors += sub_errors;
        report.failures.push(format!(
            "fanout {subs}x{rate}: {sub_errors} subscriptions failed (first: {})",
            first_sub_error.unwrap_or_default()
        ));
    }
    progress(format!(
        "fanout {subs} subscribers x {rate} ev/s: {} deliveries/s, p99 {} ms, {lost} lost, {} KiB/subscriber",
        fmt_rate(delivered),
        fmt_ms(all.ms(0.99)),
        per_sub.map_or("-".into(), |v| format!("{v:.1}"))
    ));
    let row = vec![
        subs.to_string(),
        fmt_rate(rate as f64),
        fmt_rate(write_rate),
        fmt_rate(delivered),
        fmt_ms(all.ms(0.5)),
        fmt_ms(all.ms(0.99)),
        fmt_ms(all.max_ms()),
        lost.to_string(),
        per_sub.map_or("-".into(), |v| format!("{v:.1}")),
        rss_after.map_or("-".into(), |v| format!("{:.0}", v as f64 / 1024.0)),
        format!("{connect_secs:.2}"),
        format!("{drain_secs:.2}"),
        cpu.cell(),
    ];
    let mut j = all.json();
    cpu.add_json(&mut j);
    let obj = j.as_object_mut().expect("object");
    obj.insert("subscribers".into(), json!(subs));
    obj.insert("subscriber_connections".into(), json!(nconn));
    obj.insert("target_events_per_s".into(), json!(rate));
    obj.insert("written".into(), json!(written));
    obj.insert("written_per_s".into(), json!(round1(write_rate)));
    obj.insert("expected_events".into(), json!(expected.len()));
    obj.insert("delivered_per_s".into(), json!(round1(delivered)));
    obj.insert("lost".into(), json!(lost));
    obj.insert("unexpected".into(), json!(extra));
    obj.insert("out_of_order".into(), json!(disorder));
    obj.insert("write_errors".into(), json!(write_errors));
    obj.insert("subscription_errors".into(), json!(sub_errors));
    obj.insert("rss_before_kib".into(), json!(rss_before));
    obj.insert("rss_idle_kib".into(), json!(rss_idle));
    obj.insert("rss_after_kib".into(), json!(rss_after));
    obj.insert(
        "rss_per_subscriber_kib".into(),
        per_sub.map_or(Value::Null, |v| json!(round1(v))),
    );
    obj.insert(
        "connect_s".into(),
        json!(round1(connect_secs * 100.0) / 100.0),
    );
    obj.insert("drain_s".into(), json!(round1(drain_secs * 100.0) / 100.0));
    Ok((row, j))
}

pub(crate) async fn run_fanout(
    world: &World,
    plan: &Plan,
    report: &mut Report,
    text: &mut String,
) -> Result<()> {
    let mut rows = Vec::new();
    let mut points = Vec::new();
    for &(subs, rate) in &plan.fanout {
        match fanout_point(world, plan, subs, rate, report).await {
            Ok((row, j)) => {
                rows.push(row);
                points.push(j);
            }
            Err(e) => {
                report
                    .failures
                    .push(format!("fanout {subs}x{rate} could not run: {e}"));
                progress(format!("fanout {subs}x{rate} could not run: {e}"));
            }
        }
    }
    text.push_str(&table(
        "fanout: subscribers on one channel while writers send at a set rate",
        &format!(
            "subscribers as united-states with a channel filter, {SUBSCRIBERS_PER_CONNECTION} per connection; \
             {FANOUT_WRITERS} writer tasks on spread ticks, open loop (each tick starts a send; up to {FANOUT_MAX_IN_FLIGHT} in flight); latency = receipt - record_time of events written in the \
             {:.2} s window (after {:.2} s warm-up); RSS/sub = (idle - before) / subscribers, RSS end = after the point; \
             drain = writers stopped -> last subscriber done",
            plan.timing.measure.as_secs_f64(),
            plan.timing.warmup.as_secs_f64()
        ),
        &[
            "subscribers",
            "target ev/s",
            "written/s",
            "delivered/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "lost",
            "RSS/sub KiB",
            "RSS end MiB",
            "connect s",
            "drain s",
            "CPU srv/bench %",
        ],
        &rows,
    ));
    report.json.insert("fanout".into(), json!(points));
    Ok(())
}
