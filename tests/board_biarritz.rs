//! The board after `examples/biarritz.sh`, in a real browser: a fresh
//! server, the script telling the August 2019 story against it with the
//! command line, then `tests/board/biarritz.mjs` signing in as the admin in
//! headless Chromium and checking that every view shows that story: both
//! channels on their routes, every event in the feed, a message's timeline,
//! the statistics `GetRelayStats` gives over gRPC, and the checkpoint
//! verified. Screenshots of each view go to
//! `<target>/board-screenshots/biarritz-*.png`; with
//! `BACKCHANNEL_UPDATE_SCREENSHOT=1` the timeline of Zarif's overture (its
//! thread the whole exchange) is also written to `docs/board.png`, the
//! README's picture.
//!
//! It needs what `tests/board.rs` needs (Chromium, Node.js,
//! `tests/board/node_modules`): without them a plain `cargo test` skips it,
//! and with `BACKCHANNEL_REQUIRE_TOOLS` set it fails.

mod common;

use std::process::Stdio;
use std::time::Duration;

use backchannel::pb;
use common::board::{SCRIPTS, chromium, have_browser, screenshots_dir};
use common::*;
use serde_json::{Value, json};

/// The Playwright script.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/board/biarritz.mjs");

/// Where `BACKCHANNEL_UPDATE_SCREENSHOT=1` writes the README's picture.
const README_SHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/board.png");

/// How long the script and then the browser session may each take.
const SESSION: Duration = Duration::from_secs(150);

/// Runs `examples/biarritz.sh` against `server`, as `tests/biarritz.rs`
/// does.
async fn tell_the_story(server: &Server) {
    let mut cmd = story::biarritz_script(&server.addr.to_string(), Some(ADMIN_TOKEN));
    let out = tokio::time::timeout(SESSION, cmd.output())
        .await
        .expect("the script finished in time")
        .expect("run bash");
    assert!(
        out.status.success(),
        "examples/biarritz.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the record holds after the story, as the admin reads it over gRPC:
/// what the board must show.
async fn the_record(admin: &mut Clients) -> Value {
    let channels = admin
        .channels
        .list_channels(pb::ListChannelsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list channels")
        .into_inner()
        .channels;
    let channels: Vec<Value> = channels
        .iter()
        .map(|c| {
            let route: Vec<&str> = c
                .parties
                .first()
                .into_iter()
                .chain(&c.mediators)
                .chain(c.parties.get(1))
                .map(String::as_str)
                .collect();
            json!({ "id": c.id, "name": c.display_name, "route": route })
        })
        .collect();

    let messages = admin
        .messages
        .list_messages(pb::ListMessagesRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list messages")
        .into_inner()
        .messages;
    let by_subject = |prefix: &str| -> String {
        messages
            .iter()
            .find(|m| m.subject.starts_with(prefix))
            .unwrap_or_else(|| panic!("no message {prefix:?} in the record"))
            .id
            .clone()
    };

    let events: Vec<Value> = all_events(admin, pb::ListEventsRequest::default())
        .await
        .iter()
        .map(|e| {
            json!({
                "sequence": e.sequence,
                "type": e.r#type().as_str_name(),
                "messageId": e.message_id,
            })
        })
        .collect();

    let stats = admin
        .messages
        .get_relay_stats(pb::GetRelayStatsRequest::default())
        .await
        .expect("relay stats")
        .into_inner();
    let mediators: serde_json::Map<String, Value> = stats
        .mediators
        .iter()
        .map(|m| {
            let counts = json!({
                "carried": m.carried, "declined": m.declined,
                "holding": m.holding, "waiting": m.waiting,
            });
            (m.party_id.clone(), counts)
        })
        .collect();
    let principals: serde_json::Map<String, Value> = stats
        .principals
        .iter()
        .map(|p| {
            let counts = json!({
                "sent": p.sent, "received": p.received,
                "answered": p.answered, "rejected": p.rejected,
            });
            (p.party_id.clone(), counts)
        })
        .collect();
    let deadlines = stats.deadlines.unwrap_or_default();

    let tree_size = admin
        .audit
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await
        .expect("checkpoint")
        .into_inner()
        .tree_size;

    json!({
        "channels": channels,
        "events": events,
        "messages": {
            "overture": by_subject("Overture from Foreign Minister Zarif"),
            "answer": by_subject("A meeting is possible"),
            "preconditions": by_subject("Preconditions:"),
            "oil": by_subject("Oil sales"),
            "unga": by_subject("A presidential meeting"),
        },
        "stats": {
            "messages": stats.messages,
            "mediators": mediators,
            "principals": principals,
            "deadlines": json!({
                "open": deadlines.open, "met": deadlines.met, "expired": deadlines.expired,
            }),
        },
        "treeSize": tree_size.to_string(),
    })
}

#[tokio::test]
async fn after_the_biarritz_story_the_board_shows_all_of_it() {
    if !have_browser() {
        return;
    }
    let server = Server::start().await;
    tell_the_story(&server).await;
    let mut admin = server.admin().await;
    let record = the_record(&mut admin).await;

    // The story as the record keeps it, before the browser is asked to
    // show it: two channels, twenty events, both mediators at work.
    assert_eq!(record["channels"].as_array().map(Vec::len), Some(2));
    assert_eq!(record["events"].as_array().map(Vec::len), Some(20));
    for (party, key, want) in [("france", "carried", 3), ("japan", "declined", 1)] {
        assert_eq!(
            record["stats"]["mediators"][party][key], want,
            "{party} {key}: {record}"
        );
    }

    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(SCRIPT)
        .current_dir(SCRIPTS)
        .env("BOARD_URL", format!("http://{}/", server.addr))
        .env("BOARD_TOKEN", ADMIN_TOKEN)
        .env("BOARD_STORY", record.to_string())
        .env("BOARD_SCREENSHOTS", screenshots_dir())
        .env("BOARD_CHROMIUM", chromium())
        .env_remove("BOARD_README_SHOT")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let update = std::env::var("BACKCHANNEL_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1");
    if update {
        cmd.env("BOARD_README_SHOT", README_SHOT);
    }
    let status = tokio::time::timeout(SESSION, cmd.status())
        .await
        .expect("the browser session ended within its deadline")
        .expect("run node");
    assert!(
        status.success(),
        "biarritz.mjs failed ({status}); see its output above"
    );
    if update {
        let size = std::fs::metadata(README_SHOT)
            .expect("docs/board.png written")
            .len();
        assert!(
            size <= 150 * 1024,
            "docs/board.png is {size} bytes: keep the README's picture small"
        );
    }
}
