//! The README's command-line tour, run as written against a new server
//! (its address and data directory put in place of the README's), with the
//! `backchannel` this build made first on PATH. The grpcurl tour is run by
//! tests/grpcurl.rs.

mod common;

use common::*;

#[tokio::test]
async fn the_command_line_tour_runs_as_written() {
    let server = Server::start_with(Options {
        no_admin_env: true,
        ..Default::default()
    })
    .await;
    let script = readme_tour("cli-tour", &server);
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_backchannel"))
        .parent()
        .expect("the binary's directory")
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Somewhere with no backchannel-data of its own; the token files land there.
    let cwd = tempfile::tempdir().expect("temp dir");
    let out = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(cwd.path())
        .env("PATH", path)
        .env("TZ", "UTC")
        .env_remove("BACKCHANNEL_TOKEN")
        .env_remove("BACKCHANNEL_OUTPUT")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE * 3, out)
        .await
        .expect("the tour finished in time")
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the tour failed:\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );

    // status, as the admin.
    assert!(stdout.contains("you are   the admin"), "{stdout}");
    // The United States' audit of what it may see: the channel's five events.
    assert!(stdout.contains("pinned on first use"), "{stdout}");
    assert!(stdout.contains("verified     5 events"), "{stdout}");
    assert!(stdout.contains("audit: OK"), "{stdout}");
    assert!(cwd.path().join("us.audit").exists());
    // The tokens went into files, one line each.
    for f in ["iran.token", "us.token", "france.token"] {
        let t = std::fs::read_to_string(cwd.path().join(f)).expect("token file");
        assert!(t.starts_with("bc_") && t.lines().count() == 1, "{f}: {t:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cwd.path().join(f))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
    }
    assert!(
        stdout.contains("route     iran → france → united-states"),
        "{stdout}"
    );
    // show: delivered, acknowledged, france's hop with its duration.
    assert!(
        stdout.contains("state       ACKNOWLEDGED with united-states"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("1    france    FORWARDED")),
        "{stdout}"
    );
    // history: the five events, in order.
    let history: Vec<&str> = stdout
        .lines()
        // "   SEQ  YYYY-MM-DD HH:MM:SS  sentence", not show's timeline of "it".
        .filter(|l| {
            let mut w = l.split_whitespace();
            w.next().is_some_and(|s| s.parse::<u64>().is_ok())
                && w.next()
                    .is_some_and(|d| d.len() == 10 && d.as_bytes()[4] == b'-')
        })
        .filter(|l| !l.contains(" it"))
        .collect();
    let want = [
        "admin opened the channel \"The Élysée channel\": iran → france → united-states",
        "iran sent \"Talks\" to united-states via france",
        "france accepted \"Talks\": received at Biarritz",
        "france delivered \"Talks\" to united-states",
        "united-states acknowledged \"Talks\"",
    ];
    assert_eq!(history.len(), want.len(), "{stdout}");
    for (got, want) in history.iter().zip(want) {
        assert!(got.contains(want), "{got:?} should say {want:?}:\n{stdout}");
    }
}
