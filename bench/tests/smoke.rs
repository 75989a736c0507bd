//! The benchmark's smoke test: `backchannel-bench --quick` against the
//! debug `backchannel` binary. It asserts that every scenario ran, that no
//! call failed and that no event was lost — never a speed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backchannel_testkit::{admin_database_url, backend_is_postgres};

/// The server binary: `BACKCHANNEL_BIN`, or the `backchannel` the same
/// build made beside the bench (`cargo test --workspace` builds both).
fn server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BACKCHANNEL_BIN") {
        return bin.into();
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_backchannel-bench")).with_file_name("backchannel");
    assert!(
        bin.is_file(),
        "{} is not built: run the suite with `cargo test --workspace`, or `cargo build` first, \
         or set BACKCHANNEL_BIN to the server binary",
        bin.display()
    );
    bin
}

/// Longer than a quick run can take on a debug build, even on a busy machine.
const LIMIT: Duration = Duration::from_secs(240);

#[test]
fn quick_bench_runs_every_scenario_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json_path = dir.path().join("bench.json");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backchannel-bench"));
    cmd.arg("--quick")
        .arg("--server-bin")
        .arg(server_bin())
        .arg("--json")
        .arg(&json_path)
        // A debug server writes slowly; this is enough to exercise catchup.
        .arg("--catchup-events")
        .arg("5000")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    if backend_is_postgres() {
        cmd.arg("--database-url").arg(admin_database_url());
    }
    let mut child = cmd.spawn().expect("start backchannel-bench");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            // The bench's server dies with it (PR_SET_PDEATHSIG).
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    let status = status.unwrap_or_else(|| panic!("the bench ran over {LIMIT:?}\n{output}"));
    assert!(status.success(), "the bench failed: {status}\n{output}");

    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("the JSON report"))
            .expect("the JSON report parses");
    assert_eq!(doc["ok"], true, "{output}");
    assert_eq!(doc["lost"], 0, "{output}");
    assert_eq!(doc["errors"], 0, "{output}");
    assert!(doc["cores"].as_u64().unwrap_or(0) >= 1);
    assert!(doc["git_commit"].is_string());
    let backend = if backend_is_postgres() {
        "postgres"
    } else {
        "embedded"
    };
    assert_eq!(doc["backend"], backend);
    let s = &doc["scenarios"];
    for name in [
        "baseline",
        "send",
        "lifecycle",
        "fanout",
        "catchup",
        "scale",
        "sustained",
        "audit",
        "stats",
        "abuse",
    ] {
        assert!(!s[name].is_null(), "scenario {name} missing: {doc:#}");
    }
    // Only what does not depend on the machine's speed: a busy debug
    // server may fit no call into a short window, but none may fail.
    for name in ["baseline", "send", "send_request_id"] {
        let levels = s[name].as_array().expect("levels");
        assert_eq!(levels.len(), 4, "{name}: {doc:#}");
        for l in levels {
            assert_eq!(l["errors"], 0, "{name}: {l}");
        }
    }
    assert_eq!(s["lifecycle"]["errors"], 0, "{doc:#}");
    let fanout = s["fanout"].as_array().expect("fanout points");
    assert_eq!(fanout.len(), 3, "{doc:#}");
    for p in fanout {
        assert_eq!(p["lost"], 0, "fanout point lost events: {p:#}");
        assert_eq!(p["unexpected"], 0, "{p:#}");
        assert_eq!(p["out_of_order"], 0, "{p:#}");
        assert!(p["expected_events"].as_u64().unwrap_or(0) > 0, "{p:#}");
    }
    assert_eq!(s["catchup"]["lost"], 0, "{doc:#}");
    assert!(
        s["catchup"]["events"].as_u64().unwrap_or(0) >= 5000,
        "{doc:#}"
    );
    assert_eq!(
        s["scale"]["points"].as_array().map(Vec::len),
        Some(2),
        "{doc:#}"
    );
    // --quick: 3 s of sends in slices of 1 s, on a store of at least 2,000.
    let sustained = &s["sustained"];
    assert_eq!(sustained["errors"], 0, "{sustained:#}");
    assert_eq!(sustained["baseline"]["errors"], 0, "{sustained:#}");
    assert_eq!(sustained["request_id"], "uuid_v4", "{sustained:#}");
    assert_eq!(
        sustained["slices"].as_array().map(Vec::len),
        Some(3),
        "{sustained:#}"
    );
    assert!(
        sustained["messages_at_start"].as_u64().unwrap_or(0) >= 2000,
        "{sustained:#}"
    );
    assert!(
        sustained["disk"]["bytes_per_message"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{sustained:#}"
    );
    assert_eq!(
        sustained["wal_bound_bytes"],
        64 * 1024 * 1024,
        "{sustained:#}"
    );
    // --quick: the proofs at 1 and 16 in flight on a log of at least
    // 5,000 events, one of each checked as a client would.
    let audit = &s["audit"];
    assert_eq!(audit["checked"]["ok"], true, "{audit:#}");
    assert!(audit["events"].as_u64().unwrap_or(0) >= 5000, "{audit:#}");
    let points = audit["points"].as_array().expect("audit points");
    assert_eq!(points.len(), 8, "{audit:#}");
    for p in points {
        assert_eq!(p["errors"], 0, "{p:#}");
    }
    // --quick: every question over at least the 5,000 messages asked for.
    let stats = &s["stats"];
    assert!(stats["messages"].as_u64().unwrap_or(0) >= 5000, "{stats:#}");
    assert_eq!(stats["relayed"], 200, "{stats:#}");
    for q in [
        "admin, all",
        "admin, one channel",
        "admin, relayed window",
        "mediator, all",
    ] {
        let n = stats["questions"][q]["latency"]["count"].as_u64();
        assert_eq!(n, Some(10), "{q}: {stats:#}");
    }
    if backend_is_postgres() {
        assert!(sustained["wal_peak_bytes"].is_null(), "{sustained:#}");
    } else {
        assert!(sustained["wal_peak_bytes"].is_u64(), "{sustained:#}");
        assert!(sustained["wal_bytes_after_stop"].is_u64(), "{sustained:#}");
    }
}
