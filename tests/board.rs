//! The board (DESIGN §9) in a real browser: the binary serves `web/` on its
//! gRPC port, and `tests/board/board.mjs` drives headless Chromium through
//! it with Playwright while this test, as the other parties, moves
//! messages over gRPC. The script asks for each move on its stdout
//! (`NEED …`) and waits for `DONE …` on its stdin; a check that fails makes
//! it exit non-zero. Screenshots of every view go to
//! `<target>/board-screenshots/`.
//!
//! It needs Chromium at `/usr/bin/chromium` (or `BOARD_CHROMIUM`), Node.js
//! and `tests/board/node_modules` (`npm ci --prefix tests/board`);
//! `./scripts/test.sh` installs all three. Without them a plain `cargo
//! test` skips it, saying how to get them; the script (which sets
//! `BACKCHANNEL_REQUIRE_TOOLS`) fails it.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use backchannel::pb;
use common::board::{chromium, have_browser, screenshots_dir};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The Playwright script.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/board/board.mjs");

/// How long the whole browser session may take.
const SESSION: Duration = Duration::from_secs(180);

/// `minutes` before `base`, as a reported occur time.
fn before(base: SystemTime, minutes: u64) -> Option<prost_types::Timestamp> {
    Some((base - Duration::from_secs(60 * minutes)).into())
}

/// The parties' clients, made again after each restart.
struct Parties {
    iran: Clients,
    us: Clients,
    france: Clients,
    japan: Clients,
}

impl Parties {
    async fn new(server: &Server, w: &World) -> Parties {
        Parties {
            iran: server.clients(&w.tokens["iran"]).await,
            us: server.clients(&w.tokens["united-states"]).await,
            france: server.clients(&w.tokens["france"]).await,
            japan: server.clients(&w.tokens["japan"]).await,
        }
    }

    fn by_name(&mut self, name: &str) -> &mut Clients {
        match name {
            "iran" => &mut self.iran,
            "united-states" => &mut self.us,
            "france" => &mut self.france,
            "japan" => &mut self.japan,
            other => panic!("the script named an unknown party {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_board_follows_a_mediated_exchange_live_in_a_browser() {
    if !have_browser() {
        return;
    }
    let mut server = Server::start().await;
    let mut w = world(&server).await;
    let aside = aside_channel(&mut w).await;
    let mut p = Parties::new(&server, &w).await;
    // Every occur time the script checks durations against is back-dated
    // from this instant: the message was sent ten minutes ago.
    let base = SystemTime::now();

    let mut node = tokio::process::Command::new("node")
        .arg(SCRIPT)
        .current_dir(Path::new(SCRIPT).parent().expect("tests/board"))
        .env("BOARD_URL", format!("http://{}/", server.addr))
        .env("BOARD_TOKEN", &w.tokens["iran"])
        .env("BOARD_CHANNEL", &w.channel.id)
        .env("BOARD_ASIDE", &aside.id)
        .env("BOARD_SCREENSHOTS", screenshots_dir())
        .env("BOARD_CHROMIUM", chromium())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run node");
    let mut to_node = node.stdin.take().expect("stdin");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();

    let session = async move {
        while let Some(line) = lines.next_line().await.expect("read the script") {
            eprintln!("board.mjs: {line}");
            let Some(need) = line.strip_prefix("NEED ") else {
                continue;
            };
            let words: Vec<&str> = need.split(' ').collect();
            let answer = match words.as_slice() {
                ["send"] => {
                    let mut req = send_req(&w.channel.id, "Meet at Biarritz?");
                    req.body = "Tehran would receive a visitor.".into();
                    req.occur_time = before(base, 10);
                    req.respond_by = Some((SystemTime::now() + Duration::from_secs(3600)).into());
                    let m = p.iran.messages.send_message(req).await.expect("send");
                    m.into_inner().id
                }
                ["move", party, action, id, minutes] => {
                    let minutes: u64 = minutes.parse().expect("minutes");
                    let c = p.by_name(party);
                    let occur_time = before(base, minutes);
                    match *action {
                        "accept" => {
                            let mut req = move_req!(AcceptMessageRequest, id);
                            req.occur_time = occur_time;
                            c.messages.accept_message(req).await.map(drop)
                        }
                        "forward" => {
                            let mut req = move_req!(ForwardMessageRequest, id);
                            req.occur_time = occur_time;
                            c.messages.forward_message(req).await.map(drop)
                        }
                        other => panic!("the script asked for an unknown move {other:?}"),
                    }
                    .unwrap_or_else(|e| panic!("{party} {action} {id}: {e}"));
                    String::new()
                }
                ["reply", id] => {
                    let mut req = send_req("", "Not before sanctions are lifted");
                    req.in_reply_to = id.to_string();
                    let m = p.us.messages.send_message(req).await.expect("reply");
                    m.into_inner().id
                }
                ["restart-and-write"] => {
                    server = server.restart_on_same_address().await;
                    p = Parties::new(&server, &w).await;
                    write(&mut p, &w, &aside).await;
                    String::new()
                }
                ["write"] => {
                    write(&mut p, &w, &aside).await;
                    String::new()
                }
                ["events"] => {
                    let events = all_events(&mut p.iran, pb::ListEventsRequest::default()).await;
                    let seqs: Vec<String> = events.iter().map(|e| e.sequence.to_string()).collect();
                    seqs.join(",")
                }
                ["stats"] => {
                    let s = p
                        .iran
                        .messages
                        .get_relay_stats(pb::GetRelayStatsRequest::default())
                        .await
                        .unwrap_or_else(|s| panic!("relay stats: {s}"))
                        .into_inner();
                    let carried = s
                        .mediators
                        .iter()
                        .find(|m| m.party_id == "france")
                        .map_or(0, |m| m.carried);
                    serde_json::json!({ "franceCarried": carried }).to_string()
                }
                ["checkpoint"] => {
                    let cp = p
                        .iran
                        .audit
                        .get_checkpoint(pb::GetCheckpointRequest::default())
                        .await
                        .expect("checkpoint");
                    cp.into_inner().tree_size.to_string()
                }
                other => panic!("the script asked for something unknown: {other:?}"),
            };
            to_node
                .write_all(format!("DONE {answer}\n").as_bytes())
                .await
                .expect("answer the script");
        }
    };
    tokio::time::timeout(SESSION, session)
        .await
        .expect("the browser session ended within its deadline");
    let status = tokio::time::timeout(DEADLINE, node.wait())
        .await
        .expect("node exited")
        .expect("wait for node");
    assert!(
        status.success(),
        "board.mjs failed ({status}); see its output above"
    );
}

/// Events the page must show (a send and an accept on iran's channel) and
/// one it must not (a send on a channel iran is not on).
async fn write(p: &mut Parties, w: &World, aside: &pb::Channel) {
    let m = p
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "While you were away"))
        .await
        .expect("send")
        .into_inner();
    p.france
        .messages
        .accept_message(move_req!(AcceptMessageRequest, m.id))
        .await
        .expect("accept");
    p.france
        .messages
        .send_message(send_req(&aside.id, "Not for Tehran"))
        .await
        .expect("send aside");
}
