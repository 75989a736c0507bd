//! `backchannel-bench`: measures a real Backchannel server over real sockets.
//!
//! By default it starts the `backchannel` binary that sits next to its own
//! executable (so `cargo build --release` first) with a temporary data
//! directory, or on a fresh PostgreSQL database (`--database-url`), or it
//! drives a server that is already running (`--target ADDR --admin-token T`).
//! It registers its own parties and channels, then runs the scenarios of
//! docs/PERFORMANCE.md, prints one table per scenario and, with `--json
//! FILE`, writes the same figures as JSON.
//!
//! It never asserts a speed. It exits non-zero when an event was lost, a
//! call failed, or a scenario could not run.

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backchannel::pb;
use backchannel::pb::audit_service_client::AuditServiceClient;
use backchannel::pb::channel_service_client::ChannelServiceClient;
use backchannel::pb::message_service_client::MessageServiceClient;
use backchannel::pb::party_service_client::PartyServiceClient;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

mod abuse;
mod audit;
mod audit_cli;
mod catchup;
mod client;
mod fanout;
mod lifecycle;
mod load;
mod plan;
mod report;
mod samples;
mod scale;
mod send;
mod spawned;
mod stats;
mod storage;
mod sustained;
mod world;

use audit::*;
use audit_cli::*;
use catchup::*;
use client::*;
use fanout::*;
use lifecycle::*;
use load::*;
use plan::*;
use report::*;
use samples::*;
use scale::*;
use send::*;
use spawned::*;
use storage::*;
use sustained::*;
use world::*;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(attack) = &args.attacker {
        return abuse::attacker_main(attack);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("backchannel-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops the run, which stops the server and removes its data.
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        }
    });
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("backchannel-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the selected scenarios; `Ok(false)` if anything was lost or failed.
async fn run(args: Args) -> Result<bool> {
    let plan = Plan::new(&args);
    let on = |s: Scenario| args.only.is_empty() || args.only.contains(&s);
    let run_started = Instant::now();

    let (addr, admin_token, mut spawned, server_bin, backend) = match &args.target {
        Some(addr) => (
            addr.clone(),
            args.admin_token.clone().unwrap_or_default(),
            None,
            None,
            "remote".to_string(),
        ),
        None => {
            let bin = match &args.server_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()?.with_file_name("backchannel"),
            };
            let token = format!(
                "bench-{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            progress(format!("starting {}", bin.display()));
            let (s, addr) = Spawned::start(&bin, &token, args.database_url.as_deref())?;
            let backend = if args.database_url.is_some() {
                "postgres"
            } else {
                "embedded"
            };
            (addr, token, Some(s), Some(bin), backend.to_string())
        }
    };
    let pid = spawned.as_ref().map(|s| s.pid);
    let storage = match &spawned {
        Some(s) => match &s.db {
            Some(db) => Storage::Postgres {
                admin_url: db.admin_url.clone(),
                name: db.name.clone(),
            },
            None => Storage::Embedded(s.data_dir.clone()),
        },
        None => Storage::Remote,
    };
    progress(format!(
        "server at {addr} ({backend}{})",
        pid.map_or(String::new(), |p| format!(", pid {p}"))
    ));
    let world = World::setup(&addr, &admin_token, plan.connections, pid).await?;
    let debug_server = server_bin
        .as_ref()
        .is_some_and(|b| b.components().any(|c| c.as_os_str() == "debug"));

    let mut report = Report {
        json: serde_json::Map::new(),
        errors: 0,
        lost: 0,
        failures: Vec::new(),
    };
    let mut sections: HashMap<&str, String> = HashMap::new();
    let mut scale_rows = Vec::new();
    let mut scale_json = Vec::new();
    let mut large_written = None;

    // scale, small point: a fresh record holds little.
    if on(Scenario::Scale) {
        let r = async {
            let ch = world.channel("bench scale small").await?;
            let b = bulk_write(
                &world,
                &ch,
                plan.scale_small,
                64,
                "scale (small)",
                None,
                BULK_PROGRESS,
                false,
                &mut report,
            )
            .await?;
            scale_point(&world, &plan, "small", &ch, &b.ids, b.written).await
        }
        .await;
        match r {
            Ok((row, j)) => {
                scale_rows.push(row);
                scale_json.push(j);
            }
            Err(e) => report
                .failures
                .push(format!("scale (small) could not run: {e}")),
        }
    }
    if on(Scenario::Baseline) || on(Scenario::Send) {
        let mut text = String::new();
        if let Err(e) = run_baseline_send(
            &world,
            &plan,
            on(Scenario::Baseline),
            on(Scenario::Send),
            &mut report,
            &mut text,
        )
        .await
        {
            report
                .failures
                .push(format!("baseline/send could not run: {e}"));
        }
        sections.insert("send", text);
    }
    if on(Scenario::Lifecycle) {
        let mut text = String::new();
        if let Err(e) = run_lifecycle(&world, &plan, &mut report, &mut text).await {
            report
                .failures
                .push(format!("lifecycle could not run: {e}"));
        }
        sections.insert("lifecycle", text);
    }
    if on(Scenario::Fanout) {
        let mut text = String::new();
        if let Err(e) = run_fanout(&world, &plan, &mut report, &mut text).await {
            report.failures.push(format!("fanout could not run: {e}"));
        }
        sections.insert("fanout", text);
    }
    if on(Scenario::Catchup) || on(Scenario::Scale) {
        let n = plan.catchup_events;
        let r = async {
            let ch = world.channel("bench catchup").await?;
            progress(format!("catchup: writing {} messages", fmt_rate(n as f64)));
            let b = bulk_write(
                &world,
                &ch,
                n,
                BULK_CONCURRENCY,
                "catchup",
                plan.catchup_cap,
                BULK_PROGRESS,
                false,
                &mut report,
            )
            .await?;
            progress(format!(
                "catchup: wrote {} messages in {:.1} s ({}/s){}",
                fmt_rate(b.written as f64),
                b.secs,
                fmt_rate(b.written as f64 / b.secs),
                if b.capped {
                    " -- stopped at the time cap"
                } else {
                    ""
                }
            ));
            let mut catchup = None;
            if on(Scenario::Catchup) {
                let mut j = catchup_read(&world).await?;
                j["asked"] = json!(n);
                j["written"] = json!(b.written);
                j["write_capped"] = json!(b.capped);
                j["write_seconds"] = json!((b.secs * 1000.0).round() / 1000.0);
                j["written_per_s"] = json!(round1(b.written as f64 / b.secs));
                j["write_concurrency"] = json!(BULK_CONCURRENCY);
                catchup = Some(j);
            }
            let mut large = None;
            if on(Scenario::Scale) {
                large = Some(scale_point(&world, &plan, "large", &ch, &b.ids, b.written).await?);
            }
            Ok::<_, Error>((catchup, large, b))
        }
        .await;
        match r {
            Ok((catchup, large, b)) => {
                large_written = Some((b.written, b.capped));
                if let Some(j) = catchup {
                    let lost =
                        j["lost"].as_u64().unwrap_or(0) + j["out_of_order"].as_u64().unwrap_or(0);
                    if lost > 0 {
                        report.lost += lost;
                        report
                            .failures
                            .push(format!("catchup: {lost} events lost or out of order"));
                    }
                    progress(format!(
                        "catchup: read {} events in {} s ({} events/s)",
                        j["events"],
                        j["seconds"],
                        fmt_rate(j["events_per_s"].as_f64().unwrap_or(0.0))
                    ));
                    sections.insert(
                        "catchup",
                        table(
                            "catchup: one subscriber replays the log from start_after=0 to the caught-up heartbeat",
                            &format!(
                                "written first with {BULK_CONCURRENCY} SendMessage calls in flight: {} messages in {} s ({}/s){}",
                                fmt_rate(b.written as f64),
                                j["write_seconds"],
                                fmt_rate(j["written_per_s"].as_f64().unwrap_or(0.0)),
                                if b.written < FULL_CATCHUP_EVENTS {
                                    format!(
                                        "\nNOTE: {} messages, not the 1,000,000 of the target{} (--catchup-events 1000000 for that)",
                                        fmt_rate(b.written as f64),
                                        if b.capped { "; writing stopped at its time cap" } else { "" }
                                    )
                                } else {
                                    String::new()
                                }
                            ),
                            &["events read", "seconds", "events/s", "lost"],
                            &[vec![
                                fmt_rate(j["events"].as_f64().unwrap_or(0.0)),
                                format!("{:.2}", j["seconds"].as_f64().unwrap_or(0.0)),
                                fmt_rate(j["events_per_s"].as_f64().unwrap_or(0.0)),
                                j["lost"].to_string(),
                            ]],
                        ),
                    );
                    report.json.insert("catchup".into(), j);
                }
                if let Some((row, j)) = large {
                    scale_rows.push(row);
                    scale_json.push(j);
                }
            }
            Err(e) => report
                .failures
                .push(format!("catchup/scale (large) could not run: {e}")),
        }
    }
    if on(Scenario::Scale) {
        let mut ratios = Value::Null;
        let mut note = format!(
            "sequential calls by iran, each kind {} times (or for {:.2} s if that is sooner) after up to {} \
             warm-up calls: GetMessage of random stored ids, ListMessages page_size=50 on the channel, \
             and with no filter (all it may see)",
            plan.scale_calls,
            plan.timing.measure.as_secs_f64(),
            plan.scale_calls / 10
        );
        if scale_json.len() == 2 {
            let r = |k: &str, q: &str| -> Value {
                match (scale_json[0][k][q].as_f64(), scale_json[1][k][q].as_f64()) {
                    (Some(a), Some(b)) if a > 0.0 => json!(((b / a) * 100.0).round() / 100.0),
                    _ => Value::Null,
                }
            };
            ratios = json!({
                "get_message_p50": r("get_message", "p50_ms"),
                "get_message_p99": r("get_message", "p99_ms"),
                "list_messages_channel_p50": r("list_messages_channel", "p50_ms"),
                "list_messages_channel_p99": r("list_messages_channel", "p99_ms"),
                "list_messages_all_p50": r("list_messages_all", "p50_ms"),
                "list_messages_all_p99": r("list_messages_all", "p99_ms"),
            });
            scale_rows.push(vec![
                "large/small".into(),
                String::new(),
                String::new(),
                String::new(),
                format!("{}x", ratios["get_message_p50"]),
                format!("{}x", ratios["get_message_p99"]),
                format!("{}x", ratios["list_messages_channel_p50"]),
                format!("{}x", ratios["list_messages_channel_p99"]),
                format!("{}x", ratios["list_messages_all_p50"]),
                format!("{}x", ratios["list_messages_all_p99"]),
            ]);
        }
        if let Some((written, capped)) = large_written
            && written < FULL_CATCHUP_EVENTS
        {
            note.push_str(&format!(
                "\nNOTE: the large point holds {} messages, not 1,000,000{} (--catchup-events 1000000 for that)",
                fmt_rate(written as f64),
                if capped { ", as writing stopped at its time cap" } else { "" }
            ));
        }
        sections.insert(
            "scale",
            table(
                "scale: read latency with few vs many messages stored",
                &note,
                &[
                    "point",
                    "channel msgs",
                    "log events",
                    "calls",
                    "get p50 ms",
                    "get p99 ms",
                    "list(ch) p50",
                    "list(ch) p99",
                    "list(all) p50",
                    "list(all) p99",
                ],
                &scale_rows,
            ),
        );
        report.json.insert(
            "scale".into(),
            json!({ "points": scale_json, "ratio_large_to_small": ratios }),
        );
    }

    // Last, as it fills the store: the other scenarios keep the conditions
    // they were designed for.
    if on(Scenario::Sustained) {
        let mut text = String::new();
        if let Err(e) = run_sustained(&world, &plan, &storage, &mut report, &mut text).await {
            report
                .failures
                .push(format!("sustained could not run: {e}"));
        }
        sections.insert("sustained", text);
    }

    // After `sustained`, whose million messages it reuses: it tops the
    // store up to its own size, and times `backchannel audit` on a fresh
    // server when the store holds more than that already.
    if on(Scenario::Audit) {
        let mut text = String::new();
        let setup = AuditSetup::new(server_bin.as_ref(), &args, spawned.is_some())?;
        if let Err(e) = run_audit(&world, &plan, &setup, &mut report, &mut text).await {
            report.failures.push(format!("audit could not run: {e}"));
        }
        sections.insert("audit", text);
    }
    if on(Scenario::Stats) {
        let mut text = String::new();
        if let Err(e) = stats::run_stats(&world, &plan, &mut report, &mut text).await {
            report.failures.push(format!("stats could not run: {e}"));
        }
        sections.insert("stats", text);
    }

    if on(Scenario::Abuse) {
        let mut text = String::new();
        match (&server_bin, &args.target) {
            (Some(bin), None) => {
                if let Err(e) = abuse::run(
                    bin,
                    args.database_url.as_deref(),
                    &plan,
                    &mut report,
                    &mut text,
                )
                .await
                {
                    report.failures.push(format!("abuse could not run: {e}"));
                }
            }
            _ => text.push_str(
                "== abuse: skipped (it starts a server of its own, with the default per-party limits; not with --target)\n",
            ),
        }
        sections.insert("abuse", text);
    }

    // Stop the server (and drop its database) before reporting.
    let warnings = spawned.as_ref().map(|s| s.warnings.load(Ordering::Relaxed));
    drop(world);
    if let Some(s) = spawned.as_mut() {
        s.stop();
    }
    // A clean stop leaves the write-ahead log empty (DESIGN.md §5).
    if let (Some(wal), Some(j)) = (storage.wal_path(), report.json.get_mut("sustained")) {
        let after = file_len(&wal);
        j["wal_bytes_after_stop"] = json!(after);
        if let Some(t) = sections.get_mut("sustained") {
            t.push_str(&format!(
                "WAL after the server's clean stop at the end of the run: {}\n",
                after.map_or("could not be read".into(), |b| format!("{b} bytes"))
            ));
        }
    }
    drop(spawned);

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    let timestamp = prost_types::Timestamp::from(SystemTime::now()).to_string();
    let total_secs = run_started.elapsed().as_secs_f64();

    let mut out = String::new();
    out.push_str(&format!(
        "backchannel-bench{}: {backend} backend, {cores} cores, commit {}{}, {timestamp}, {total_secs:.0} s\n",
        if plan.quick { " --quick (smoke test: figures are not meaningful)" } else { "" },
        &commit[..commit.len().min(12)],
        if dirty == Some(true) { " (dirty)" } else { "" },
    ));
    if debug_server {
        out.push_str("the server is a debug build: figures are not meaningful\n");
    }
    for s in SECTION_ORDER {
        if let Some(t) = sections.get(s) {
            out.push_str(t);
        }
    }
    out.push('\n');
    let ok = report.failures.is_empty() && report.lost == 0 && report.errors == 0;
    if ok {
        out.push_str("ok: no event lost, no call failed\n");
    } else {
        out.push_str("FAILED:\n");
        for f in &report.failures {
            out.push_str(&format!("  - {f}\n"));
        }
    }
    print!("{out}");

    if let Some(path) = &args.json {
        let scenarios: Vec<&str> = [
            Scenario::Baseline,
            Scenario::Send,
            Scenario::Lifecycle,
            Scenario::Fanout,
            Scenario::Catchup,
            Scenario::Scale,
            Scenario::Sustained,
            Scenario::Audit,
            Scenario::Stats,
        ]
        .into_iter()
        .filter(|s| on(*s))
        .map(Scenario::name)
        .collect();
        let doc = json!({
            "tool": "backchannel-bench",
            "timestamp": timestamp,
            "git_commit": commit,
            "git_dirty": dirty,
            "cores": cores,
            "backend": backend,
            "quick": plan.quick,
            "server_binary": server_bin.map(|b| b.display().to_string()),
            "server_debug_build": debug_server,
            "target": args.target,
            "settings": {
                "warmup_s": plan.timing.warmup.as_secs_f64(),
                "measure_s": plan.timing.measure.as_secs_f64(),
                "connections": plan.connections,
                "concurrency_levels": plan.levels,
                "lifecycle_in_flight": plan.lifecycle_in_flight,
                "fanout_points": plan.fanout.iter().map(|(s, r)| json!({"subscribers": s, "events_per_s": r})).collect::<Vec<_>>(),
                "fanout_writers": FANOUT_WRITERS,
                "subscribers_per_connection": SUBSCRIBERS_PER_CONNECTION,
                "catchup_events": plan.catchup_events,
                "scale_small_messages": plan.scale_small,
                "scale_calls": plan.scale_calls,
                "sustained_preload": plan.sustained.preload,
                "sustained_in_flight": plan.sustained.in_flight,
                "sustained_s": plan.sustained.run.as_secs_f64(),
                "sustained_slice_s": plan.sustained.slice.as_secs_f64(),
                "wal_bound_bytes": plan.sustained.wal_bound,
                "audit_events": plan.audit.events,
                "audit_cli_events": plan.audit.cli_events,
                "audit_in_flight": plan.audit.levels,
            },
            "scenarios_run": scenarios,
            "scenarios": Value::Object(report.json.clone()),
            "server_warnings": warnings,
            "errors": report.errors,
            "lost": report.lost,
            "failures": report.failures,
            "ok": ok,
            "total_seconds": round1(total_secs),
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        progress(format!("wrote {}", path.display()));
    }
    Ok(ok)
}
