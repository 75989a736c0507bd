//! `examples/biarritz.sh`, as the tests run it (`tests/biarritz.rs`, and
//! the board's `tests/board_biarritz.rs`).

/// The script against `addr`, with the admin `token` (or none), this
/// checkout's binary, a 3-second deadline and times in UTC.
pub fn biarritz_script(addr: &str, token: Option<&str>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/biarritz.sh"))
        .env("BACKCHANNEL_ADDR", addr)
        .env("BACKCHANNEL_BIN", env!("CARGO_BIN_EXE_backchannel"))
        .env("DEADLINE_SECONDS", "3")
        .env("TZ", "UTC")
        .env_remove("BACKCHANNEL_TOKEN_FILE")
        .env_remove("BACKCHANNEL_DATA_DIR")
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true);
    match token {
        Some(t) => cmd.env("BACKCHANNEL_TOKEN", t),
        None => cmd.env_remove("BACKCHANNEL_TOKEN"),
    };
    cmd
}
