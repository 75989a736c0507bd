//! `backchannel audit` (DESIGN §7, §8) as a party runs it, against a real
//! server on both backends: an untouched record checks out (exit 0), and
//! each way of tampering with the store behind the server's back — a byte
//! changed, an event deleted, two events swapped, a channel's history
//! rewritten with the tree recomputed to match, the signing key replaced —
//! is found (exit 3, one line naming the kind and where) by an audit that
//! kept its state from before.

mod common;

use std::path::PathBuf;
use std::process::{Output, Stdio};

use backchannel::audit::note::NoteSigner;
use backchannel::pb;
use common::*;
use prost::Message;
use serde_json::Value;
use sha2::{Digest, Sha256};

async fn bc(server: &Server, token: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_backchannel"));
    cmd.args(args)
        .env("BACKCHANNEL_ADDR", server.addr.to_string())
        .env("BACKCHANNEL_TOKEN", token)
        .env_remove("BACKCHANNEL_TOKEN_FILE")
        .env_remove("BACKCHANNEL_OUTPUT")
        .env_remove("BACKCHANNEL_VERIFIER_KEY")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("the command did not finish in time")
        .expect("run backchannel")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An audit that must pass; its stdout.
#[track_caller]
fn passed(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.ends_with("audit: OK\n"), "{out}");
    out
}

/// An audit that must find a problem: exit 3 and one stderr line
/// `audit: KIND at …: message`; the line.
#[track_caller]
fn found(o: &Output, kind: &str) -> String {
    assert_eq!(o.status.code(), Some(3), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one verdict line: {err}");
    assert!(
        lines[0].starts_with(&format!("audit: {kind} at ")),
        "want {kind}: {err}"
    );
    lines[0].to_owned()
}

/// A record with two channels (iran is on one only) and some history; the
/// state files of an audit by the admin and by iran, both passed.
struct Fixture {
    server: Server,
    w: World,
    tmp: tempfile::TempDir,
    /// The second channel (france, united-states via japan).
    other: pb::Channel,
    head: u64,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with(Options::default()).await
    }

    async fn with(opts: Options) -> Fixture {
        let server = Server::start_with(opts).await;
        let mut w = world(&server).await;
        let other = aside_channel(&mut w).await;
        for i in 0..6 {
            let m = w
                .iran
                .messages
                .send_message(send_req(&w.channel.id, &format!("proposal {i}")))
                .await
                .expect("send")
                .into_inner();
            w.france
                .messages
                .accept_message(move_req!(AcceptMessageRequest, m.id))
                .await
                .expect("accept");
            w.france
                .messages
                .send_message(send_req(&other.id, &format!("aside {i}")))
                .await
                .expect("send");
        }
        let head = stream::head(&mut w.admin).await;
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture {
            server,
            w,
            tmp,
            other,
            head,
        };
        passed(&fx.audit(ADMIN_TOKEN, "admin", &[]).await);
        passed(&fx.audit(&fx.w.tokens["iran"], "iran", &[]).await);
        fx
    }

    fn state(&self, name: &str) -> PathBuf {
        self.tmp.path().join(format!("{name}.json"))
    }

    async fn audit(&self, token: &str, state: &str, extra: &[&str]) -> Output {
        let state = self.state(state);
        let mut args = vec!["audit", "--state", state.to_str().unwrap()];
        args.extend(extra);
        bc(&self.server, token, &args).await
    }

    /// The events of the whole log (as the admin lists them).
    async fn events(&mut self) -> Vec<pb::Event> {
        all_events(&mut self.w.admin, pb::ListEventsRequest::default()).await
    }

    /// Stops the server, runs `f` on its store, starts it again; `Err`
    /// (the server stopped) if it refuses to start and names the damage:
    /// `damage` (which counts as the tampering found).
    async fn tamper(mut self, damage: &str, f: impl FnOnce(&Store)) -> Result<Fixture, Fixture> {
        self.server.stop().await;
        let store = match self.server.database() {
            None => Store::Sqlite(self.server.data_path().join("backchannel.db")),
            Some(db) => Store::Postgres(db.url.clone()),
        };
        f(&store);
        match self.server.try_restart().await {
            Ok(server) => {
                self.server = server;
                Ok(self)
            }
            Err((server, log)) => {
                self.server = server;
                let stopped = log
                    .iter()
                    .find(|l| l.contains("backchannel stopped"))
                    .unwrap_or_else(|| panic!("no reason to stop: {log:?}"));
                assert!(stopped.contains("is damaged"), "{stopped}");
                assert!(stopped.contains(damage), "want {damage:?}: {stopped}");
                Err(self)
            }
        }
    }
}

