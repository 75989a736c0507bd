//! grpcurl against the real server: reflection with the proto's comments,
//! health without a token, error details that resolve through reflection,
//! the live feed, and the README's tour run exactly as written.
//!
//! These tests need grpcurl (1.8 or newer). `./scripts/test.sh` installs it
//! when it is missing; it is looked up as `$GRPCURL`, then `grpcurl` on
//! `PATH`, then `target/tools/bin/grpcurl` (where the script installs it).
//! Without it a plain `cargo test` skips them, saying how to get it; the
//! script (which sets `BACKCHANNEL_REQUIRE_TOOLS`) fails them instead.
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use backchannel::pb;
use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The grpcurl to run. Panics, saying how to install it, when there is none.
fn find_grpcurl() -> Option<&'static Path> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        let mut candidates = Vec::new();
        if let Some(p) = std::env::var_os("GRPCURL").filter(|p| !p.is_empty()) {
            candidates.push(PathBuf::from(p));
        }
        candidates.push(PathBuf::from("grpcurl"));
        candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/grpcurl"));
        // A pyenv shim exists even where it cannot run, so try it.
        candidates.into_iter().find(|c| {
            std::process::Command::new(c)
                .arg("-version")
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success())
        })
    })
    .as_deref()
}

/// Whether grpcurl is here; a test without it is skipped, saying how to
/// get it (`./scripts/test.sh` requires it).
fn have_grpcurl() -> bool {
    backchannel_testkit::tool_available(
        "grpcurl",
        find_grpcurl().is_some(),
        "these tests need grpcurl 1.8 or newer: run ./scripts/test.sh, which installs it, \
         or put grpcurl on PATH (or set GRPCURL to its path)",
    )
}

fn grpcurl_path() -> &'static Path {
    find_grpcurl().expect("grpcurl: each test checks have_grpcurl() first")
}

