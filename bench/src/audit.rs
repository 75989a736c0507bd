//! `audit`: the verifiable record (DESIGN §7). Signed checkpoints and
//! inclusion and consistency proofs on a log of a million events, and
//! `backchannel audit`, the reference verifier, timed over 100,000.

use crate::*;

/// What `audit` needs beside the world: the binary whose `audit`
/// subcommand it times, and how to start a server of its own.
pub(crate) struct AuditSetup<'a> {
    /// The `backchannel` binary (the server the bench started, or the one
    /// next to it).
    pub(crate) bin: PathBuf,
    /// Whether the bench started the server (`false` with `--target`).
    pub(crate) spawned: bool,
    pub(crate) database_url: Option<&'a str>,
}

impl AuditSetup<'_> {
    /// The setup of this run: the server binary it started, else the one
    /// given, else the one next to the bench.
    pub(crate) fn new<'a>(
        started: Option<&PathBuf>,
        args: &'a Args,
        spawned: bool,
    ) -> Result<AuditSetup<'a>> {
        let bin = match started.or(args.server_bin.as_ref()) {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("backchannel"),
        };
        Ok(AuditSetup {
            bin,
            spawned,
            database_url: args.database_url.as_deref(),
        })
    }
}

/// `audit`: first `backchannel audit` over [`AuditPlan::cli_events`]
/// events (on this run's store if it holds no more yet, else on a fresh
/// server of its own), then the store is topped up to
/// [`AuditPlan::events`] and each `AuditService` call is measured at each
/// of [`AuditPlan::levels`] in flight, beside `Health/Check` at the same
/// concurrency; last, one proof of each kind is checked.
pub(crate) async fn run_audit(
    world: &World,
    plan: &Plan,
    setup: &AuditSetup<'_>,
    report: &mut Report,
    text: &mut String,
) -> Result<()> {
    let ap = plan.audit;
    let channel = world.channel("bench audit").await?;

    // (1) The verifier, over a log of `cli_events` events.
    let head = world.head(&channel).await?;
    let cli = if head <= ap.cli_events {
        fill(world, &channel, ap.cli_events, "audit (cli)", report).await?;
        let events = world.head(&channel).await?;
        let runs = time_cli(
            &setup.bin,
            &world.addr,
            &world.admin.token,
            world.server_pid,
            events,
            ap.cli_timeout,
            report,
        )
        .await?;
        CliPart::Ran {
            store: "this run's store".into(),
            events,
            runs,
        }
    } else if setup.spawned {
        // Earlier scenarios filled this store: a fresh one, as abuse has.
        let token = format!(
            "bench-{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        progress(format!(
            "audit: the store holds {} events already; a fresh server for `backchannel audit`",
            fmt_count(head)
        ));
        let (server, addr) = Spawned::start(&setup.bin, &token, setup.database_url)?;
        let w = World::setup(&addr, &token, plan.connections, Some(server.pid)).await?;
        let ch = w.channel("bench audit cli").await?;
        fill(&w, &ch, ap.cli_events, "audit (cli)", report).await?;
        let events = w.head(&ch).await?;
        let runs = time_cli(
            &setup.bin,
            &addr,
            &token,
            Some(server.pid),
            events,
            ap.cli_timeout,
            report,
        )
        .await?;
        drop(w);
        drop(server);
        CliPart::Ran {
            store: "a fresh server of its own".into(),
            events,
            runs,
        }
    } else {
        CliPart::Skipped(format!(
            "skipped: the --target store holds {} events already, more than the {} asked for",
            fmt_count(head),
            fmt_count(ap.cli_events)
        ))
    };

    // (2) The proofs, on a log of at least `events` events.
    let filled = fill(world, &channel, ap.events, "audit", report).await?;
    let head = world.head(&channel).await?;
    progress(format!(
        "audit: measuring AuditService on a log of {} events",
        fmt_count(head)
    ));
    let mut points = Vec::new();
    for &c in &ap.levels {
        for call in Call::ALL {
            let l = closed_loop(c, plan.timing, world.server_pid, call.op(world, head)).await;
            report.error(&format!("audit {} c={c}", call.name()), &l);
            progress(format!(
                "audit: {} c={c}: {} calls/s, p50 {} ms, p99 {} ms",
                call.name(),
                fmt_rate(l.rate()),
                fmt_ms(l.whole.ms(0.5)),
                fmt_ms(l.whole.ms(0.99))
            ));
            points.push(Point {
                call,
                in_flight: c,
                load: l,
            });
        }
    }
    // (3) What was measured is real: one of each, checked as a client
    // would.
    let checked = check_proofs(world, head).await;
    if let Err(e) = &checked {
        report
            .failures
            .push(format!("audit: a proof did not verify: {e}"));
    }
    let a = Audit {
        plan,
        cli,
        filled,
        head,
        points,
        checked: checked.map_err(|e| e.to_string()),
    };
    text.push_str(&a.text());
    report.json.insert("audit".into(), a.json());
    Ok(())
}

