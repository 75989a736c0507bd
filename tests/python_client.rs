//! `examples/python/backchannel_client.py`, the grpcio client, against the
//! real binary: it relays a message, reads a refusal's ErrorInfo and acts
//! on it, and its watcher resumes across a server restart with every
//! event once. The interpreter is `BACKCHANNEL_PYTHON` (the test script's
//! virtual environment, with grpcio).

mod common;

use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/python/backchannel_client.py"
);

/// The interpreter with grpcio, if there is one.
fn python() -> Option<String> {
    let python = std::env::var("BACKCHANNEL_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_grpc = std::process::Command::new(&python)
        .args(["-c", "import grpc, grpc_tools, grpc_status"])
        .output()
        .is_ok_and(|o| o.status.success());
    backchannel_testkit::tool_available(
        "grpcio (Python)",
        has_grpc,
        "run ./scripts/test.sh, which installs it into target/tools/python-venv, or set BACKCHANNEL_PYTHON",
    )
    .then_some(python)
}

fn client(python: &str, server: &Server, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(SCRIPT)
        .args(args)
        .env("BACKCHANNEL_ADDR", server.addr.to_string())
        .env("BACKCHANNEL_TOKEN", ADMIN_TOKEN)
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn the_python_client_relays_a_message_and_acts_on_error_info() {
    let Some(python) = python() else { return };
    let server = Server::start().await;
    let out = tokio::time::timeout(DEADLINE * 3, client(&python, &server, &["demo"]).output())
        .await
        .expect("the demo finished in time")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let events: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with('#'))
        .collect();
    assert_eq!(
        events,
        [
            "#2 MESSAGE_SENT by iran: Hello from Python",
            "#3 MESSAGE_ACCEPTED by france: Hello from Python",
            "#4 MESSAGE_DELIVERED by france: Hello from Python",
            "#5 MESSAGE_ACKNOWLEDGED by united-states: Hello from Python",
        ],
        "the watcher, from the head ListEvents gave:\n{stdout}"
    );
    assert!(
        lines.contains(&"refused: ABORTED VERSION_MISMATCH, current_version=2"),
        "{stdout}"
    );
    assert!(
        lines.contains(&"refused: PERMISSION_DENIED NOT_A_MEDIATOR"),
        "{stdout}"
    );
    assert!(
        lines.last().is_some_and(|l| l.ends_with("is ACKNOWLEDGED")),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_python_watcher_resumes_across_a_server_restart() {
    let Some(python) = python() else { return };
    let server = Server::start().await;
    let mut w = world(&server).await;
    let mut cmd = client(&python, &server, &["watch", "--after", "0"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("start the watcher");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let mut read_until = async |seen: &mut Vec<u64>, n: u64| {
        while seen.last().copied().unwrap_or(0) < n {
            let l = tokio::time::timeout(DEADLINE, lines.next_line())
                .await
                .expect("the watcher printed in time")
                .expect("read")
                .expect("the watcher runs");
            let seq = l
                .strip_prefix('#')
                .and_then(|r| r.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not an event line: {l}"));
            seen.push(seq);
        }
    };
    for i in 0..3 {
        w.iran
            .messages
            .send_message(send_req(&w.channel.id, &format!("before {i}")))
            .await
            .expect("send");
    }
    read_until(&mut seen, 4).await;
    let mut server = server;
    server.kill().await;
    let server = server.restart_on_same_address().await;
    let mut iran = server.clients(&w.tokens["iran"]).await;
    for i in 0..3 {
        iran.messages
            .send_message(send_req(&w.channel.id, &format!("after {i}")))
            .await
            .expect("send");
    }
    read_until(&mut seen, 7).await;
    assert_eq!(
        seen,
        (1..=7).collect::<Vec<u64>>(),
        "every event once, in order"
    );
    child.kill().await.expect("stop the watcher");
}
