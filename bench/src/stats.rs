//! `stats`: `GetRelayStats` (DESIGN §9: under 50 ms over a million
//! messages). The store is topped up to [`StatsPlan::messages`] messages
//! (what earlier scenarios wrote counts), a share of them relayed by the
//! mediator so hold and pickup times have something to sort, and then each
//! of four questions is asked [`StatsPlan::calls`] times, one at a time,
//! while nothing else runs: everything the admin may see, one channel, a
//! window of send times holding only the relayed messages (the scan still
//! passes every message), and everything a mediator may see. The server's memory is read before the top-up and after the calls.

use crate::*;

/// How `stats` runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatsPlan {
    /// Messages the store holds at least when the questions are asked.
    pub(crate) messages: u64,
    /// Messages relayed (accepted and forwarded) after the top-up.
    pub(crate) relayed: u64,
    /// Calls of each question.
    pub(crate) calls: usize,
}

/// The four questions.
const QUESTIONS: [&str; 4] = [
    "admin, all",
    "admin, one channel",
    "admin, relayed window",
    "mediator, all",
];

/// `stats`.
pub(crate) async fn run_stats(
    world: &World,
    plan: &Plan,
    report: &mut Report,
    text: &mut String,
) -> Result<()> {
    let sp = plan.stats;
    let channel = world.channel("bench stats").await?;
    let admin = world.admin.on(0).messages;
    let ask = |req: pb::GetRelayStatsRequest| {
        let mut c = admin.clone();
        async move { Ok::<_, Status>(c.get_relay_stats(req).await?.into_inner()) }
    };
    let rss_before = world.rss();
    let counted = ask(pb::GetRelayStatsRequest::default()).await?.messages;
    let missing = sp.messages.saturating_sub(counted);
    if missing > 0 {
        progress(format!(
            "stats: writing {} messages (the store holds {})",
            fmt_count(missing),
            fmt_count(counted)
        ));
        let b = bulk_write(
            world,
            &channel,
            missing,
            BULK_CONCURRENCY,
            "stats",
            None,
            PRELOAD_PROGRESS,
            false,
            report,
        )
        .await?;
        progress(format!(
            "stats: wrote {} messages in {:.1} s",
            fmt_count(b.written),
            b.secs
        ));
    }
    let window_start = pb_now();
    let relayed = relay(world, &channel, sp.relayed).await?;
    let mut rows = Vec::new();
    let mut json_rows = serde_json::Map::new();
    let mut covered = 0;
    for (i, name) in QUESTIONS.iter().enumerate() {
        let req = match i {
            0 => pb::GetRelayStatsRequest::default(),
            1 => pb::GetRelayStatsRequest {
                channel_id: channel.clone(),
                ..Default::default()
            },
            2 => pb::GetRelayStatsRequest {
                since: Some(window_start),
                ..Default::default()
            },
            _ => pb::GetRelayStatsRequest::default(),
        };
        let mut client = if i == 3 {
            world.france.on(0).messages
        } else {
            admin.clone()
        };
        let mut samples = Samples::default();
        let mut messages = 0;
        for _ in 0..sp.calls {
            let t = Instant::now();
            let s = client.get_relay_stats(req.clone()).await?.into_inner();
            samples.0.push(elapsed_ns(t));
            messages = s.messages;
        }
        samples.finish();
        if i == 0 {
            covered = messages;
        }
        rows.push(vec![
            (*name).to_owned(),
            fmt_count(messages),
            samples.len().to_string(),
            fmt_ms(samples.ms(0.5)),
            fmt_ms(samples.ms(0.99)),
            fmt_ms(samples.max_ms()),
        ]);
        json_rows.insert(
            (*name).to_owned(),
            json!({ "messages": messages, "latency": samples.json() }),
        );
    }
    let rss_after = world.rss();
    let mut note = format!(
        "{} messages in the store ({} relayed by france here); each question asked {} times, one at a time.\n\
         Server RSS {} KiB before the top-up, {} KiB after (the statistics keep a compact copy of every message).",
        fmt_count(covered),
        fmt_count(relayed),
        sp.calls,
        rss_before.map_or("?".into(), |k| k.to_string()),
        rss_after.map_or("?".into(), |k| k.to_string()),
    );
    if covered < FULL_CATCHUP_EVENTS {
        note.push_str(&format!(
            "\nNOTE: {} messages, not the target's 1,000,000 (--stats-messages 1000000)",
            fmt_count(covered)
        ));
    }
    text.push_str(&table(
        "stats: GetRelayStats latency",
        &note,
        &[
            "question", "messages", "calls", "p50 ms", "p99 ms", "max ms",
        ],
        &rows,
    ));
    report.json.insert(
        "stats".into(),
        json!({
            "messages": covered,
            "relayed": relayed,
            "rss_kib_before": rss_before,
            "rss_kib_after": rss_after,
            "questions": Value::Object(json_rows),
        }),
    );
    Ok(())
}

fn pb_now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

/// Sends `n` messages on `channel` and has france accept and forward each
/// (64 in flight); returns how many were relayed.
async fn relay(world: &World, channel: &str, n: u64) -> Result<u64> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..64usize {
        let (mut iran, mut france) = (world.iran.on(w).messages, world.france.on(w).messages);
        let (next, channel) = (next.clone(), channel.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let m = iran
                    .send_message(send_req(&channel, done))
                    .await?
                    .into_inner();
                let step = |id: &str| pb::AcceptMessageRequest {
                    message_id: id.to_owned(),
                    ..Default::default()
                };
                france.accept_message(step(&m.id)).await?;
                france
                    .forward_message(pb::ForwardMessageRequest {
                        message_id: m.id,
                        ..Default::default()
                    })
                    .await?;
                done += 1;
            }
            Ok::<u64, Status>(done)
        }));
    }
    let mut relayed = 0;
    for t in tasks {
        relayed += t.await.map_err(|e| e.to_string())??;
    }
    Ok(relayed)
}
