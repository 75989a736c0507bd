//! The command line as a user runs it: the real binary against a real
//! server, its output read as a person (table) and as a program (JSON),
//! its refusals by exit status and stderr line.

mod common;

use std::process::{Output, Stdio};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Runs `backchannel ARGS` against `server` with `token` (none: no token).
async fn bc(server: &Server, token: Option<&str>, args: &[&str]) -> Output {
    bc_at(&server.addr.to_string(), token, args).await
}

fn command(addr: &str, token: Option<&str>, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_backchannel"));
    cmd.args(args)
        .env("BACKCHANNEL_ADDR", addr)
        .env("TZ", "UTC")
        .env_remove("BACKCHANNEL_TOKEN")
        .env_remove("BACKCHANNEL_TOKEN_FILE")
        .env_remove("BACKCHANNEL_OUTPUT")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.env("BACKCHANNEL_TOKEN", t);
    }
    cmd
}

async fn bc_at(addr: &str, token: Option<&str>, args: &[&str]) -> Output {
    tokio::time::timeout(DEADLINE, command(addr, token, args).output())
        .await
        .expect("the command did not finish in time")
        .expect("run backchannel")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The output of a command that must succeed.
fn ok(o: Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// The JSON lines of a command that must succeed.
fn json_lines(o: Output) -> Vec<Value> {
    ok(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn json_one(o: Output) -> Value {
    let mut v = json_lines(o);
    assert_eq!(v.len(), 1, "one JSON object: {v:?}");
    v.remove(0)
}

/// Asserts a refusal: exit 1 and the stderr line `error: CODE REASON: …`.
fn refused(o: Output, code: &str, reason: &str) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    let first = stderr(&o).lines().next().unwrap_or_default().to_owned();
    let want = format!("error: {code} {reason}: ");
    assert!(first.starts_with(&want), "want {want:?}…, got {first:?}");
    assert!(
        first.len() > want.len(),
        "the refusal has a message: {first:?}"
    );
}

/// An RFC 3339 time `secs` before a fixed instant in the past.
fn at(base: i64, secs: i64) -> String {
    chrono::DateTime::from_timestamp(base + secs, 0)
        .expect("time")
        .to_rfc3339()
}

#[tokio::test]
async fn the_admin_registers_parties_issues_tokens_and_opens_channels() {
    let server = Server::start().await;
    let admin = Some(ADMIN_TOKEN);

    let status = ok(bc(&server, admin, &["status"]).await);
    assert!(status.contains("you are   the admin"), "{status}");
    assert!(status.contains("head      sequence 0"), "{status}");
    let s = json_one(bc(&server, admin, &["status", "-o", "json"]).await);
    assert_eq!(s["whoAmI"]["admin"], true, "{s}");
    assert_eq!(s["serverVersion"], env!("CARGO_PKG_VERSION"));
    assert!(
        s["store"] == "embedded" || s["store"] == "postgresql",
        "{s}"
    );

    let p = json_one(
        bc(
            &server,
            admin,
            &[
                "party",
                "create",
                "iran",
                "--name",
                "Islamic Republic of Iran",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(p["id"], "iran");
    assert_eq!(p["displayName"], "Islamic Republic of Iran");
    assert_eq!(p["kind"], "STATE");
    assert!(
        p["createTime"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{p}"
    );
    for (id, name, kind) in [
        ("united-states", "United States", "state"),
        ("france", "France", "state"),
        ("japan", "Japan", "state"),
        ("un", "United Nations", "organization"),
    ] {
        ok(bc(
            &server,
            admin,
            &["party", "create", id, "--name", name, "--kind", kind],
        )
        .await);
    }
    refused(
        bc(
            &server,
            admin,
            &["party", "create", "iran", "--name", "Again"],
        )
        .await,
        "ALREADY_EXISTS",
        "PARTY_EXISTS",
    );
    let listed: Vec<String> =
        json_lines(bc(&server, admin, &["party", "list", "-o", "json"]).await)
            .iter()
            .map(|p| p["id"].as_str().unwrap_or_default().to_owned())
            .collect();
    assert_eq!(listed, ["france", "iran", "japan", "un", "united-states"]);
    let table = ok(bc(&server, admin, &["party", "list"]).await);
    assert!(
        table.lines().next().is_some_and(|h| h.starts_with("ID")),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("un ")
            && l.contains("ORGANIZATION")
            && l.ends_with("United Nations")),
        "{table}"
    );
    let un = json_one(bc(&server, admin, &["party", "show", "un", "-o", "json"]).await);
    assert_eq!(un["kind"], "ORGANIZATION");
    refused(
        bc(&server, admin, &["party", "show", "nobody"]).await,
        "NOT_FOUND",
        "PARTY_NOT_FOUND",
    );

    let t = json_one(bc(&server, admin, &["token", "issue", "iran", "-o", "json"]).await);
    let iran = t["token"].as_str().expect("token").to_owned();
    let iran_id = t["tokenId"].as_str().expect("token id").to_owned();
    let ro = json_one(
        bc(
            &server,
            admin,
            &[
                "token",
                "issue",
                "iran",
                "--read-only",
                "--expires",
                "30d",
                "-o",
                "json",
            ],
        )
        .await,
    );
    let tokens = json_lines(bc(&server, admin, &["token", "list", "iran", "-o", "json"]).await);
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    let ro_info = tokens
        .iter()
        .find(|t| t["tokenId"] == ro["tokenId"])
        .expect("read-only token listed");
    assert_eq!(ro_info["readOnly"], true);
    assert_eq!(ro_info["partyId"], "iran");
    assert!(ro_info["expireTime"].is_string(), "{ro_info}");
    assert!(
        tokens.iter().all(|t| t.get("token").is_none()),
        "never the secret: {tokens:?}"
    );

    // The party's own view.
    let who = ok(bc(&server, Some(&iran), &["status"]).await);
    assert!(who.contains("you are   iran"), "{who}");

    let ch = json_one(
        bc(
            &server,
            Some(&iran),
            &[
                "channel",
                "open",
                "iran",
                "united-states",
                "--via",
                "france,japan",
                "--name",
                "Biarritz",
                "-o",
                "json",
            ],
        )
        .await,
    );
    let id = ch["id"].as_str().expect("channel id").to_owned();
    assert_eq!(ch["parties"], serde_json::json!(["iran", "united-states"]));
    assert_eq!(ch["mediators"], serde_json::json!(["france", "japan"]));
    assert_eq!(ch["state"], "OPEN");
    assert_eq!(ch["version"], "1", "uint64 is a string in proto3 JSON");
    let shown = ok(bc(&server, Some(&iran), &["channel", "show", &id]).await);
    assert!(
        shown.contains("route     iran → france → japan → united-states"),
        "{shown}"
    );
    let s = json_one(
        bc(
            &server,
            Some(&iran),
            &[
                "channel",
                "suspend",
                &id,
                "--note",
                "consultations",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(s["state"], "SUSPENDED");
    refused(
        bc(&server, Some(&iran), &["channel", "suspend", &id]).await,
        "FAILED_PRECONDITION",
        "CHANNEL_NOT_OPEN",
    );
    refused(
        bc(
            &server,
            Some(&iran),
            &["channel", "resume", &id, "--expect-version", "1"],
        )
        .await,
        "ABORTED",
        "VERSION_MISMATCH",
    );
    ok(bc(
        &server,
        Some(&iran),
        &["channel", "resume", &id, "--expect-version", "2"],
    )
    .await);
    let open = json_lines(
        bc(
            &server,
            Some(&iran),
            &["channel", "list", "--state", "open", "-o", "json"],
        )
        .await,
    );
    assert_eq!(open.len(), 1);
    let table = ok(bc(
        &server,
        Some(&iran),
        &["channel", "list", "--party", "japan"],
    )
    .await);
    assert!(table.contains(&id) && table.contains("Biarritz"), "{table}");
    refused(
        bc(
            &server,
            Some(&iran),
            &[
                "channel",
                "open",
                "iran",
                "united-states",
                "--via",
                "iran",
                "--name",
                "x",
            ],
        )
        .await,
        "INVALID_ARGUMENT",
        "INVALID_ROUTE",
    );

    // Revoked: the next call is refused.
    let out = ok(bc(&server, admin, &["token", "revoke", &iran_id]).await);
    assert!(out.contains("revoked"), "{out}");
    refused(
        bc(&server, Some(&iran), &["status"]).await,
        "UNAUTHENTICATED",
        "UNAUTHENTICATED",
    );
    ok(bc(&server, admin, &["channel", "close", &id, "--note", "done"]).await);
    let closed = json_one(bc(&server, admin, &["channel", "show", &id, "-o", "json"]).await);
    assert_eq!(closed["state"], "CLOSED");
}

/// Registers iran, united-states, france and japan with tokens, and a
/// channel iran → france → japan → united-states, through the CLI.
async fn biarritz(server: &Server) -> (std::collections::HashMap<&'static str, String>, String) {
    let admin = Some(ADMIN_TOKEN);
    let mut tokens = std::collections::HashMap::new();
    for id in ["iran", "united-states", "france", "japan", "outsider"] {
        ok(bc(server, admin, &["party", "create", id, "--name", id]).await);
        let t = json_one(bc(server, admin, &["token", "issue", id, "-o", "json"]).await);
        tokens.insert(id, t["token"].as_str().expect("token").to_owned());
    }
    let ch = json_one(
        bc(
            server,
            admin,
            &[
                "channel",
                "open",
                "iran",
                "united-states",
                "--via",
                "france,japan",
                "--name",
                "Biarritz",
                "-o",
                "json",
            ],
        )
        .await,
    );
    (tokens, ch["id"].as_str().expect("id").to_owned())
}

#[tokio::test]
async fn a_message_relayed_through_two_mediators_shows_who_held_it_and_for_how_long() {
    let server = Server::start().await;
    let (t, channel) = biarritz(&server).await;
    let tok = |p: &str| Some(t[p].clone());
    // Back-dated steps at known times: sent at base, france accepts 20 min
    // later and forwards at 1 h; japan forwards at 2 h 30 min.
    let base = chrono::Utc::now().timestamp() - 6 * 3600;
    let m = json_one(
        bc(
            &server,
            tok("iran").as_deref(),
            &[
                "send",
                &channel,
                "--subject",
                "A proposal on sanctions relief, to be answered before the G7 ends",
                "--body",
                "first line\nsecond line",
                "--label",
                "topic=sanctions",
                "--label",
                "summit=g7",
                "--respond-by",
                "+3d",
                "--at",
                &at(base, 0),
                "-o",
                "json",
            ],
        )
        .await,
    );
    let id = m["id"].as_str().expect("id").to_owned();
    assert_eq!(m["state"], "SUBMITTED");
    assert_eq!(m["sender"], "iran");
    assert_eq!(m["recipient"], "united-states");
    assert_eq!(m["labels"]["topic"], "sanctions");
    assert_eq!(m["body"], "first line\nsecond line");
    assert_eq!(m["hops"][0]["state"], "PENDING");

    // The wrong parties are refused, each for its own reason.
    refused(
        bc(&server, tok("japan").as_deref(), &["accept", &id]).await,
        "FAILED_PRECONDITION",
        "NOT_CURRENT_MEDIATOR",
    );
    refused(
        bc(&server, tok("united-states").as_deref(), &["forward", &id]).await,
        "PERMISSION_DENIED",
        "NOT_A_MEDIATOR",
    );
    refused(
        bc(&server, tok("outsider").as_deref(), &["show", &id]).await,
        "NOT_FOUND",
        "MESSAGE_NOT_FOUND",
    );
    refused(
        bc(&server, tok("iran").as_deref(), &["withdraw", &id]).await,
        "INVALID_ARGUMENT",
        "INVALID_FIELD",
    );
    refused(
        bc(&server, Some(ADMIN_TOKEN), &["accept", &id]).await,
        "PERMISSION_DENIED",
        "ADMIN_NOT_A_PARTY",
    );

    let a = json_one(
        bc(
            &server,
            tok("france").as_deref(),
            &[
                "accept",
                &id,
                "--at",
                &at(base, 1200),
                "--note",
                "received at the Élysée",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(a["state"], "IN_TRANSIT");
    assert_eq!(a["version"], "2");
    refused(
        bc(
            &server,
            tok("france").as_deref(),
            &["forward", &id, "--expect-version", "1"],
        )
        .await,
        "ABORTED",
        "VERSION_MISMATCH",
    );
    ok(bc(
        &server,
        tok("france").as_deref(),
        &[
            "forward",
            &id,
            "--at",
            &at(base, 3600),
            "--expect-version",
            "2",
        ],
    )
    .await);
    let f = json_one(
        bc(
            &server,
            tok("japan").as_deref(),
            &["forward", &id, "--at", &at(base, 9000), "-o", "json"],
        )
        .await,
    );
    assert_eq!(f["state"], "DELIVERED");
    assert_eq!(f["hops"][1]["mediator"], "japan");
    assert_eq!(f["hops"][1]["state"], "FORWARDED");
    assert_eq!(
        f["hops"][1]["forwardTime"],
        at(base, 9000).replace("+00:00", "Z")
    );

    // show: the route as a table of custody.
    let shown = ok(bc(&server, tok("united-states").as_deref(), &["show", &id]).await);
    let row = |hop: &str| {
        shown
            .lines()
            .find(|l| l.split_whitespace().next() == Some(hop))
            .unwrap_or_else(|| panic!("no row for hop {hop}:\n{shown}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let france = row("1");
    assert_eq!(france[1], "france", "{shown}");
    assert_eq!(france[2], "FORWARDED", "{shown}");
    assert_eq!(
        france.last(),
        Some(&"1h0m"),
        "france held it from its sending to its forward:\n{shown}"
    );
    let japan = row("2");
    assert_eq!(japan[1], "japan", "{shown}");
    assert_eq!(
        japan.last(),
        Some(&"1h30m"),
        "japan held it for 1h30m:\n{shown}"
    );
    assert!(
        shown.contains("route       iran → france → japan → united-states"),
        "{shown}"
    );
    assert!(
        shown.contains("state       DELIVERED with united-states"),
        "{shown}"
    );
    assert!(
        shown.contains("labels      summit=g7 topic=sanctions"),
        "{shown}"
    );
    assert!(
        shown.contains("france accepted it: received at the Élysée"),
        "{shown}"
    );
    assert!(shown.contains("  first line\n  second line"), "{shown}");
    for l in shown.lines() {
        assert!(
            l.chars().count() <= 100,
            "a line too wide for a terminal: {l:?}"
        );
    }

    // The recipient answers; the original is ANSWERED.
    refused(
        bc(&server, tok("iran").as_deref(), &["acknowledge", &id]).await,
        "PERMISSION_DENIED",
        "NOT_THE_RECIPIENT",
    );
    ok(bc(
        &server,
        tok("united-states").as_deref(),
        &["acknowledge", &id],
    )
    .await);
    let r = json_one(
        bc(
            &server,
            tok("united-states").as_deref(),
            &[
                "reply",
                &id,
                "--subject",
                "Not before sanctions are lifted",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(r["inReplyTo"], id.as_str());
    assert_eq!(r["threadId"], id.as_str());
    assert_eq!(
        r["hops"][0]["mediator"], "japan",
        "a reply travels the route reversed"
    );

    let listed = json_lines(
        bc(
            &server,
            tok("iran").as_deref(),
            &["messages", "--channel", &channel, "-o", "json"],
        )
        .await,
    );
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["id"], r["id"], "newest first");
    assert_eq!(listed[1]["state"], "ANSWERED");
    let answered = json_lines(
        bc(
            &server,
            tok("iran").as_deref(),
            &["messages", "--state", "answered", "-o", "json"],
        )
        .await,
    );
    assert_eq!(answered.len(), 1);
    let one = json_lines(
        bc(
            &server,
            tok("iran").as_deref(),
            &["messages", "--limit", "1", "-o", "json"],
        )
        .await,
    );
    assert_eq!(one.len(), 1);
    let table = ok(bc(
        &server,
        tok("iran").as_deref(),
        &["messages", "--thread", &id],
    )
    .await);
    assert!(
        table.contains("ANSWERED") && table.contains("SUBMITTED  japan"),
        "{table}"
    );

    let history = json_lines(
        bc(
            &server,
            tok("iran").as_deref(),
            &["history", "--message", &id, "-o", "json"],
        )
        .await,
    );
    let types: Vec<&str> = history
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        types,
        [
            "MESSAGE_SENT",
            "MESSAGE_ACCEPTED",
            "MESSAGE_FORWARDED",
            "MESSAGE_DELIVERED",
            "MESSAGE_ACKNOWLEDGED",
            "MESSAGE_ANSWERED"
        ]
    );
    assert_eq!(history[1]["hopIndex"], 0);
    assert_eq!(
        history[1]["occurTime"],
        at(base, 1200).replace("+00:00", "Z")
    );
    let text = ok(bc(
        &server,
        tok("iran").as_deref(),
        &["history", "--channel", &channel],
    )
    .await);
    assert!(text.contains("japan delivered \"A proposal on sanctions relief, to be answered before the G7 ends\" to united-states"), "whole subjects:\n{text}");
    let after = json_lines(
        bc(
            &server,
            tok("iran").as_deref(),
            &[
                "history",
                "--after",
                history[4]["sequence"].as_str().unwrap_or("0"),
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(
        after.first().map(|e| e["type"].clone()),
        Some(Value::from("MESSAGE_SENT")),
        "the reply, after the acknowledgement"
    );
}

#[tokio::test]
async fn tokens_that_may_not_write_and_missing_tokens_are_refused() {
    let server = Server::start().await;
    let (t, channel) = biarritz(&server).await;
    let ro = json_one(
        bc(
            &server,
            Some(ADMIN_TOKEN),
            &["token", "issue", "iran", "--read-only", "-o", "json"],
        )
        .await,
    );
    let ro = ro["token"].as_str().expect("token");
    refused(
        bc(&server, Some(ro), &["send", &channel, "--subject", "s"]).await,
        "PERMISSION_DENIED",
        "READ_ONLY_TOKEN",
    );
    // Reading is fine.
    ok(bc(&server, Some(ro), &["messages"]).await);
    let o = bc(&server, None, &["messages"]).await;
    assert!(stderr(&o).contains("hint: give a token"), "{}", stderr(&o));
    refused(o, "UNAUTHENTICATED", "UNAUTHENTICATED");
    refused(
        bc(&server, Some("bc_not-a-real-token"), &["status"]).await,
        "UNAUTHENTICATED",
        "UNAUTHENTICATED",
    );
    // A token file works like the variable.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("iran.token");
    std::fs::write(&file, format!("{}\n", t["iran"])).expect("write");
    let out = ok(bc(
        &server,
        None,
        &["--token-file", file.to_str().expect("path"), "status"],
    )
    .await);
    assert!(out.contains("you are   iran"), "{out}");

    // Usage errors: exit 2, before any call.
    for args in [
        vec![
            "send",
            channel.as_str(),
            "--subject",
            "s",
            "--label",
            "no-equals",
        ],
        vec![
            "send",
            channel.as_str(),
            "--subject",
            "s",
            "--at",
            "yesterday",
        ],
        vec!["accept"],
        vec!["watch", "--type", "NOT_A_TYPE"],
        vec!["frobnicate"],
    ] {
        let o = bc(&server, Some(&t["iran"]), &args).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).starts_with("error: "),
            "{args:?}: {}",
            stderr(&o)
        );
    }

    // No server: one line naming the address.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let o = bc_at(&closed.to_string(), Some(&t["iran"]), &["status"]).await;
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "error: UNAVAILABLE: cannot reach the server at http://{closed}"
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// A `watch` process, its printed events collected as they come.
struct Watch {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<Value>,
}

impl Watch {
    fn start(addr: &str, token: &str, args: &[&str]) -> Watch {
        let mut cmd = command(addr, Some(token), args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start watch");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(out).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Watch {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until the watch has printed the event of `sequence`.
    async fn until(&mut self, sequence: u64) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !self.seen.iter().any(|e| seq(e) >= sequence) {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => self
                    .seen
                    .push(serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"))),
                Ok(None) => panic!(
                    "watch ended before sequence {sequence}: saw {:?}",
                    self.seen.iter().map(seq).collect::<Vec<_>>()
                ),
                Err(_) => panic!(
                    "watch did not print sequence {sequence}: saw {:?}",
                    self.seen.iter().map(seq).collect::<Vec<_>>()
                ),
            }
        }
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.id().expect("watch runs");
        // SAFETY: a signal to our own child.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

fn seq(e: &Value) -> u64 {
    e["sequence"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sends `n` messages and returns the head after them.
async fn send(server: &Server, token: &str, channel: &str, n: usize) -> u64 {
    for i in 0..n {
        let m = json_one(
            bc(
                server,
                Some(token),
                &[
                    "send",
                    channel,
                    "--subject",
                    &format!("message {i}"),
                    "-o",
                    "json",
                ],
            )
            .await,
        );
        assert_eq!(m["state"], "SUBMITTED");
    }
    let events = json_lines(bc(server, Some(ADMIN_TOKEN), &["history", "-o", "json"]).await);
    events.last().map_or(0, seq)
}

#[tokio::test]
async fn watch_resumes_across_a_server_killed_mid_stream_with_every_event_once() {
    let server = Server::start().await;
    let (t, channel) = biarritz(&server).await;
    let addr = server.addr.to_string();
    let mut w = Watch::start(&addr, &t["iran"], &["watch", "--from-start", "-o", "json"]);
    let head = send(&server, &t["iran"], &channel, 5).await;
    w.until(head).await;

    let mut server = server;
    server.kill().await;
    let server = server.restart_on_same_address().await;
    let head = send(&server, &t["iran"], &channel, 5).await;
    w.until(head).await;
    let sequences: Vec<u64> = w.seen.iter().map(seq).collect();
    assert_eq!(
        sequences,
        (1..=head).collect::<Vec<_>>(),
        "every sequence once, in order"
    );
    w.signal(libc::SIGTERM);
    let status = tokio::time::timeout(DEADLINE, w.child.wait())
        .await
        .expect("watch stops")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn watch_with_a_position_file_goes_on_where_it_stopped() {
    let server = Server::start().await;
    let (t, channel) = biarritz(&server).await;
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let pos = dir.path().join("position");
    let pos_s = pos.to_str().expect("path");
    let args = [
        "watch",
        "--channel",
        channel.as_str(),
        "--position-file",
        pos_s,
        "--from-start",
        "-o",
        "json",
    ];

    // The first watch prints the history so far and is stopped mid-stream.
    let head = send(&server, &t["iran"], &channel, 3).await;
    let mut w = Watch::start(&addr, &t["iran"], &args);
    w.until(head).await;
    w.signal(libc::SIGTERM);
    tokio::time::timeout(DEADLINE, w.child.wait())
        .await
        .expect("watch stops")
        .expect("wait");
    let saved: u64 = std::fs::read_to_string(&pos)
        .expect("position")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(saved, head);
    let mut all: Vec<u64> = w.seen.iter().map(seq).collect();

    // Meanwhile: more events. The next watch starts after the saved
    // position (its --from-start is overridden by the file) and stops
    // when caught up.
    let head = send(&server, &t["iran"], &channel, 4).await;
    let o = bc(
        &server,
        Some(&t["iran"]),
        &[&args[..], &["--until-caught-up"]].concat(),
    )
    .await;
    let again = json_lines(o);
    all.extend(again.iter().map(seq));
    assert_eq!(
        all,
        (1..=head).collect::<Vec<_>>(),
        "every sequence once across two runs of watch"
    );
    let saved: u64 = std::fs::read_to_string(&pos)
        .expect("position")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(saved, head);

    // Caught up already: prints nothing and exits 0.
    let o = bc(
        &server,
        Some(&t["iran"]),
        &[&args[..], &["--until-caught-up"]].concat(),
    )
    .await;
    assert_eq!(ok(o), "");
    // A narrow filter still moves the position, by heartbeats.
    let other = json_one(
        bc(
            &server,
            Some(ADMIN_TOKEN),
            &[
                "channel",
                "open",
                "iran",
                "united-states",
                "--via",
                "japan",
                "--name",
                "Tokyo",
                "-o",
                "json",
            ],
        )
        .await,
    );
    let later = send(&server, &t["iran"], other["id"].as_str().expect("id"), 2).await;
    let o = bc(
        &server,
        Some(&t["iran"]),
        &[&args[..], &["--until-caught-up"]].concat(),
    )
    .await;
    assert_eq!(ok(o), "", "nothing on this channel");
    let saved: u64 = std::fs::read_to_string(&pos)
        .expect("position")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(
        saved, later,
        "the caught-up mark moved the position past the other channel's events"
    );

    std::fs::write(&pos, "garbage").expect("write");
    let o = bc(&server, Some(&t["iran"]), &args).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("does not hold a sequence number"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn watch_prints_one_readable_line_per_event() {
    let server = Server::start().await;
    let (t, channel) = biarritz(&server).await;
    let m = json_one(
        bc(
            &server,
            Some(&t["iran"]),
            &[
                "send",
                &channel,
                "--subject",
                "Talks in Biarritz",
                "-o",
                "json",
            ],
        )
        .await,
    );
    let id = m["id"].as_str().expect("id");
    ok(bc(
        &server,
        Some(&t["france"]),
        &["decline", id, "--note", "not now"],
    )
    .await);
    let o = bc(
        &server,
        Some(&t["iran"]),
        &[
            "watch",
            "--from-start",
            "--until-caught-up",
            "--type",
            "sent",
            "--type",
            "MESSAGE_DECLINED",
        ],
    )
    .await;
    let text = ok(o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("iran sent \"Talks in Biarritz\" to united-states via france, japan"),
        "{text}"
    );
    assert!(
        lines[1].contains("france declined to carry \"Talks in Biarritz\": not now"),
        "{text}"
    );
    assert!(
        lines[1]
            .trim_start()
            .starts_with(|c: char| c.is_ascii_digit()),
        "the sequence first: {text}"
    );
    // Beyond the head: refused, not waited on.
    refused(
        bc(&server, Some(&t["iran"]), &["watch", "--after", "9999"]).await,
        "OUT_OF_RANGE",
        "START_AFTER_BEYOND_HEAD",
    );
}

#[tokio::test]
async fn reject_and_withdraw_end_a_message_for_a_reason() {
    let server = Server::start().await;
    let (t, channel) = biarritz(&server).await;
    let tok = |p: &str| Some(t[p].clone());
    let send = async |subject: &str| {
        let m = json_one(
            bc(
                &server,
                tok("iran").as_deref(),
                &["send", &channel, "--subject", subject, "-o", "json"],
            )
            .await,
        );
        m["id"].as_str().expect("id").to_owned()
    };
    let a = send("to be withdrawn").await;
    let w = json_one(
        bc(
            &server,
            tok("iran").as_deref(),
            &[
                "withdraw",
                &a,
                "--note",
                "overtaken by events",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(w["state"], "WITHDRAWN");
    assert_eq!(w["hops"][0]["state"], "CANCELLED");
    refused(
        bc(&server, tok("france").as_deref(), &["accept", &a]).await,
        "FAILED_PRECONDITION",
        "MESSAGE_NOT_IN_TRANSIT",
    );

    let b = send("to be rejected").await;
    for m in ["france", "japan"] {
        ok(bc(&server, tok(m).as_deref(), &["forward", &b]).await);
    }
    refused(
        bc(&server, tok("united-states").as_deref(), &["reject", &b]).await,
        "INVALID_ARGUMENT",
        "INVALID_FIELD",
    );
    let r = json_one(
        bc(
            &server,
            tok("united-states").as_deref(),
            &["reject", &b, "--note", "unacceptable terms", "-o", "json"],
        )
        .await,
    );
    assert_eq!(r["state"], "REJECTED");
    let line = ok(bc(
        &server,
        tok("iran").as_deref(),
        &["history", "--message", &b],
    )
    .await);
    assert!(
        line.contains("united-states rejected \"to be rejected\": unacceptable terms"),
        "{line}"
    );
    let ids = ok(bc(
        &server,
        tok("iran").as_deref(),
        &["messages", "--state", "WITHDRAWN", "-o", "id"],
    )
    .await);
    assert_eq!(ids.trim(), a);
}

#[tokio::test]
async fn serve_runs_the_server_and_wants_its_options_after_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(&data)
        .env_remove("BACKCHANNEL_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(l)) = lines.next_line().await {
            let v: Value = serde_json::from_str(&l).unwrap_or_default();
            if v["message"] == "serving" {
                return v["addr"].as_str().unwrap_or_default().to_owned();
            }
        }
        panic!("serve ended without serving");
    })
    .await
    .expect("serving in time");
    let token = std::fs::read_to_string(data.join("admin.token")).expect("admin token");
    let out = ok(bc_at(&addr, Some(token.trim()), &["status"]).await);
    assert!(out.contains("you are   the admin"), "{out}");
    child.kill().await.expect("stop");

    // Before `serve`, a server option would be ignored: refused instead.
    let o = bc_at(&addr, None, &["--listen", "127.0.0.1:0", "serve"]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("put the server options after it"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn a_token_flag_wins_over_the_environment_and_bad_inputs_are_refused_before_any_call() {
    let server = Server::start().await;
    let (t, channel) = biarritz(&server).await;
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("iran.token");
    std::fs::write(&file, &t["iran"]).expect("write");
    let file_s = file.to_str().expect("path");

    // The admin's token in the environment, iran's file on the command line.
    let o = command(
        &addr,
        Some(ADMIN_TOKEN),
        &["--token-file", file_s, "status"],
    )
    .output()
    .await
    .expect("run");
    assert!(ok(o).contains("you are   iran"));
    // An empty variable is unset: the file variable is used.
    let o = command(&addr, None, &["status"])
        .env("BACKCHANNEL_TOKEN", "")
        .env("BACKCHANNEL_TOKEN_FILE", file_s)
        .output()
        .await
        .expect("run");
    assert!(ok(o).contains("you are   iran"));
    // A token file that is not text.
    let bad = dir.path().join("bad.token");
    std::fs::write(&bad, b"\xff\xfeabc").expect("write");
    let o = bc(
        &server,
        None,
        &["--token-file", bad.to_str().expect("path"), "status"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is not text"), "{}", stderr(&o));
    // A wrong token: one line, no hint about giving one.
    let o = bc(&server, Some("bc_wrong"), &["status"]).await;
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));

    // `-o id` of a new token is the secret itself.
    let secret = ok(bc(
        &server,
        Some(ADMIN_TOKEN),
        &["token", "issue", "france", "-o", "id"],
    )
    .await);
    assert!(secret.trim().starts_with("bc_"), "{secret}");
    assert!(ok(bc(&server, Some(secret.trim()), &["status"]).await).contains("you are   france"));

    // Durations too large for a time, a limit of 0, a server option given
    // to a client: usage errors (exit 2), never a panic.
    for args in [
        vec![
            "send",
            channel.as_str(),
            "--subject",
            "s",
            "--respond-by=+500000000000y",
        ],
        vec!["token", "issue", "iran", "--expires", "500000000000y"],
        vec!["messages", "--limit", "0"],
        vec!["--listen", "127.0.0.1:0", "status"],
    ] {
        let o = bc(&server, Some(ADMIN_TOKEN), &args).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    // A bare duration is a deadline from now.
    let m = json_one(
        bc(
            &server,
            Some(&t["iran"]),
            &[
                "send",
                &channel,
                "--subject",
                "s",
                "--respond-by",
                "2h",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert!(m["respondBy"].is_string(), "{m}");

    // A position file that cannot be written: refused before anything is printed.
    let o = bc(
        &server,
        Some(&t["iran"]),
        &[
            "watch",
            "--from-start",
            "--position-file",
            "/nonexistent/dir/pos",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "", "nothing printed");
    assert!(
        stderr(&o).contains("cannot write the position file"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn watch_gives_up_on_a_subscription_limit_instead_of_retrying() {
    let server = Server::start_with(Options {
        args: vec!["--max-subscriptions-per-party".into(), "1".into()],
        ..Default::default()
    })
    .await;
    let (t, channel) = biarritz(&server).await;
    let addr = server.addr.to_string();
    let mut first = Watch::start(&addr, &t["iran"], &["watch", "--from-start", "-o", "json"]);
    let head = send(&server, &t["iran"], &channel, 1).await;
    first.until(head).await;
    let o = bc(&server, Some(&t["iran"]), &["watch"]).await;
    refused(o, "RESOURCE_EXHAUSTED", "TOO_MANY_SUBSCRIPTIONS");
    first.signal(libc::SIGTERM);
    let _ = first.child.wait().await;
}
