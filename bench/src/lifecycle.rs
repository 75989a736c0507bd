//! `lifecycle`: whole relays, send to acknowledgement.

use crate::*;

pub(crate) async fn run_lifecycle(
    world: &World,
    plan: &Plan,
    report: &mut Report,
    text: &mut String,
) -> Result<()> {
    let channel = world.channel("bench lifecycle").await?;
    let (iran, france, us) = (world.iran.clone(), world.france.clone(), world.us.clone());
    let stored = world.stored.clone();
    let op: Op = Arc::new(move |task, i| {
        let mut s = iran.on(task).messages;
        let mut f = france.on(task).messages;
        let mut u = us.on(task).messages;
        let req = send_req(&channel, i);
        let stored = stored.clone();
        Box::pin(async move {
            let mut t = [0u64; 4];
            let a = Instant::now();
            let m = s.send_message(req).await?.into_inner();
            t[0] = elapsed_ns(a);
            stored.fetch_add(1, Ordering::Relaxed);
            let a = Instant::now();
            f.accept_message(pb::AcceptMessageRequest {
                message_id: m.id.clone(),
                note: "received".into(),
                ..Default::default()
            })
            .await?;
            t[1] = elapsed_ns(a);
            let a = Instant::now();
            let m = f
                .forward_message(pb::ForwardMessageRequest {
                    message_id: m.id,
                    note: "handed on".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            t[2] = elapsed_ns(a);
            if m.state != pb::message::State::Delivered as i32 {
                return Err(Status::internal(format!(
                    "forward by the last mediator left the message in state {}",
                    m.state
                )));
            }
            let a = Instant::now();
            u.acknowledge_message(pb::AcknowledgeMessageRequest {
                message_id: m.id,
                ..Default::default()
            })
            .await?;
            t[3] = elapsed_ns(a);
            Ok(t)
        })
    });
    let l = closed_loop(plan.lifecycle_in_flight, plan.timing, world.server_pid, op).await;
    report.error("lifecycle", &l);
    progress(format!(
        "lifecycle: {} relays/s, relay p99 {} ms",
        fmt_rate(l.rate()),
        fmt_ms(l.whole.ms(0.99))
    ));
    let names = ["send", "accept", "forward", "acknowledge"];
    let mut rows = Vec::new();
    let mut steps = serde_json::Map::new();
    for (k, n) in names.iter().enumerate() {
        rows.push(vec![
            n.to_string(),
            fmt_ms(l.steps[k].ms(0.5)),
            fmt_ms(l.steps[k].ms(0.99)),
            fmt_ms(l.steps[k].ms(0.999)),
        ]);
        steps.insert(n.to_string(), l.steps[k].json());
    }
    rows.push(vec![
        "whole relay".into(),
        fmt_ms(l.whole.ms(0.5)),
        fmt_ms(l.whole.ms(0.99)),
        fmt_ms(l.whole.ms(0.999)),
    ]);
    text.push_str(&table(
        "lifecycle: whole relays (send by iran, accept + forward by france, acknowledge by united-states)",
        &format!(
            "{} relays in flight: {} relays/s ({} durable writes/s), {} failed calls, CPU server/bench {} %",
            plan.lifecycle_in_flight,
            fmt_rate(l.rate()),
            fmt_rate(l.rate() * 4.0),
            l.errors,
            l.cpu.cell()
        ),
        &["step", "p50 ms", "p99 ms", "p999 ms"],
        &rows,
    ));
    report.json.insert(
        "lifecycle".into(),
        json!({
            "in_flight": plan.lifecycle_in_flight,
            "relays": l.whole.len(),
            "relays_per_s": round1(l.rate()),
            "writes_per_s": round1(l.rate() * 4.0),
            "relay": l.whole.json(),
            "steps": steps,
            "errors": l.errors,
            "server_cpu_pct": l.cpu.server.map(round1),
            "bench_cpu_pct": l.cpu.bench.map(round1),
        }),
    );
    Ok(())
}