/// Tops the log up to `target` events with sends on `channel` (nothing if
/// it holds that many already); what was written, if anything.
async fn fill(
    world: &World,
    channel: &str,
    target: u64,
    label: &str,
    report: &mut Report,
) -> Result<Option<Bulk>> {
    let head = world.head(channel).await?;
    let missing = target.saturating_sub(head);
    if missing == 0 {
        return Ok(None);
    }
    progress(format!(
        "{label}: writing {} messages (the log holds {} events)",
        fmt_count(missing),
        fmt_count(head)
    ));
    // As `sustained`'s preload: 256 in flight, as fast as the server
    // takes them (each send is one event), without a request_id.
    let b = bulk_write(
        world,
        channel,
        missing,
        BULK_CONCURRENCY,
        label,
        None,
        PRELOAD_PROGRESS,
        false,
        report,
    )
    .await?;
    progress(format!(
        "{label}: wrote {} messages in {:.1} s ({}/s)",
        fmt_count(b.written),
        b.secs,
        fmt_rate(b.written as f64 / b.secs)
    ));
    Ok(Some(b))
}

/// One of the three calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// `Health/Check`: the no-op, for the latency of the call itself.
    Baseline,
    /// `GetCheckpoint` of a random size from 1 to the head.
    Checkpoint,
    /// `GetInclusionProof` of a random sequence at the head (`tree_size`
    /// 0), as the admin.
    Inclusion,
    /// `GetConsistencyProof` from a random size to the head
    /// (`second_size` 0).
    Consistency,
}

impl Call {
    const ALL: [Call; 4] = [
        Call::Baseline,
        Call::Checkpoint,
        Call::Inclusion,
        Call::Consistency,
    ];

    fn name(self) -> &'static str {
        match self {
            Call::Baseline => "Health/Check",
            Call::Checkpoint => "GetCheckpoint",
            Call::Inclusion => "GetInclusionProof",
            Call::Consistency => "GetConsistencyProof",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Call::Baseline => "baseline",
            Call::Checkpoint => "checkpoint",
            Call::Inclusion => "inclusion",
            Call::Consistency => "consistency",
        }
    }

    /// The call as a closed-loop operation by the admin on a log of `head`
    /// events (which nothing writes to meanwhile); each answer is checked
    /// for the size it was asked for.
    fn op(self, world: &World, head: u64) -> Op {
        if self == Call::Baseline {
            return health_op(world);
        }
        let admin = world.admin.clone();
        Arc::new(move |task, i| {
            let mut a = admin.on(task).audit;
            // 1..=head, different for every task and call.
            let n = 1 + mix((task as u64) << 40 ^ i) % head;
            Box::pin(async move {
                let got = match self {
                    Call::Checkpoint => {
                        a.get_checkpoint(pb::GetCheckpointRequest { tree_size: n })
                            .await?
                            .into_inner()
                            .tree_size
                    }
                    Call::Inclusion => {
                        let p = a
                            .get_inclusion_proof(pb::GetInclusionProofRequest {
                                sequence: n,
                                tree_size: 0,
                            })
                            .await?
                            .into_inner();
                        if p.sequence != n || p.event.is_empty() {
                            return Err(Status::internal(format!(
                                "the inclusion proof of {n} is of {}, or has no event",
                                p.sequence
                            )));
                        }
                        p.tree_size
                    }
                    Call::Consistency => {
                        a.get_consistency_proof(pb::GetConsistencyProofRequest {
                            first_size: n,
                            second_size: 0,
                        })
                        .await?
                        .into_inner()
                        .second_size
                    }
                    Call::Baseline => unreachable!(),
                };
                let want = if self == Call::Checkpoint { n } else { head };
                if got != want {
                    return Err(Status::internal(format!(
                        "asked for a tree of {want} events, got {got}"
                    )));
                }
                Ok([0; 4])
            })
        })
    }
}

