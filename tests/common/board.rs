//! What the browser tests (`tests/board.rs`, `tests/board_biarritz.rs`)
//! share: where Chromium is, whether the tools are here, and where the
//! screenshots go.

use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The directory of the Playwright scripts.
pub const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/board");

/// Chromium: `BOARD_CHROMIUM`, else Debian's `/usr/bin/chromium`.
pub fn chromium() -> PathBuf {
    std::env::var_os("BOARD_CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

/// Whether Chromium, Node.js and the scripts' packages are here (with
/// `BACKCHANNEL_REQUIRE_TOOLS` set, their absence fails the test).
pub fn have_browser() -> bool {
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    let modules = Path::new(SCRIPTS)
        .join("node_modules/playwright-core")
        .is_dir();
    backchannel_testkit::tool_available(
        "Chromium with Node.js and playwright-core",
        node && modules && chromium().is_file(),
        "this test needs /usr/bin/chromium (apt-get install chromium, or set BOARD_CHROMIUM), \
         node (apt-get install nodejs npm) and `npm ci --prefix tests/board`; \
         ./scripts/test.sh does all three",
    )
}

/// `<target>/board-screenshots`, whichever target directory this test was
/// built in.
pub fn screenshots_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("board-screenshots")
}