/// The store behind a stopped server, as whoever holds its disk sees it.
enum Store {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Store {
    fn exec(&self, sql: &str) {
        match self {
            Store::Sqlite(p) => rusqlite::Connection::open(p)
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Store::Postgres(url) => {
                let sql = sql.to_owned();
                backchannel_testkit::on_server(url, move |c| c.batch_execute(&sql)).unwrap()
            }
        }
    }

    /// An event's stored bytes.
    fn data(&self, seq: u64) -> Vec<u8> {
        match self {
            Store::Sqlite(p) => rusqlite::Connection::open(p)
                .unwrap()
                .query_row(
                    "SELECT data FROM events WHERE seq = ?1",
                    [seq as i64],
                    |r| r.get(0),
                )
                .unwrap(),
            Store::Postgres(url) => backchannel_testkit::on_server(url, move |c| {
                c.query_one("SELECT data FROM events WHERE seq = $1", &[&(seq as i64)])
                    .map(|r| r.get(0))
            })
            .unwrap(),
        }
    }

    /// Sets an event's stored bytes, and its leaf hash too when `rehash`
    /// (as a careful forger would).
    fn set_data(&self, seq: u64, data: Vec<u8>, rehash: bool) {
        let leaf: Vec<u8> = Sha256::new()
            .chain_update([0u8])
            .chain_update(&data)
            .finalize()
            .to_vec();
        match self {
            Store::Sqlite(p) => {
                let c = rusqlite::Connection::open(p).unwrap();
                c.execute(
                    "UPDATE events SET data = ?1 WHERE seq = ?2",
                    rusqlite::params![data, seq as i64],
                )
                .unwrap();
                if rehash {
                    c.execute(
                        "UPDATE events SET leaf_hash = ?1 WHERE seq = ?2",
                        rusqlite::params![leaf, seq as i64],
                    )
                    .unwrap();
                }
            }
            Store::Postgres(url) => {
                backchannel_testkit::on_server(url, move |c| {
                    c.execute(
                        "UPDATE events SET data = $1 WHERE seq = $2",
                        &[&data, &(seq as i64)],
                    )?;
                    if rehash {
                        c.execute(
                            "UPDATE events SET leaf_hash = $1 WHERE seq = $2",
                            &[&leaf, &(seq as i64)],
                        )?;
                    }
                    Ok(())
                })
                .unwrap();
            }
        }
    }