/// A `PATH` whose first entry holds the grpcurl these tests use.
fn path_with_grpcurl() -> std::ffi::OsString {
    let grpcurl = grpcurl_path();
    let mut dirs = Vec::new();
    if let Some(dir) = grpcurl.parent().filter(|d| !d.as_os_str().is_empty()) {
        dirs.push(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).expect("PATH")
}

/// What a finished command printed.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn from(out: Output) -> Ran {
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    fn assert_ok(&self, what: &str) {
        assert_eq!(
            self.code,
            Some(0),
            "{what} failed\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// How long one command (grpcurl, or the whole README tour) may take. Only
/// a failing run waits this long; a loaded machine may need much of it.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `cmd` to completion, killing it if it outlasts [`RUN_DEADLINE`].
async fn run(mut cmd: Command, what: &str) -> Ran {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(RUN_DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {RUN_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    Ran::from(out)
}

/// Runs grpcurl in plaintext against `server`, with `token` and the JSON
/// request `body` if given; `rest` is the verb or method and its arguments.
async fn grpcurl(server: &Server, token: Option<&str>, body: Option<&str>, rest: &[&str]) -> Ran {
    let mut cmd = Command::new(grpcurl_path());
    cmd.args(["-plaintext", "-max-time", "60"]);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("authorization: Bearer {t}"));
    }
    if let Some(b) = body {
        cmd.arg("-d").arg(b);
    }
    cmd.arg(server.addr.to_string()).args(rest);
    run(cmd, &format!("grpcurl {rest:?}")).await
}

/// A server that generated its own admin token, and that token.
async fn server_with_token_file() -> (Server, String) {
    let server = Server::start_with(Options {
        no_admin_env: true,
        ..Default::default()
    })
    .await;
    let file = server.data_path().join("admin.token");
    let token = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
        .trim()
        .to_string();
    assert!(!token.is_empty(), "{} is empty", file.display());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{} mode {mode:o}", file.display());
    }
    (server, token)
}

#[tokio::test]
async fn reflection_lists_the_services_and_describes_them_with_their_comments() {
    if !have_grpcurl() {
        return;
    }
    let server = Server::start().await;

    let list = grpcurl(&server, None, None, &["list"]).await;
    list.assert_ok("grpcurl list");
    let services: BTreeSet<&str> = list.stdout.lines().map(str::trim).collect();
    for want in [
        "backchannel.v1.PartyService",
        "backchannel.v1.ChannelService",
        "backchannel.v1.MessageService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(want), "{want} not in {services:?}");
    }

    let methods = grpcurl(
        &server,
        None,
        None,
        &["list", "backchannel.v1.MessageService"],
    )
    .await;
    methods.assert_ok("grpcurl list MessageService");
    for m in ["SendMessage", "ForwardMessage", "ListEvents", "Subscribe"] {
        let full = format!("backchannel.v1.MessageService.{m}");
        assert!(
            methods.stdout.lines().any(|l| l.trim() == full),
            "{full} not in\n{}",
            methods.stdout
        );
    }

    let svc = grpcurl(
        &server,
        None,
        None,
        &["describe", "backchannel.v1.MessageService"],
    )
    .await;
    svc.assert_ok("grpcurl describe MessageService");
    for want in [
        "backchannel.v1.MessageService is a service:",
        "// Messages, their moves along the route, their history and the live feed.",
        "// The mediator of the current hop takes the message (hop PENDING ->",
        "rpc Subscribe ( .backchannel.v1.SubscribeRequest ) returns ( stream .backchannel.v1.SubscribeResponse );",
    ] {
        assert!(svc.stdout.contains(want), "{want:?} not in\n{}", svc.stdout);
    }

    let event = grpcurl(&server, None, None, &["describe", "backchannel.v1.Event"]).await;
    event.assert_ok("grpcurl describe Event");
    for want in [
        "backchannel.v1.Event is a message:",
        "// One recorded status change of a message or a channel.",
        "// Position in the global log: starts at 1, strictly increasing, no gaps,",
        "uint64 sequence = 1;",
        "// The last mediator handed the message to the recipient.",
        "MESSAGE_DELIVERED = 4;",
    ] {
        assert!(
            event.stdout.contains(want),
            "{want:?} not in\n{}",
            event.stdout
        );
    }
}

#[tokio::test]
async fn health_check_needs_no_token() {
    if !have_grpcurl() {
        return;
    }
    let server = Server::start().await;
    let all = grpcurl(&server, None, None, &["grpc.health.v1.Health/Check"]).await;
    all.assert_ok("Health/Check");
    assert!(
        all.stdout.contains(r#""status": "SERVING""#),
        "{}",
        all.stdout
    );

    let one = grpcurl(
        &server,
        None,
        Some(r#"{"service": "backchannel.v1.MessageService"}"#),
        &["grpc.health.v1.Health/Check"],
    )
    .await;
    one.assert_ok("Health/Check MessageService");
    assert!(
        one.stdout.contains(r#""status": "SERVING""#),
        "{}",
        one.stdout
    );
}

#[tokio::test]
async fn error_details_resolve_through_reflection() {
    if !have_grpcurl() {
        return;
    }
    let (server, admin) = server_with_token_file().await;

    let bad = grpcurl(
        &server,
        Some(&admin),
        Some(r#"{"party_id": "Not Valid", "display_name": "Nobody", "kind": "STATE"}"#),
        &["backchannel.v1.PartyService/CreateParty"],
    )
    .await;
    // grpcurl exits 64 + the status code; INVALID_ARGUMENT is 3.
    assert_eq!(
        bad.code,
        Some(64 + 3),
        "stdout {}\nstderr {}",
        bad.stdout,
        bad.stderr
    );
    for want in [
        "Code: InvalidArgument",
        r#"{"@type":"type.googleapis.com/google.rpc.ErrorInfo","domain":"backchannel.v1","metadata":{"field":"party_id"},"reason":"INVALID_FIELD"}"#,
        r#""@type":"type.googleapis.com/google.rpc.BadRequest""#,
        r#""field":"party_id""#,
    ] {
        assert!(bad.stderr.contains(want), "{want:?} not in\n{}", bad.stderr);
    }
    // An `Any` grpcurl cannot resolve prints as raw bytes with an "@error".
    assert!(!bad.stderr.contains("@error"), "{}", bad.stderr);

    let anonymous = grpcurl(
        &server,
        None,
        Some("{}"),
        &["backchannel.v1.PartyService/WhoAmI"],
    )
    .await;
    assert_eq!(anonymous.code, Some(64 + 16), "{}", anonymous.stderr);
    assert!(
        anonymous
            .stderr
            .contains(r#""domain":"backchannel.v1","reason":"UNAUTHENTICATED""#),
        "{}",
        anonymous.stderr
    );

    let info = grpcurl(&server, None, None, &["describe", "google.rpc.ErrorInfo"]).await;
    info.assert_ok("describe google.rpc.ErrorInfo");
    assert!(
        info.stdout.contains("string reason = 1;"),
        "{}",
        info.stdout
    );

    let me = grpcurl(
        &server,
        Some(&admin),
        Some("{}"),
        &["backchannel.v1.PartyService/WhoAmI"],
    )
    .await;
    me.assert_ok("WhoAmI as the admin");
    assert!(me.stdout.contains(r#""admin": true"#), "{}", me.stdout);
}

/// Reads grpcurl's stream of pretty-printed JSON objects, one per response.
struct JsonStream {
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    buf: String,
}

impl JsonStream {
    /// The next response, or `None` when the stream ended.
    async fn next(&mut self) -> Option<serde_json::Value> {
        loop {
            let line = tokio::time::timeout(DEADLINE, self.lines.next_line())
                .await
                .expect("no response from grpcurl within the deadline")
                .expect("read grpcurl output")?;
            self.buf.push_str(&line);
            self.buf.push('\n');
            // grpcurl closes each top-level object with "}" in column 0.
            if line == "}" {
                let v = serde_json::from_str(&self.buf)
                    .unwrap_or_else(|e| panic!("bad JSON from grpcurl ({e}):\n{}", self.buf));
                self.buf.clear();
                return Some(v);
            }
        }
    }
}

#[tokio::test]
async fn grpcurl_follows_the_live_feed() {
    if !have_grpcurl() {
        return;
    }
    let server = Server::start().await;
    let mut w = world(&server).await;
    let first = w
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "first"))
        .await
        .expect("send")
        .into_inner();

    let mut child = Command::new(grpcurl_path())
        .args(["-plaintext", "-H"])
        .arg(format!("authorization: Bearer {ADMIN_TOKEN}"))
        .arg("-d")
        .arg(format!(
            r#"{{"start_after": 0, "channel_ids": ["{}"], "heartbeat_seconds": 60}}"#,
            w.channel.id
        ))
        .arg(server.addr.to_string())
        .arg("backchannel.v1.MessageService/Subscribe")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start grpcurl");
    let mut stream = JsonStream {
        lines: BufReader::new(child.stdout.take().expect("stdout")).lines(),
        buf: String::new(),
    };
    let mut next = async || {
        stream
            .next()
            .await
            .expect("grpcurl's stream ended early (see its stderr above)")
    };

    // The replay, then the caught-up heartbeat.
    let e1 = next().await;
    assert_eq!(e1["event"]["sequence"], "1", "{e1}");
    assert_eq!(e1["event"]["type"], "CHANNEL_OPENED", "{e1}");
    let e2 = next().await;
    assert_eq!(e2["event"]["sequence"], "2", "{e2}");
    assert_eq!(e2["event"]["type"], "MESSAGE_SENT", "{e2}");
    assert_eq!(e2["event"]["message"]["id"], first.id.as_str(), "{e2}");
    let hb = next().await;
    assert_eq!(hb["heartbeat"]["headSequence"], "2", "{hb}");

    // Then live.
    w.france
        .messages
        .accept_message(move_req!(AcceptMessageRequest, first.id))
        .await
        .expect("accept");
    let e3 = next().await;
    assert_eq!(e3["event"]["sequence"], "3", "{e3}");
    assert_eq!(e3["event"]["type"], "MESSAGE_ACCEPTED", "{e3}");
    assert_eq!(e3["event"]["actor"], "france", "{e3}");
    assert_eq!(e3["event"]["hopIndex"], 0, "{e3}");

    child.kill().await.expect("stop grpcurl");
}

#[tokio::test]
async fn readme_tour_runs_as_written() {
    // The tour's blocks use python3 to pick fields out of replies.
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_grpcurl()
        || !backchannel_testkit::tool_available("python3", python, "install Python 3")
    {
        return;
    }
    let (server, admin_token) = server_with_token_file().await;
    let script = readme_tour("tour", &server);
    // Run it somewhere with no backchannel-data of its own.
    let cwd = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &script])
        .current_dir(cwd.path())
        .env("PATH", path_with_grpcurl());
    let ran = run(cmd, "the README tour").await;
    ran.assert_ok(&format!("the README tour\n--- script\n{script}"));

    assert!(
        ran.stdout.contains(r#""status": "SERVING""#),
        "no health check in\n{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains(r#""state": "ACKNOWLEDGED""#),
        "no ACKNOWLEDGED message in\n{}",
        ran.stdout
    );
    let types: Vec<&str> = ran
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix(r#""type": ""#))
        .map(|t| t.trim_end_matches(['"', ',']))
        .collect();
    assert_eq!(
        types,
        [
            "CHANNEL_OPENED",
            "MESSAGE_SENT",
            "MESSAGE_ACCEPTED",
            "MESSAGE_DELIVERED",
            "MESSAGE_ACKNOWLEDGED",
        ],
        "event types in the tour's history\n{}",
        ran.stdout
    );

    // The record agrees with what the tour printed.
    let mut admin = server.clients(&admin_token).await;
    let events = all_events(&mut admin, pb::ListEventsRequest::default()).await;
    let seen: Vec<(u64, &str)> = events
        .iter()
        .map(|e| (e.sequence, e.actor.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (1, "admin"),
            (2, "iran"),
            (3, "france"),
            (4, "france"),
            (5, "united-states")
        ]
    );
    let last = events.last().expect("events");
    let Some(pb::event::Subject::Message(m)) = &last.subject else {
        panic!("last event has no message: {last:?}");
    };
    assert_eq!(m.state, pb::message::State::Acknowledged as i32);
    assert_eq!(m.sender, "iran");
    assert_eq!(m.recipient, "united-states");
    assert_eq!(m.hops.len(), 1);
    assert_eq!(m.hops[0].mediator, "france");
}

#[tokio::test]
async fn readme_documents_every_flag() {
    let ran = run(
        {
            let mut c = Command::new(env!("CARGO_BIN_EXE_backchannel"));
            c.arg("--help");
            c
        },
        "backchannel --help",
    )
    .await;
    ran.assert_ok("backchannel --help");
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let mut checked = 0;
    for word in ran.stdout.split(|c: char| c.is_whitespace() || c == '[') {
        let word = word.trim_end_matches([']', '=', ',']);
        let is_flag = word.starts_with("--") && !matches!(word, "--help" | "--version");
        let is_env = word.starts_with("BACKCHANNEL_");
        if is_flag || is_env {
            assert!(
                readme.contains(&format!("`{word}`")),
                "README.md's configuration table lacks `{word}`"
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "found no flags in --help:\n{}", ran.stdout);
}
