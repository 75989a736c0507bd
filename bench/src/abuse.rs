//! `abuse`: a well-behaved client while hostile ones attack.

use super::*;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

/// How often each task of the well-behaved client calls at most.
const VICTIM_PERIOD: Duration = Duration::from_millis(4);

/// The attacks, each measured against the same client with none.
#[derive(Clone, Copy)]
enum Attack {
    None,
    StalledReplays,
    StalledLive,
    IdleSockets,
    WindowUpdateFlood,
    RateLimitedParty,
}

/// Every attack, in the order measured.
const ATTACKS: [Attack; 6] = [
    Attack::None,
    Attack::StalledReplays,
    Attack::StalledLive,
    Attack::IdleSockets,
    Attack::WindowUpdateFlood,
    Attack::RateLimitedParty,
];

impl Attack {
    /// How `--attacker` names it.
    fn key(self) -> &'static str {
        match self {
            Attack::None => "none",
            Attack::StalledReplays => "stalled-replays",
            Attack::StalledLive => "stalled-live",
            Attack::IdleSockets => "idle-sockets",
            Attack::WindowUpdateFlood => "window-update-flood",
            Attack::RateLimitedParty => "rate-limited-party",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Attack::None => "none",
            Attack::StalledReplays => "100 stalled replays of 60 KiB events",
            Attack::StalledLive => "a stalled live subscriber, 100 sends/s of 60 KiB",
            Attack::IdleSockets => "1,000 idle sockets",
            Attack::WindowUpdateFlood => "WINDOW_UPDATE flood on 3 connections",
            Attack::RateLimitedParty => "one party at its rate limit (64 in flight)",
        }
    }
}

/// Streams the server can never write to: a flow-control window of 0.
async fn stalled_h2(addr: &str) -> Result<h2::client::SendRequest<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

async fn stalled_subscribe(
    send: &h2::client::SendRequest<Bytes>,
    token: &str,
    req: &pb::SubscribeRequest,
) -> Result<h2::RecvStream> {
    let r = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri("http://bench/backchannel.v1.MessageService/Subscribe")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())?;
    let mut send = send.clone().ready().await?;
    let (response, mut body) = send.send_request(r, false)?;
    let msg = prost::Message::encode_to_vec(req);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    body.send_data(Bytes::from(frame), true)?;
    Ok(response.await?.into_body())
}

/// What an attack holds while it runs, on its runtime.
struct Held {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _held: Vec<Box<dyn std::any::Any + Send>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// An attack running in a process of its own, as another client's
/// would run on another machine, at the lowest CPU priority
/// (`SCHED_IDLE`). What the attacker's own client code costs is not the
/// server's cost of the attack; yet on the bench's machine the server,
/// the measured client and the attacker share two cores. On the
/// measured client's runtime, the attack's tasks queued ahead of that
/// client's and the bench counted its own queue (third session); on a
/// runtime of its own at normal priority, and at nice 19, its threads
/// still took the cores from the server and the measured client alike
/// (fourth and fifth sessions, docs/PERFORMANCE.md). Now it runs on what
/// the others leave, and its own count of admitted calls shows that it
/// still spent its burst and its rate. Dropping it kills the process.
struct Running {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    /// The attacker's lines, read by a thread of their own.
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Running {
    /// The attacker's next line.
    async fn line(&mut self) -> Result<String> {
        tokio::time::timeout(ATTACKER_ANSWERS, self.lines.recv())
            .await
            .map_err(|_| "the attacker did not answer")?
            .ok_or_else(|| "the attacker ended".into())
    }

    /// The attacker's calls so far: admitted, refused
    /// `RESOURCE_EXHAUSTED`, failed otherwise.
    async fn calls(&mut self) -> Result<[u64; 3]> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().ok_or("the attacker is stopped")?;
        stdin.write_all(b"count\n")?;
        stdin.flush()?;
        let line = self.line().await?;
        let n: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<std::result::Result<_, _>>()?;
        match n[..] {
            [a, r, f] => Ok([a, r, f]),
            _ => Err(format!("the attacker answered {line:?}").into()),
        }
    }

