//! `examples/biarritz.sh` end to end: real grpcurl against the real binary,
//! with its subscriber (started at `start_after=0`) printing every event.

mod common;

use common::*;

#[tokio::test]
async fn the_biarritz_scenario_plays_out_and_the_subscriber_prints_every_step_in_order() {
    // The example needs grpcurl and python3.
    if !backchannel_testkit::tool_available(
        "grpcurl",
        which("grpcurl"),
        "run ./scripts/test.sh, which installs it, or put grpcurl on PATH",
    ) || !backchannel_testkit::tool_available("python3", which("python3"), "install Python 3")
    {
        return;
    }
    let server = Server::start().await;
    let out = tokio::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/biarritz.sh"))
        .env("BACKCHANNEL_ADDR", server.addr.to_string())
        .env("BACKCHANNEL_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("DEADLINE_SECONDS", "3")
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), out)
        .await
        .expect("the script finished within two minutes")
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "script failed:\n{stdout}\n{stderr}");

    // The subscriber's lines, "#N date TYPE by actor subject -> STATE".
    let events: Vec<(u64, &str, &str)> = stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let seq = w.next()?.strip_prefix('#')?.parse().ok()?;
            let _date = w.next()?;
            let kind = w.next()?;
            let _by = w.next()?;
            Some((seq, kind, w.next()?))
        })
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{stdout}"
    );
    // The expiry is the server's: it happens when the deadline passes,
    // which on a slow machine can be before the script's last steps (which
    // concern other messages). So its place is asserted by what it depends
    // on: after the preconditions were delivered, exactly once. Everything
    // else is the script's own order.
    let kinds: Vec<(&str, &str)> = events.iter().map(|e| (e.1, e.2)).collect();
    let expired: Vec<usize> = kinds
        .iter()
        .enumerate()
        .filter(|(_, k)| k.0 == "MESSAGE_EXPIRED")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(expired.len(), 1, "one expiry: {stdout}");
    assert_eq!(kinds[expired[0]].1, "system", "{stdout}");
    // Index 13: the preconditions' MESSAGE_DELIVERED.
    assert!(expired[0] > 13, "the expiry follows the delivery: {stdout}");
    let kinds: Vec<(&str, &str)> = kinds
        .into_iter()
        .filter(|k| k.0 != "MESSAGE_EXPIRED")
        .collect();
    let want = [
        ("CHANNEL_OPENED", "admin"),
        ("CHANNEL_OPENED", "admin"),
        ("MESSAGE_SENT", "iran"),
        ("MESSAGE_ACCEPTED", "france"),
        ("MESSAGE_DELIVERED", "france"),
        ("MESSAGE_ACKNOWLEDGED", "united-states"),
        ("MESSAGE_SENT", "united-states"),
        ("MESSAGE_ANSWERED", "united-states"),
        ("MESSAGE_DELIVERED", "france"),
        ("MESSAGE_ACKNOWLEDGED", "iran"),
        ("MESSAGE_SENT", "iran"),
        ("MESSAGE_ANSWERED", "iran"),
        ("MESSAGE_ACCEPTED", "france"),
        ("MESSAGE_DELIVERED", "france"),
        ("MESSAGE_SENT", "iran"),
        ("MESSAGE_DECLINED", "japan"),
        ("MESSAGE_SENT", "iran"),
        ("MESSAGE_ACCEPTED", "france"),
        ("MESSAGE_WITHDRAWN", "iran"),
    ];
    assert_eq!(kinds, want, "{stdout}");
    // Each step carries its real 2019 date; the expiry happens now.
    assert!(stdout.contains("2019-08-25  MESSAGE_SENT"), "{stdout}");
    assert!(stdout.contains("2019-08-29  MESSAGE_WITHDRAWN"), "{stdout}");
    assert!(stdout.contains("state: EXPIRED"), "{stdout}");
}

fn which(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}