/// splitmix64: spreads the random sizes and sequences over the log.
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One measured point.
pub(crate) struct Point {
    pub(crate) call: Call,
    pub(crate) in_flight: usize,
    pub(crate) load: Load,
}

impl Point {
    /// Server CPU per call, in microseconds.
    fn server_us(&self) -> Option<f64> {
        let calls = self.load.whole.len();
        (calls > 0)
            .then(|| {
                self.load
                    .cpu
                    .server
                    .map(|pct| pct / 100.0 * self.load.secs / calls as f64 * 1e6)
            })
            .flatten()
    }
}

/// What `audit` measured.
pub(crate) struct Audit<'a> {
    pub(crate) plan: &'a Plan,
    pub(crate) cli: CliPart,
    /// What was written to reach the proofs' log size, if anything.
    pub(crate) filled: Option<Bulk>,
    /// The log's size when the proofs were measured.
    pub(crate) head: u64,
    pub(crate) points: Vec<Point>,
    /// What the client-side check verified, or why it failed.
    pub(crate) checked: Result<String, String>,
}

impl Audit<'_> {
    pub(crate) fn text(&self) -> String {
        let ap = &self.plan.audit;
        let mut note = match &self.filled {
            Some(b) => format!(
                "the log was filled first: {} messages ({BULK_CONCURRENCY} SendMessage calls in flight, \
                 one event each) in {:.1} s ({}/s)",
                fmt_count(b.written),
                b.secs,
                fmt_rate(b.written as f64 / b.secs)
            ),
            None => "the log held enough events already".into(),
        };
        note.push_str(&format!(
            "; {} events when measured{}\n",
            fmt_count(self.head),
            if self.head < DEFAULT_AUDIT_EVENTS {
                format!(
                    " (NOTE: not the {} of the target; --audit-events {DEFAULT_AUDIT_EVENTS} for that)",
                    fmt_count(DEFAULT_AUDIT_EVENTS)
                )
            } else {
                String::new()
            }
        ));
        note.push_str(&format!(
            "calls by the admin, sizes and sequences uniformly random in 1..={}; inclusion and consistency \
             at the head (tree_size / second_size 0); {:.2} s measured after {:.2} s warm-up per point; \
             server CPU per call = the server's CPU over the window / the calls in it\n",
            fmt_count(self.head),
            self.plan.timing.measure.as_secs_f64(),
            self.plan.timing.warmup.as_secs_f64()
        ));
        note.push_str(&match &self.checked {
            Ok(s) => format!("checked as a client would: {s}"),
            Err(e) => format!("CHECK FAILED: {e}"),
        });
        let rows: Vec<Vec<String>> = self
            .points
            .iter()
            .map(|p| {
                let l = &p.load;
                vec![
                    p.call.name().to_string(),
                    p.in_flight.to_string(),
                    fmt_rate(l.rate()),
                    fmt_ms(l.whole.ms(0.5)),
                    fmt_ms(l.whole.ms(0.99)),
                    fmt_ms(l.whole.ms(0.999)),
                    p.server_us().map_or("-".into(), |v| format!("{v:.0}")),
                    l.cpu.cell(),
                    l.errors.to_string(),
                ]
            })
            .collect();
        let mut out = table(
            &format!(
                "audit: AuditService on a log of {} events",
                fmt_count(self.head)
            ),
            &note,
            &[
                "call",
                "in flight",
                "calls/s",
                "p50 ms",
                "p99 ms",
                "p999 ms",
                "srv CPU us/call",
                "CPU srv/bench %",
                "errors",
            ],
            &rows,
        );
        match &self.cli {
            CliPart::Skipped(why) => out.push_str(&format!(
                "\n== audit: `backchannel audit` over {} events: {why}\n",
                fmt_count(ap.cli_events)
            )),
            CliPart::Ran {
                store,
                events,
                runs,
            } => {
                let rows: Vec<Vec<String>> = runs
                    .iter()
                    .map(|r| match &r.outcome {
                        CliOutcome::NotAvailable => vec![
                            r.mode.to_string(),
                            "not available".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "the binary has no `audit` subcommand".into(),
                        ],
                        CliOutcome::Ran {
                            status,
                            secs,
                            cpu,
                            server_cpu,
                            said,
                        } => vec![
                            r.mode.to_string(),
                            status.map_or("killed".into(), |s| s.to_string()),
                            format!("{secs:.2}"),
                            fmt_rate(*events as f64 / secs),
                            cpu.map_or("-".into(), |v| format!("{v:.2}")),
                            server_cpu.map_or("-".into(), |v| format!("{v:.2}")),
                            said.chars().take(100).collect(),
                        ],
                    })
                    .collect();
                let args = runs.first().map_or(String::new(), |r| {
                    r.args
                        .iter()
                        .map(|a| {
                            if a.ends_with("admin.token") {
                                "ADMIN_TOKEN_FILE".to_string()
                            } else if a.ends_with(".json") {
                                "STATE".to_string()
                            } else {
                                a.clone()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                });
                out.push_str(&table(
                    &format!(
                        "audit: `backchannel audit` over {} events, as the admin",
                        fmt_count(*events)
                    ),
                    &format!(
                        "on {store}; `backchannel {args}`: first with a fresh state file (the key pinned on \
                         first use), again with the state it saved, then --full with a fresh one; \
                         wall time of the process, events/s = events in the log / wall time; \
                         CPU s of the process and of the server meanwhile"
                    ),
                    &["run", "exit", "seconds", "events/s", "CPU s", "srv CPU s", "said"],
                    &rows,
                ));
            }
        }
        out
    }

    pub(crate) fn json(&self) -> Value {
        let points: Vec<Value> = self
            .points
            .iter()
            .map(|p| {
                let mut j = p.load.whole.json();
                j["call"] = json!(p.call.key());
                j["in_flight"] = json!(p.in_flight);
                j["calls_per_s"] = json!(round1(p.load.rate()));
                j["errors"] = json!(p.load.errors);
                j["server_cpu_us_per_call"] = json!(p.server_us().map(round1));
                p.load.cpu.add_json(&mut j);
                j
            })
            .collect();
        let cli = match &self.cli {
            CliPart::Skipped(why) => json!({ "skipped": why }),
            CliPart::Ran {
                store,
                events,
                runs,
            } => json!({
                "store": store,
                "events": events,
                "runs": runs.iter().map(|r| match &r.outcome {
                    CliOutcome::NotAvailable => json!({ "mode": r.mode, "available": false }),
                    CliOutcome::Ran { status, secs, cpu, server_cpu, said } => json!({
                        "mode": r.mode,
                        "available": true,
                        "exit_status": status,
                        "seconds": round3(Some(*secs)),
                        "events_per_s": round1(*events as f64 / secs),
                        "cpu_s": round3(*cpu),
                        "server_cpu_s": round3(*server_cpu),
                        "said": said,
                    }),
                }).collect::<Vec<_>>(),
            }),
        };
        json!({
            "events": self.head,
            "asked": self.plan.audit.events,
            "fill": self.filled.as_ref().map(|b| json!({
                "written": b.written,
                "seconds": round3(Some(b.secs)),
                "written_per_s": round1(b.written as f64 / b.secs),
                "concurrency": BULK_CONCURRENCY,
            })),
            "warmup_s": self.plan.timing.warmup.as_secs_f64(),
            "measure_s": self.plan.timing.measure.as_secs_f64(),
            "points": points,
            "checked": match &self.checked {
                Ok(s) => json!({ "ok": true, "what": s }),
                Err(e) => json!({ "ok": false, "error": e }),
            },
            "cli": cli,
        })
    }
}