    /// Ends the attack: closes its stdin and waits for its process.
    async fn stop(mut self) {
        drop(self.stdin.take());
        let _ = tokio::time::timeout(ATTACKER_ANSWERS, self.lines.recv()).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long the attacker's process may take to start or answer.
const ATTACKER_ANSWERS: Duration = Duration::from_secs(30);

/// What the attacker's process is told, by environment.
const ATTACK_ENV: [&str; 7] = [
    "BENCH_ATTACK_ADDR",
    "BENCH_ATTACK_ADMIN",
    "BENCH_ATTACK_IRAN",
    "BENCH_ATTACK_FRANCE",
    "BENCH_ATTACK_US",
    "BENCH_ATTACK_CONNECTIONS",
    "BENCH_ATTACK_CHANNEL",
];

/// The tokens an attack uses, and where.
struct Target {
    addr: String,
    admin: String,
    iran: String,
    france: String,
    us: String,
    connections: usize,
}

/// Starts `attack` in a process of its own (this executable, with the
/// hidden `--attacker`); it says `ready` once it holds what it attacks
/// with.
async fn start(attack: Attack, w: &World, channel: &str) -> Result<Running> {
    let values = [
        w.addr.clone(),
        w.admin.token.clone(),
        w.iran.token.clone(),
        w.france.token.clone(),
        w.us.token.clone(),
        w.iran.per_conn.len().max(1).to_string(),
        channel.to_owned(),
    ];
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--attacker")
        .arg(attack.key())
        .envs(ATTACK_ENV.iter().zip(values))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child
    // between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
    let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
    let mut running = Running {
        child,
        stdin,
        lines,
    };
    let stdout = stdout.ok_or("the attacker's stdout")?;
    std::thread::Builder::new()
        .name("bench-attacker-out".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        })?;
    let first = running
        .line()
        .await
        .map_err(|e| format!("attack {}: {e}", attack.name()))?;
    if first == "ready" {
        Ok(running)
    } else {
        Err(format!("attack {}: {first}", attack.name()).into())
    }
}

/// The attacker's process (`--attacker KEY`): holds the attack at the
/// lowest CPU priority, answers `count` on stdin with its calls, and
/// ends when stdin closes.
pub fn attacker_main(key: &str) -> std::process::ExitCode {
    let fail = |e: String| {
        println!("{e}");
        std::process::ExitCode::FAILURE
    };
    let Some(attack) = ATTACKS.into_iter().find(|a| a.key() == key) else {
        return fail(format!("no attack {key:?}"));
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; the runtime's threads, made
    // after, inherit its policy. `param` outlives the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        return fail(format!(
            "cannot run at SCHED_IDLE: {}",
            std::io::Error::last_os_error()
        ));
    }
    let env: Vec<String> = ATTACK_ENV
        .iter()
        .map(|k| std::env::var(k).unwrap_or_default())
        .collect();
    let target = Target {
        addr: env[0].clone(),
        admin: env[1].clone(),
        iran: env[2].clone(),
        france: env[3].clone(),
        us: env[4].clone(),
        connections: env[5].parse().unwrap_or(1),
    };
    let channel = env[6].clone();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("attack runtime: {e}")),
    };
    let calls: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let outcome: Result<()> = (|| {
        // The attack's tasks run on the runtime's threads; this one
        // answers on stdin.
        let held = rt.block_on(held(attack, &target, &channel, calls.clone()))?;
        let _in_runtime = rt.enter();
        println!("ready");
        for line in std::io::stdin().lines() {
            if line? == "count" {
                let [a, r, f] = std::array::from_fn(|k| calls[k].load(Ordering::Relaxed));
                println!("{a} {r} {f}");
            }
        }
        drop(held);
        Ok(())
    })();
    rt.shutdown_background();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(e.to_string()),
    }
}