    /// Takes the store back to before its Merkle tree: the server's
    /// migration builds it again at start, from the leaf hashes as they now
    /// are.
    fn drop_tree(&self) {
        match self {
            Store::Sqlite(_) => self.exec("DROP TABLE tree_nodes; PRAGMA user_version = 5;"),
            Store::Postgres(_) => self.exec(
                "DROP TABLE tree_nodes; ALTER TABLE log_head DROP COLUMN tree_size; \
                     DELETE FROM schema_migrations WHERE version = 4;",
            ),
        }
    }
}

/// An event of iran's channel in the middle of the log.
fn irans_event(events: &[pb::Event], channel: &str) -> u64 {
    let of_channel: Vec<u64> = events
        .iter()
        .filter(|e| e.channel_id == channel)
        .map(|e| e.sequence)
        .collect();
    of_channel[of_channel.len() / 2]
}

#[tokio::test]
async fn an_untouched_record_checks_out_and_the_state_carries_over() {
    let mut fx = Fixture::new().await;
    let iran = fx.w.tokens["iran"].clone();
    // A second run proves consistency with the first one's checkpoint.
    let more =
        fx.w.iran
            .messages
            .send_message(send_req(&fx.w.channel.id, "one more"))
            .await
            .unwrap()
            .into_inner();
    let out = passed(&fx.audit(&iran, "iran", &[]).await);
    assert!(
        out.contains(&format!(
            "with the checkpoint of size {} trusted before",
            fx.head
        )),
        "{out}"
    );
    assert!(out.contains("(signature verified)"), "{out}");
    let v: Value = serde_json::from_str(
        String::from_utf8_lossy(&fx.audit(ADMIN_TOKEN, "admin", &["-o", "json"]).await.stdout)
            .trim(),
    )
    .expect("one JSON line");
    assert_eq!(v["verdict"], "OK", "{v}");
    assert_eq!(v["treeSize"], (fx.head + 1).to_string());
    assert_eq!(v["verifiedEvents"], (fx.head + 1).to_string());
    assert_eq!(v["consistentFrom"], fx.head.to_string());

    // The state file: the key, the checkpoint, what was verified.
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.state("admin")).unwrap()).unwrap();
    assert_eq!(state["verified"], format!("1-{}", fx.head + 1));
    assert!(
        state["checkpoint"]
            .as_str()
            .unwrap()
            .contains(&format!("\n{}\n", fx.head + 1))
    );

    // A state is its caller's.
    let o = fx.audit(&iran, "admin", &[]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is admin's, and this token is iran's"),
        "{}",
        text(&o)
    );
    // A first audit pins the key and says so; scoped audits.
    let out = passed(&fx.audit(&iran, "fresh", &["--message", &more.id]).await);
    assert!(out.contains("pinned on first use"), "{out}");
    assert!(out.contains("verified     1 events"), "{out}");
    let out = passed(&fx.audit(ADMIN_TOKEN, "admin", &["--full"]).await);
    assert!(out.contains("recomputed   the tree from all"), "{out}");
    let o = fx.audit(&iran, "iran", &["--full"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // A party sees only its channel's events: it verifies those.
    let events = fx.events().await;
    let irans = events
        .iter()
        .filter(|e| e.channel_id == fx.w.channel.id)
        .count();
    let out = passed(&fx.audit(&iran, "iran", &[]).await);
    assert!(
        out.contains(&format!("verified     {irans} events")),
        "{out}"
    );
    let out = passed(
        &fx.audit(
            &fx.w.tokens["united-states"],
            "us",
            &["--channel", &fx.other.id],
        )
        .await,
    );
    assert!(out.contains("verified     7 events"), "{out}");
    // A given key that is not the server's: refused as a bad signature.
    let stranger = NoteSigner::from_seed("someone/else", [9; 32]).unwrap();
    let key = stranger.verifier().encode();
    found(
        &fx.audit(&iran, "stranger", &["--verifier-key", &key]).await,
        "BAD_SIGNATURE",
    );
    let o = fx
        .audit(&iran, "stranger", &["--verifier-key", "not a key"])
        .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[tokio::test]
async fn a_changed_byte_is_found_at_its_sequence() {
    // With no start-up check of the leaf hashes (a large store checks
    // only its newest events), the embedded server starts on the damage.
    let mut fx = Fixture::with(Options {
        args: ["--startup-check-events", "0"].map(String::from).to_vec(),
        ..Default::default()
    })
    .await;
    let victim = irans_event(&fx.events().await, &fx.w.channel.id);
    // Changed alone, the read-time check refuses it (DATA_LOSS) …
    let original = fx.events().await[victim as usize - 1].clone();
    let flip = move |s: &Store| {
        let mut data = s.data(victim);
        let i = data.len() / 2;
        data[i] ^= 0x01;
        s.set_data(victim, data, false);
    };
    let at = format!("ALTERED at sequence {victim}:");
    // The embedded store checks its newest events at start and refuses to
    // serve; the audit finds it where the server starts.
    let fx = match fx.tamper(&format!("event #{victim}"), flip).await {
        Ok(fx) => {
            for (token, state) in [(ADMIN_TOKEN, "admin"), (&fx.w.tokens["iran"][..], "iran")] {
                let line = found(&fx.audit(token, state, &[]).await, "ALTERED");
                assert!(line.contains(&at), "{line}");
                assert!(line.contains("damaged"), "{line}");
            }
            fx.tamper("", flip)
                .await
                .unwrap_or_else(|_| panic!("the byte put back"))
        }
        Err(mut fx) => {
            // Put the byte back by hand and start again.
            let store = match fx.server.database() {
                None => Store::Sqlite(fx.server.data_path().join("backchannel.db")),
                Some(db) => Store::Postgres(db.url.clone()),
            };
            flip(&store);
            fx.server = fx.server.restart().await;
            fx
        }
    };
    // … and with its leaf hash changed to match, the tree does.
    let fx = fx
        .tamper("", move |s| {
            let mut e = original;
            e.note = "not what was said".into();
            s.set_data(victim, e.encode_to_vec(), true);
        })
        .await
        .unwrap_or_else(|_| panic!("a forged event with its leaf hash passes the start check"));
    // The forged leaf hash is in its neighbour's proof too: the verdict
    // names the first event whose proof fails, and every one that does.
    for (token, state) in [(ADMIN_TOKEN, "admin"), (&fx.w.tokens["iran"][..], "iran")] {
        let line = found(&fx.audit(token, state, &[]).await, "ALTERED");
        let named = line.contains(&at)
            || line.contains(&format!(": {victim},"))
            || line.contains(&format!(", {victim} ("));
        assert!(named, "{line}");
        assert!(line.contains("signed tree"), "{line}");
    }
    let line = found(
        &fx.audit(ADMIN_TOKEN, "admin", &["--full"]).await,
        "ALTERED",
    );
    assert!(line.contains(&at), "{line}");
}

#[tokio::test]
async fn a_deleted_event_is_found() {
    let mut fx = Fixture::new().await;
    let victim = irans_event(&fx.events().await, &fx.w.channel.id);
    let Ok(fx) = fx
        .tamper("events are missing", move |s| {
            s.exec(&format!("DELETE FROM events WHERE seq = {victim}"))
        })
        .await
    else {
        return;
    };
    let at = format!("ALTERED at sequence {victim}:");
    let line = found(&fx.audit(ADMIN_TOKEN, "admin", &[]).await, "ALTERED");
    assert!(line.contains(&at) && line.contains("missing"), "{line}");
    // A party that verified the event before finds it gone.
    let line = found(
        &fx.audit(&fx.w.tokens["iran"], "iran", &[]).await,
        "ALTERED",
    );
    assert!(
        line.contains(&at) && line.contains("no longer listed"),
        "{line}"
    );
}

#[tokio::test]
async fn two_swapped_events_are_found() {
    let mut fx = Fixture::new().await;
    let events = fx.events().await;
    let a = irans_event(&events, &fx.w.channel.id);
    let b = a + 3;
    let fx = fx
        .tamper("", move |s| {
            let (da, db) = (s.data(a), s.data(b));
            s.set_data(a, db, true);
            s.set_data(b, da, true);
        })
        .await
        .unwrap_or_else(|_| panic!("swapped events with their leaf hashes pass the start check"));
    for (token, state) in [(ADMIN_TOKEN, "admin"), (&fx.w.tokens["iran"][..], "iran")] {
        let line = found(&fx.audit(token, state, &[]).await, "ALTERED");
        assert!(
            line.contains(&format!("at sequence {a}:"))
                || line.contains(&format!("at sequence {b}:")),
            "{line}"
        );
    }
    let line = found(
        &fx.audit(ADMIN_TOKEN, "admin", &["--full"]).await,
        "ALTERED",
    );
    assert!(
        line.contains(&format!("at sequence {a}:")) || line.contains(&format!("at sequence {b}:")),
        "{line}"
    );
}

#[tokio::test]
async fn a_history_rewritten_with_its_tree_recomputed_is_a_fork() {
    let mut fx = Fixture::new().await;
    let events = fx.events().await;
    let channel = fx.w.channel.id.clone();
    let rewritten: Vec<pb::Event> = events
        .into_iter()
        .filter(|e| e.channel_id == channel)
        .map(|mut e| {
            e.note = "as it should have been".into();
            e
        })
        .collect();
    let fx = fx
        .tamper("", move |s| {
            for e in &rewritten {
                s.set_data(e.sequence, e.encode_to_vec(), true);
            }
            s.drop_tree();
        })
        .await
        .unwrap_or_else(|_| panic!("a consistent forgery passes the start check"));
    // The forged record is consistent in itself: a newcomer's audit passes …
    passed(&fx.audit(ADMIN_TOKEN, "newcomer", &[]).await);
    // … but not against what was trusted before: at the same size, the
    // roots differ …
    let line = found(&fx.audit(ADMIN_TOKEN, "admin", &[]).await, "FORKED");
    assert!(line.contains(&format!("at size {}:", fx.head)), "{line}");
    assert!(line.contains("rewritten"), "{line}");
    // … and once the forged log grows, its consistency proof fails.
    let mut iran = fx.server.clients(&fx.w.tokens["iran"]).await;
    iran.messages
        .send_message(send_req(&fx.w.channel.id, "after the forgery"))
        .await
        .expect("send");
    let line = found(&fx.audit(&fx.w.tokens["iran"], "iran", &[]).await, "FORKED");
    assert!(
        line.contains(&format!("at size {}:", fx.head + 1)),
        "{line}"
    );
    assert!(line.contains("does not extend"), "{line}");
}

#[tokio::test]
async fn a_replaced_signing_key_is_a_bad_signature() {
    let mut fx = Fixture::new().await;
    let before =
        fx.w.admin
            .audit
            .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
            .await
            .unwrap()
            .into_inner();
    let key_file: PathBuf = fx.server.data_path().join("signing.key");
    let origin = before.origin.clone();
    let fx = fx
        .tamper("", move |_| {
            let forged = NoteSigner::from_seed(&origin, [0x66; 32]).unwrap();
            std::fs::write(&key_file, forged.encode() + "\n").unwrap();
        })
        .await
        .unwrap_or_else(|_| panic!("a replaced key file starts"));
    for (token, state) in [(ADMIN_TOKEN, "admin"), (&fx.w.tokens["iran"][..], "iran")] {
        let line = found(&fx.audit(token, state, &[]).await, "BAD_SIGNATURE");
        assert!(line.contains(&before.verifier_key), "{line}");
        assert!(line.contains("the server now names the key"), "{line}");
    }
    // With no state, the key given is the one trusted.
    let line = found(
        &fx.audit(
            ADMIN_TOKEN,
            "given",
            &["--verifier-key", &before.verifier_key],
        )
        .await,
        "BAD_SIGNATURE",
    );
    assert!(line.contains(&format!("at size {}:", fx.head)), "{line}");
}

#[tokio::test]
async fn status_shows_the_checkpoint_and_the_key() {
    let fx = Fixture::new().await;
    let o = bc(&fx.server, &fx.w.tokens["iran"], &["status"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let key =
        fx.w.admin
            .clone()
            .audit
            .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
            .await
            .unwrap()
            .into_inner()
            .verifier_key;
    assert!(out.contains(&format!("key       {key}")), "{out}");
    assert!(
        out.contains(&format!("checkpoint of size {}", fx.head)),
        "{out}"
    );
    let o = bc(&fx.server, &fx.w.tokens["iran"], &["status", "-o", "json"]).await;
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["checkpoint"]["verifierKey"], key.as_str());
    assert_eq!(v["checkpoint"]["treeSize"], fx.head.to_string());
}

/// The newest events cut off the log, with their nodes: a server restored
/// from an older backup looks the same. The audit says the server is
/// behind what it trusted.
#[tokio::test]
async fn a_log_shorter_than_the_trusted_checkpoint_is_behind() {
    let fx = Fixture::new().await;
    let head = fx.head;
    let keep = head - 3;
    let postgres = fx.server.database().is_some();
    let fx = fx
        .tamper("", move |s| {
            s.exec(&format!(
                "DELETE FROM events WHERE seq > {keep}; DELETE FROM tree_nodes WHERE last_leaf >= {keep};"
            ));
            if postgres {
                s.exec(&format!(
                    "UPDATE log_head SET head = {keep}, tree_size = {keep};"
                ));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("a shorter log starts"));
    for (token, state) in [(ADMIN_TOKEN, "admin"), (&fx.w.tokens["iran"][..], "iran")] {
        let line = found(&fx.audit(token, state, &[]).await, "BEHIND");
        assert!(line.contains(&format!("at size {keep}:")), "{line}");
        assert!(line.contains(&format!("fewer than the {head}")), "{line}");
    }
}
