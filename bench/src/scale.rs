//! `scale`: read latency with few and with many messages stored.

use crate::*;

/// Latency of reads with what is stored now.
/// Sequential calls of `f`: up to `calls / 10` unrecorded (at most the
/// warm-up time), then up to `calls` recorded (at most the measurement time:
/// a slow server must not make the run endless). `f` returns how many items
/// it got; the least of those is returned beside the samples.
pub(crate) async fn sequential<F, Fut>(
    calls: usize,
    t: Timing,
    mut f: F,
) -> Result<(Samples, usize)>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<usize, Status>>,
{
    let warming = Instant::now();
    let mut i = 0;
    while i < calls / 10 && warming.elapsed() < t.warmup {
        f(i).await?;
        i += 1;
    }
    let mut s = Samples::default();
    let mut min_items = usize::MAX;
    let started = Instant::now();
    while s.len() < calls && started.elapsed() < t.measure {
        let a = Instant::now();
        let items = f(i).await?;
        s.0.push(elapsed_ns(a));
        min_items = min_items.min(items);
        i += 1;
    }
    s.finish();
    Ok((s, min_items))
}

/// Latency of reads with what is stored now.
pub(crate) async fn scale_point(
    world: &World,
    plan: &Plan,
    label: &str,
    channel: &str,
    ids: &[String],
    channel_messages: u64,
) -> Result<(Vec<String>, Value)> {
    if ids.is_empty() {
        return Err(format!("scale {label}: no message was written").into());
    }
    let head = world.head(channel).await?;
    let c = world.iran.on(0).messages;
    let (calls, cap) = (plan.scale_calls, plan.timing);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ channel_messages;
    let (get, _) = sequential(calls, cap, |_| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let req = pb::GetMessageRequest {
            message_id: ids[(rng % ids.len() as u64) as usize].clone(),
        };
        let mut c = c.clone();
        async move { c.get_message(req).await.map(|_| 1) }
    })
    .await?;
    let list = |channel_id: String| {
        let c = c.clone();
        move |_| {
            let req = pb::ListMessagesRequest {
                channel_id: channel_id.clone(),
                page_size: 50,
                ..Default::default()
            };
            let mut c = c.clone();
            async move {
                c.list_messages(req)
                    .await
                    .map(|r| r.into_inner().messages.len())
            }
        }
    };
    let (list_channel, items) = sequential(calls, cap, list(channel.to_string())).await?;
    let (list_all, _) = sequential(calls, cap, list(String::new())).await?;
    if items < 50 {
        return Err(format!("scale {label}: a ListMessages page had {items} items, not 50").into());
    }
    progress(format!(
        "scale {label}: GetMessage p99 {} ms, ListMessages(channel) p99 {} ms, ListMessages(all) p99 {} ms",
        fmt_ms(get.ms(0.99)),
        fmt_ms(list_channel.ms(0.99)),
        fmt_ms(list_all.ms(0.99)),
    ));
    let row = vec![
        label.to_string(),
        fmt_rate(channel_messages as f64),
        fmt_rate(head as f64),
        get.len()
            .min(list_channel.len())
            .min(list_all.len())
            .to_string(),
        fmt_ms(get.ms(0.5)),
        fmt_ms(get.ms(0.99)),
        fmt_ms(list_channel.ms(0.5)),
        fmt_ms(list_channel.ms(0.99)),
        fmt_ms(list_all.ms(0.5)),
        fmt_ms(list_all.ms(0.99)),
    ];
    let j = json!({
        "point": label,
        "channel_messages": channel_messages,
        "log_head": head,
        "get_message": get.json(),
        "list_messages_channel": list_channel.json(),
        "list_messages_all": list_all.json(),
    });
    Ok((row, j))
}
