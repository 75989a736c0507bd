//! `baseline` and `send`: the no-op ceiling and durable `SendMessage` at
//! each concurrency.

use crate::*;

/// `Health/Check` by the admin: the no-op RPC, with the client setup of the
/// sends (same connections, same interceptor).
pub(crate) fn health_op(world: &World) -> Op {
    let admin = world.admin.clone();
    Arc::new(move |task, _| {
        let mut h = admin.on(task).health;
        Box::pin(async move {
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
            Ok([0; 4])
        })
    })
}

/// `SendMessage` by iran on `channel`; with `request_id`, each call carries
/// a fresh UUID v4 (random, as most clients make them, and the harder case
/// for the server's index of them), as a careful client's calls do.
pub(crate) fn send_op(world: &World, channel: &str, request_id: bool) -> Op {
    let iran = world.iran.clone();
    let channel = channel.to_string();
    let stored = world.stored.clone();
    Arc::new(move |task, i| {
        let mut m = iran.on(task).messages;
        let mut req = send_req(&channel, i);
        if request_id {
            req.request_id = uuid::Uuid::new_v4().to_string();
        }
        let stored = stored.clone();
        Box::pin(async move {
            m.send_message(req).await?;
            stored.fetch_add(1, Ordering::Relaxed);
            Ok([0; 4])
        })
    })
}

pub(crate) async fn run_baseline_send(
    world: &World,
    plan: &Plan,
    baseline: bool,
    send: bool,
    report: &mut Report,
    text: &mut String,
) -> Result<()> {
    let channel = world.channel("bench send").await?;
    let mut base_rows = Vec::new();
    let mut send_rows = Vec::new();
    let mut base_json = Vec::new();
    // Without request_id, then with it.
    let mut send_json = [Vec::new(), Vec::new()];
    for &c in &plan.levels {
        let mut base_rate = None;
        if baseline {
            let l = closed_loop(c, plan.timing, world.server_pid, health_op(world)).await;
            report.error(&format!("baseline c={c}"), &l);
            progress(format!(
                "baseline c={c}: {} calls/s, p99 {} ms",
                fmt_rate(l.rate()),
                fmt_ms(l.whole.ms(0.99))
            ));
            base_rate = Some(l.rate());
            base_rows.push(vec![
                c.to_string(),
                fmt_rate(l.rate()),
                fmt_ms(l.whole.ms(0.5)),
                fmt_ms(l.whole.ms(0.99)),
                fmt_ms(l.whole.ms(0.999)),
                l.cpu.cell(),
                l.errors.to_string(),
            ]);
            let mut j = l.whole.json();
            j["concurrency"] = json!(c);
            j["calls_per_s"] = json!(round1(l.rate()));
            j["errors"] = json!(l.errors);
            l.cpu.add_json(&mut j);
            base_json.push(j);
        }
        if send {
            for (with_id, out) in [false, true].into_iter().zip(send_json.iter_mut()) {
                let op = send_op(world, &channel, with_id);
                let l = closed_loop(c, plan.timing, world.server_pid, op).await;
                let what = if with_id { "send+request_id" } else { "send" };
                report.error(&format!("{what} c={c}"), &l);
                let ratio = base_rate.filter(|b| *b > 0.0).map(|b| l.rate() / b);
                progress(format!(
                    "{what} c={c}: {} calls/s, p99 {} ms{}",
                    fmt_rate(l.rate()),
                    fmt_ms(l.whole.ms(0.99)),
                    ratio.map_or(String::new(), |r| format!(", {r:.2}x baseline"))
                ));
                send_rows.push(vec![
                    c.to_string(),
                    if with_id { "yes" } else { "no" }.to_string(),
                    fmt_rate(l.rate()),
                    fmt_ms(l.whole.ms(0.5)),
                    fmt_ms(l.whole.ms(0.99)),
                    fmt_ms(l.whole.ms(0.999)),
                    ratio.map_or("-".into(), |r| format!("{r:.2}")),
                    l.cpu.cell(),
                    l.errors.to_string(),
                ]);
                let mut j = l.whole.json();
                j["concurrency"] = json!(c);
                j["request_id"] = json!(with_id);
                j["calls_per_s"] = json!(round1(l.rate()));
                j["ratio_to_baseline"] = round3(ratio);
                j["errors"] = json!(l.errors);
                l.cpu.add_json(&mut j);
                out.push(j);
            }
        }
    }
    let conns = format!(
        "{} HTTP/2 connections shared round-robin; {:.2} s warm-up, {:.2} s measured per level",
        plan.connections,
        plan.timing.warmup.as_secs_f64(),
        plan.timing.measure.as_secs_f64()
    );
    if baseline {
        text.push_str(&table(
            "baseline: grpc.health.v1.Health/Check (the no-op ceiling)",
            &conns,
            &[
                "concurrency",
                "calls/s",
                "p50 ms",
                "p99 ms",
                "p999 ms",
                "CPU srv/bench %",
                "errors",
            ],
            &base_rows,
        ));
        report.json.insert("baseline".into(), json!(base_json));
    }
    if send {
        text.push_str(&table(
            "send: durable SendMessage, without and with a request_id (a fresh UUID v4 per call)",
            &conns,
            &[
                "concurrency",
                "request_id",
                "calls/s",
                "p50 ms",
                "p99 ms",
                "p999 ms",
                "x baseline",
                "CPU srv/bench %",
                "errors",
            ],
            &send_rows,
        ));
        let [plain, with_id] = send_json;
        report.json.insert("send".into(), json!(plain));
        report.json.insert("send_request_id".into(), json!(with_id));
    }
    Ok(())
}