/// Starts the attack, on the current runtime, with connections of its
/// own.
async fn held(
    attack: Attack,
    t: &Target,
    channel: &str,
    calls: Arc<[AtomicU64; 3]>,
) -> Result<Held> {
    let mut run = Held {
        tasks: Vec::new(),
        _held: Vec::new(),
    };
    let addr = t.addr.clone();
    let mut conns = Vec::new();
    if matches!(attack, Attack::StalledLive | Attack::RateLimitedParty) {
        for _ in 0..t.connections {
            conns.push(connect(&addr).await?);
        }
    }
    match attack {
        Attack::None => {}
        Attack::StalledReplays => {
            for _ in 0..4 {
                let send = stalled_h2(&addr).await?;
                for _ in 0..25 {
                    let s = stalled_subscribe(
                        &send,
                        &t.admin,
                        &pb::SubscribeRequest {
                            start_after: Some(0),
                            ..Default::default()
                        },
                    )
                    .await?;
                    run._held.push(Box::new(s));
                }
                run._held.push(Box::new(send));
            }
        }
        Attack::StalledLive => {
            let send = stalled_h2(&addr).await?;
            let s = stalled_subscribe(&send, &t.us, &pb::SubscribeRequest::default()).await?;
            run._held.push(Box::new(s));
            run._held.push(Box::new(send));
            let iran = Identity::new(&conns, &t.iran)?;
            let channel = channel.to_owned();
            run.tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let mut i = 0u64;
                loop {
                    tick.tick().await;
                    let mut c = iran.on(i as usize).messages;
                    let mut r = send_req(&channel, i);
                    r.body = "b".repeat(60 * 1024);
                    i += 1;
                    tokio::spawn(async move {
                        let _ = c.send_message(r).await;
                    });
                }
            }));
        }
        Attack::IdleSockets => {
            for _ in 0..1000 {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                run._held.push(Box::new(tcp));
            }
        }
        Attack::WindowUpdateFlood => {
            for _ in 0..3 {
                let addr = addr.clone();
                run.tasks.push(tokio::spawn(async move {
                    // Reconnects whenever the server drops it.
                    loop {
                        let Ok(mut tcp) = tokio::net::TcpStream::connect(&addr).await else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
                        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
                        let update = [0u8, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1];
                        let burst: Vec<u8> =
                            update.iter().copied().cycle().take(13 * 4096).collect();
                        if tcp.write_all(&hello).await.is_err() {
                            continue;
                        }
                        while tcp.write_all(&burst).await.is_ok() {}
                    }
                }));
            }
        }
        Attack::RateLimitedParty => {
            let france = Identity::new(&conns, &t.france)?;
            for task in 0..64 {
                let mut c = france.on(task).parties;
                let calls = calls.clone();
                run.tasks.push(tokio::spawn(async move {
                    loop {
                        let k = match c.who_am_i(pb::WhoAmIRequest {}).await {
                            Ok(_) => 0,
                            Err(s) if s.code() == tonic::Code::ResourceExhausted => 1,
                            Err(_) => 2,
                        };
                        calls[k].fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
    }
    Ok(run)
}

pub async fn run(
    bin: &Path,
    database_url: Option<&str>,
    plan: &Plan,
    report: &mut Report,
    text: &mut String,
) -> Result<()> {
    let token = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let (server, addr) = Spawned::start_with(bin, &token, database_url, true)?;
    raise_fd_limit();
    let w = World::setup(&addr, &token, plan.connections, Some(server.pid)).await?;
    let channel = w.channel("bench abuse").await?;
    // 300 events of 60 KiB, for the replays to read.
    let body = "b".repeat(60 * 1024);
    for i in 0..300 {
        let mut r = send_req(&channel, i);
        r.body = body.clone();
        w.iran.on(i as usize).messages.send_message(r).await?;
    }
    // The well-behaved client: GetChannel as united-states, 16 in
    // flight, each task at most one call per 4 ms (4,000/s in all, under
    // its rate limit). Its latency is the call's own time.
    let us = w.us.clone();
    let ch = channel.clone();
    let op: Op = Arc::new(move |task, _| {
        let mut c = us.on(task).channels;
        let ch = ch.clone();
        Box::pin(async move {
            let a = Instant::now();
            c.get_channel(pb::GetChannelRequest { channel_id: ch })
                .await?;
            let took = elapsed_ns(a);
            tokio::time::sleep(VICTIM_PERIOD.saturating_sub(a.elapsed())).await;
            Ok([took, 0, 0, 0])
        })
    });
    let mut rows = Vec::new();
    let mut points = Vec::new();
    let mut calm_p99 = None;
    let mut attacker_line = String::new();
    let rss0 = rss_kib(Some(server.pid));
    for attack in ATTACKS {
        let mut running = start(attack, &w, &channel).await?;
        let pid = server.pid;
        let sampler = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(rss_kib(Some(pid)).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(50)).await;
                if peak == u64::MAX {
                    return peak;
                }
            }
        });
        let counted_from = running.calls().await?;
        let l = closed_loop(16, plan.timing, Some(pid), op.clone()).await;
        let counted_to = running.calls().await?;
        let attacker: [f64; 3] = std::array::from_fn(|k| {
            counted_to[k].saturating_sub(counted_from[k]) as f64
                / (plan.timing.warmup + plan.timing.measure).as_secs_f64()
        });
        let peak = rss_kib(Some(pid)).unwrap_or(0);
        sampler.abort();
        let peak = peak.max(sampler.await.unwrap_or(0));
        running.stop().await;
        report.error(&format!("abuse ({})", attack.name()), &l);
        let p99 = l.steps[0].ms(0.99);
        if matches!(attack, Attack::None) {
            calm_p99 = p99;
        }
        let ratio = match (p99, calm_p99) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        progress(format!(
            "abuse ({}): {} calls/s, p99 {} ms ({}x), RSS peak {} MiB",
            attack.name(),
            fmt_rate(l.rate()),
            fmt_ms(p99),
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
            peak / 1024
        ));
        if matches!(attack, Attack::RateLimitedParty) {
            let [admitted, refused, failed] = attacker;
            attacker_line = format!(
                "the party at its rate limit: {} calls/s admitted, {} refused RESOURCE_EXHAUSTED, {} failed otherwise",
                fmt_rate(admitted),
                fmt_rate(refused),
                fmt_rate(failed)
            );
            if refused == 0.0 {
                // A short point (--quick) ends before the burst of a
                // full bucket is spent.
                attacker_line.push_str(" (no refusal: its burst was not spent within the point)");
            }
            progress(format!("abuse: {attacker_line}"));
            if failed > 0.0 {
                report.errors += 1;
                report.failures.push(format!(
                    "abuse: the attack did not run as meant: {attacker_line}"
                ));
            }
        }
        rows.push(vec![
            attack.name().to_string(),
            fmt_rate(l.rate()),
            fmt_ms(l.steps[0].ms(0.5)),
            fmt_ms(p99),
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
            format!("{}", peak / 1024),
            l.errors.to_string(),
        ]);
        points.push(json!({
            "attack": attack.name(),
            "calls_per_s": round1(l.rate()),
            "latency": l.steps[0].json(),
            "p99_vs_none": ratio.map(|r| (r * 100.0).round() / 100.0),
            "rss_peak_kib": peak,
            "errors": l.errors,
            "attacker_calls_per_s": matches!(attack, Attack::RateLimitedParty).then(|| json!({
                "admitted": round1(attacker[0]),
                "refused": round1(attacker[1]),
                "failed": round1(attacker[2]),
            })),
        }));
    }
    text.push_str(&table(
        "abuse: a well-behaved client (GetChannel, 16 tasks, each at most one call per 4 ms) while each attack runs",
        &format!(
            "a server of its own with the default per-party limits; each attack in a process of its own at SCHED_IDLE (as on another machine); RSS {} MiB before the first point",
            rss0.map_or("-".into(), |r| (r / 1024).to_string())
        ),
        &["attack", "calls/s", "p50 ms", "p99 ms", "p99 x none", "RSS peak MiB", "errors"],
        &rows,
    ));
    if !attacker_line.is_empty() {
        text.push_str(&format!("{attacker_line}\n"));
    }
    report
        .json
        .insert("abuse".into(), json!({ "points": points }));
    drop(w);
    drop(server);
    Ok(())
}

/// The bench holds a thousand idle sockets itself.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
