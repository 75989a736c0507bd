//! The embedded store defends the record (DESIGN §5): one owner per data
//! directory, private files, a bounded WAL that a clean stop empties, and
//! faults named and survived — a full disk, a read-only file system, the
//! data directory removed while writes run, a flipped byte in a stored
//! event. The disk faults run on small file systems the test mounts itself
//! (tmpfs, as root); where the kernel refuses the mount the test says so
//! and skips. On the PostgreSQL backend these tests have nothing to check
//! (the record is not in the data directory) and say so.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backchannel::pb;
use backchannel::pb::subscribe_response::Kind;
use common::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Whether this run tests the embedded store; prints why not otherwise.
fn embedded(test: &str) -> bool {
    if backend_is_postgres() {
        eprintln!("{test}: skipped on the PostgreSQL backend (embedded store only)");
        return false;
    }
    true
}

/// A file system of the test's own, unmounted when dropped.
struct Mount {
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// Also bind-mounted on itself (for a read-only remount).
    bound: bool,
}

impl Mount {
    /// A tmpfs of `size` (e.g. `16m`), or `None` with the reason printed.
    fn tmpfs(size: &str) -> Option<Mount> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).expect("mount point");
        let out = StdCommand::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Mount {
                _dir: dir,
                path,
                bound: false,
            }),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs here (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    /// Makes the file system refuse writes (through a read-only bind mount
    /// over it: a tmpfs with open files cannot itself be remounted
    /// read-only), or lets it write again.
    fn set_read_only(&mut self, ro: bool) {
        if !self.bound {
            run(StdCommand::new("mount")
                .arg("--bind")
                .arg(&self.path)
                .arg(&self.path));
            self.bound = true;
        }
        let opts = if ro {
            "remount,bind,ro"
        } else {
            "remount,bind,rw"
        };
        run(StdCommand::new("mount").args(["-o", opts]).arg(&self.path));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let times = if self.bound { 2 } else { 1 };
        for _ in 0..times {
            let _ = StdCommand::new("umount").arg("-l").arg(&self.path).output();
        }
    }
}

fn run(cmd: &mut StdCommand) {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The whole server's health (`""`).
async fn health(server: &Server) -> ServingStatus {
    let mut h = HealthClient::new(server.connect().await);
    let r = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check");
    ServingStatus::try_from(r.into_inner().status).unwrap_or(ServingStatus::Unknown)
}

async fn wait_health(server: &Server, want: ServingStatus) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = health(server).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health stayed {now:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One send with a request id.
async fn send(
    iran: &mut Clients,
    channel_id: &str,
    subject: &str,
) -> Result<pb::Message, tonic::Status> {
    let mut req = send_req(channel_id, subject);
    req.request_id = uuid::Uuid::new_v4().to_string();
    iran.messages
        .send_message(req)
        .await
        .map(|r| r.into_inner())
}

/// Sends until a send is refused; returns the ids acknowledged meanwhile and
/// the refusal.
async fn send_until_refused(
    iran: &mut Clients,
    channel_id: &str,
    acked: &mut Vec<String>,
) -> tonic::Status {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match send(iran, channel_id, &format!("m{}", acked.len())).await {
            Ok(m) => acked.push(m.id),
            Err(e) => return e,
        }
        assert!(
            Instant::now() < deadline,
            "writes were never refused ({} acknowledged)",
            acked.len()
        );
    }
}

/// Asserts that every id in `acked` is a stored message.
async fn all_present(server: &Server, acked: &[String]) {
    let mut admin = server.admin().await;
    for id in acked {
        admin
            .messages
            .get_message(pb::GetMessageRequest {
                message_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged message {id} is missing: {e:?}"));
    }
}

/// The server's log lines at ERROR level.
fn error_lines(server: &Server) -> Vec<String> {
    server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_refuses_to_start_naming_the_holder() {
    if !embedded("second server") {
        return;
    }
    let first = Server::start().await;
    let pid = first.pid().expect("pid");
    let (code, out) = refused_start(&first.data_dir, &[]).await;
    assert_ne!(code, Some(0), "the second server must not start: {out}");
    assert!(out.contains("in use"), "{out}");
    assert!(
        out.contains(&format!("pid {pid}")),
        "names the holder: {out}"
    );
    assert!(
        out.contains(&first.data_dir.display().to_string()),
        "names the directory: {out}"
    );
    // The first goes on unharmed.
    let mut w = world(&first).await;
    send(&mut w.iran, &w.channel.id, "still here")
        .await
        .expect("the first server still writes");
}

#[tokio::test]
async fn store_files_are_private_and_a_clean_stop_leaves_the_wal_empty() {
    if !embedded("private files") {
        return;
    }
    let mut server = Server::start().await;
    let mut w = world(&server).await;
    for i in 0..200 {
        send(&mut w.iran, &w.channel.id, &format!("m{i}"))
            .await
            .expect("send");
    }
    let dir = server.data_dir.clone();
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "data directory mode");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("read dir") {
        let p = entry.expect("entry").path();
        assert_eq!(mode(&p), 0o600, "{} mode", p.display());
        files += 1;
    }
    assert!(files >= 3, "db, wal, shm, lock: {files}");
    assert_eq!(server.stop().await, Some(0));
    let wal = dir.join("backchannel.db-wal");
    let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(size, 0, "the WAL is empty after a clean stop");
}

#[tokio::test]
async fn a_full_disk_refuses_writes_with_store_full_keeps_reads_and_recovers() {
    if !embedded("full disk") {
        return;
    }
    let Some(fs) = Mount::tmpfs("24m") else {
        return;
    };
    let data_dir = fs.path.join("data");
    let server = Server::start_in(data_dir.clone(), Options::default()).await;
    let mut w = world(&server).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(
            send(&mut w.iran, &w.channel.id, &format!("before {i}"))
                .await
                .expect("send")
                .id,
        );
    }
    let ballast = fill(&fs.path);
    let refusal = send_until_refused(&mut w.iran, &w.channel.id, &mut acked).await;
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    assert_eq!(reason(&refusal), "STORE_FULL", "{refusal:?}");
    // Refused, and refused again: nothing half-written is acknowledged.
    let again = send(&mut w.iran, &w.channel.id, "while full").await;
    if let Ok(m) = &again {
        acked.push(m.id.clone());
    }
    // Reads go on; health says writes cannot commit.
    all_present(&server, &acked).await;
    let events = all_events(&mut w.admin, pb::ListEventsRequest::default()).await;
    assert!(events.len() >= acked.len(), "reads go on while full");
    wait_health(&server, ServingStatus::NotServing).await;
    let full_errors = error_lines(&server)
        .iter()
        .filter(|l| l.contains("STORE_FULL"))
        .count();
    assert_eq!(
        full_errors,
        1,
        "one ERROR line per fault: {:?}",
        error_lines(&server)
    );
    // Refusals are not logged as warnings one by one.
    for i in 0..20 {
        if let Ok(m) = send(&mut w.iran, &w.channel.id, &format!("refused {i}")).await {
            acked.push(m.id);
        }
    }
    let warnings = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("\"level\":\"WARN\""))
        .count();
    assert!(warnings < 3, "{warnings} warnings for one fault");

    // A restart while the disk is still full serves reads.
    let server = server.restart().await;
    all_present(&server, &acked).await;
    wait_health(&server, ServingStatus::NotServing).await;
    let mut w2 = server.clients(&w.tokens["iran"]).await;
    let refused = send(&mut w2, &w.channel.id, "after restart, full").await;
    assert_eq!(
        refused.as_ref().map_err(reason).err().as_deref(),
        Some("STORE_FULL"),
        "{refused:?}"
    );

    // Space freed: writes work again without a restart.
    std::fs::remove_file(&ballast).expect("free space");
    wait_health(&server, ServingStatus::Serving).await;
    acked.push(
        send(&mut w2, &w.channel.id, "after space freed")
            .await
            .expect("send")
            .id,
    );
    all_present(&server, &acked).await;
    let events = all_events(&mut server.admin().await, pb::ListEventsRequest::default()).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gap");
}

/// Fills the file system at `dir` to the last byte with a file of its own,
/// whose path it returns.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let ballast = dir.join("ballast");
    let mut f = std::fs::File::create(&ballast).expect("ballast");
    let chunk = vec![0xAAu8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    ballast
}

/// A run of idempotency records left half written (a move or a merge cut
/// short) is found at start; on a full disk the server must still start
/// and serve reads, writing nothing for it.
#[tokio::test]
async fn a_restart_on_a_full_disk_with_a_run_half_written_serves_reads() {
    if !embedded("full disk, half-written run") {
        return;
    }
    let Some(fs) = Mount::tmpfs("24m") else {
        return;
    };
    let data_dir = fs.path.join("data");
    let mut server = Server::start_in(data_dir.clone(), Options::default()).await;
    let mut w = world(&server).await;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(
            send(&mut w.iran, &w.channel.id, &format!("before {i}"))
                .await
                .expect("send")
                .id,
        );
    }
    assert_eq!(server.stop().await, Some(0));
    // Held open until the server is up again, so that the WAL and its
    // index stay as a crash leaves them (the last connection to close
    // would remove them, and the server would have to create them).
    let db = rusqlite::Connection::open(data_dir.join("backchannel.db")).expect("open");
    db.execute_batch(
        "INSERT INTO request_run_list (run, state, records) VALUES (7, 0, 0);
         INSERT INTO request_runs VALUES
             (7, 'iran', 'SendMessage', '00000000-0000-4000-8000-000000000007', x'00', 'r');",
    )
    .expect("a run half written");
    let ballast = fill(&fs.path);
    let server = server.restart().await;
    all_present(&server, &acked).await;
    wait_health(&server, ServingStatus::NotServing).await;
    drop(db);
    // Space freed: the run is removed, and writes go on.
    std::fs::remove_file(&ballast).expect("free space");
    wait_health(&server, ServingStatus::Serving).await;
    let mut w2 = server.clients(&w.tokens["iran"]).await;
    acked.push(
        send(&mut w2, &w.channel.id, "after space freed")
            .await
            .expect("send")
            .id,
    );
    all_present(&server, &acked).await;
}

#[tokio::test]
async fn a_read_only_file_system_refuses_writes_with_store_read_only_and_recovers() {
    if !embedded("read-only") {
        return;
    }
    let Some(mut fs) = Mount::tmpfs("64m") else {
        return;
    };
    let server = Server::start_in(fs.path.join("data"), Options::default()).await;
    let mut w = world(&server).await;
    let mut acked = vec![
        send(&mut w.iran, &w.channel.id, "before")
            .await
            .expect("send")
            .id,
    ];
    fs.set_read_only(true);
    let refusal = send_until_refused(&mut w.iran, &w.channel.id, &mut acked).await;
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    assert_eq!(reason(&refusal), "STORE_READ_ONLY", "{refusal:?}");
    wait_health(&server, ServingStatus::NotServing).await;
    all_present(&server, &acked).await;
    fs.set_read_only(false);
    wait_health(&server, ServingStatus::Serving).await;
    acked.push(
        send(&mut w.iran, &w.channel.id, "after")
            .await
            .expect("send")
            .id,
    );
    all_present(&server, &acked).await;
    let ro_errors = error_lines(&server)
        .iter()
        .filter(|l| l.contains("STORE_READ_ONLY"))
        .count();
    assert_eq!(
        ro_errors,
        1,
        "one ERROR line per fault: {:?}",
        error_lines(&server)
    );
}

/// Writers that keep sending until told to stop; each records its
/// acknowledged ids and whether an acknowledgement ever followed a
/// `STORE_LOST`.
async fn writers(
    server: &Server,
    w: &World,
    n: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(Vec<String>, bool, usize)>> {
    let mut tasks = Vec::new();
    for k in 0..n {
        let mut iran = server.clients(&w.tokens["iran"]).await;
        let channel = w.channel.id.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut lost, mut ack_after_lost, mut i) = (Vec::new(), 0usize, false, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match send(&mut iran, &channel, &format!("w{k} {i}")).await {
                    Ok(m) => {
                        ack_after_lost |= lost > 0;
                        acked.push(m.id);
                    }
                    Err(e) if reason(&e) == "STORE_LOST" => lost += 1,
                    Err(e) => panic!("unexpected refusal: {e:?}"),
                }
                i += 1;
            }
            (acked, ack_after_lost, lost)
        }));
    }
    tasks
}

#[tokio::test]
async fn a_data_directory_moved_away_while_writes_run_acknowledges_nothing_after_and_loses_no_ack()
{
    if !embedded("moved directory") {
        return;
    }
    let mut server = Server::start().await;
    let w = world(&server).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = writers(&server, &w, 3, stop.clone()).await;
    // Some writes land first.
    let mut probe = server.admin().await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let n = probe
            .messages
            .list_messages(pb::ListMessagesRequest::default())
            .await
            .map(|r| r.into_inner().messages.len())
            .unwrap_or(0);
        if n >= 20 {
            break;
        }
        assert!(Instant::now() < deadline, "writes did not land");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moved = server.data_dir.with_file_name("data.moved");
    std::fs::rename(&server.data_dir, &moved).expect("move the data directory away");
    wait_health(&server, ServingStatus::NotServing).await;
    // Writes are refused from now on (each writer sees STORE_LOST).
    let mut iran = server.clients(&w.tokens["iran"]).await;
    let r = send(&mut iran, &w.channel.id, "after the move").await;
    assert_eq!(
        r.map_err(|e| reason(&e)).err().as_deref(),
        Some("STORE_LOST")
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        let (ids, ack_after_lost, _) = t.await.expect("writer");
        assert!(!ack_after_lost, "a write was acknowledged after STORE_LOST");
        acked.extend(ids);
    }
    let lost_errors: Vec<String> = error_lines(&server)
        .into_iter()
        .filter(|l| l.contains("removed or replaced"))
        .collect();
    assert_eq!(
        lost_errors.len(),
        1,
        "one clear ERROR line: {lost_errors:?}"
    );
    assert_eq!(error_lines(&server).len(), 1, "{:?}", error_lines(&server));
    server.stop().await;
    // Every acknowledged write is in the moved-aside files.
    let restored = Server::start_in(moved, Options::default()).await;
    all_present(&restored, &acked).await;
    let unique: HashSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len());
}

#[tokio::test]
async fn a_data_directory_removed_while_running_is_store_lost_within_a_second() {
    if !embedded("removed directory") {
        return;
    }
    let server = Server::start().await;
    let mut w = world(&server).await;
    send(&mut w.iran, &w.channel.id, "before")
        .await
        .expect("send");
    std::fs::remove_dir_all(&server.data_dir).expect("rm -rf the data directory");
    let removed = Instant::now();
    wait_health(&server, ServingStatus::NotServing).await;
    let noticed = removed.elapsed();
    let r = send(&mut w.iran, &w.channel.id, "after").await;
    assert_eq!(
        r.map_err(|e| reason(&e)).err().as_deref(),
        Some("STORE_LOST")
    );
    eprintln!("removal noticed by health after {noticed:?}");
    let lost_errors = error_lines(&server)
        .into_iter()
        .filter(|l| l.contains("removed or replaced"))
        .count();
    assert_eq!(lost_errors, 1);
}

/// Flips one hexadecimal digit of `needle` (an event id) in `file`, which
/// must hold it exactly once; the event still decodes, so only its leaf
/// hash can tell.
fn flip_one_digit(file: &Path, needle: &str) {
    let mut bytes = std::fs::read(file).expect("read db");
    let at: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the event id is stored once");
    let i = at[0] + 1;
    bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
    std::fs::write(file, bytes).expect("write db");
}

#[tokio::test]
async fn a_flipped_byte_in_a_stored_event_is_refused_at_start_and_never_served() {
    if !embedded("flipped byte") {
        return;
    }
    let mut server = Server::start().await;
    let mut w = world(&server).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            send(&mut w.iran, &w.channel.id, &format!("m{i}"))
                .await
                .expect("send")
                .id,
        );
    }
    let events = all_events(&mut w.admin, pb::ListEventsRequest::default()).await;
    let victim = events
        .iter()
        .find(|e| e.message_id == ids[2])
        .expect("the third message's event")
        .clone();
    assert_eq!(server.stop().await, Some(0));
    flip_one_digit(&server.data_dir.join("backchannel.db"), &victim.event_id);

    // At start (the check covers the newest 100,000 events by default).
    let (code, out) = refused_start(&server.data_dir, &[]).await;
    assert_ne!(code, Some(0), "a damaged store is not served: {out}");
    assert!(out.contains("damaged"), "{out}");
    assert!(
        out.contains(&format!("#{}", victim.sequence)),
        "names the event: {out}"
    );
    assert!(out.contains("backup"), "says how to restore: {out}");

    // Served without the start-up check: the damaged event never is.
    let server = Server::start_in(
        server.data_dir.clone(),
        Options {
            args: vec!["--startup-check-events".into(), "0".into()],
            ..Options::default()
        },
    )
    .await;
    let mut admin = server.admin().await;
    // Pages up to the damaged event are served; the one that starts at it
    // is DATA_LOSS.
    let mut listed = Vec::new();
    let mut page_token = String::new();
    let e = loop {
        match admin
            .messages
            .list_events(pb::ListEventsRequest {
                page_token: page_token.clone(),
                page_size: 3,
                ..Default::default()
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                listed.extend(r.events.iter().map(|e| e.sequence));
                assert!(
                    !r.next_page_token.is_empty(),
                    "listed past the damage: {listed:?}"
                );
                page_token = r.next_page_token;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert_eq!(reason(&e), "RECORD_CORRUPT");
    assert!(listed.iter().all(|s| *s < victim.sequence), "{listed:?}");
    let e = admin
        .messages
        .list_events(pb::ListEventsRequest {
            message_id: ids[2].clone(),
            ..Default::default()
        })
        .await
        .expect_err("the damaged message's history");
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    // Other histories are whole.
    admin
        .messages
        .list_events(pb::ListEventsRequest {
            message_id: ids[3].clone(),
            ..Default::default()
        })
        .await
        .expect("an undamaged history");
    // A replay streams what comes before it, then ends with DATA_LOSS.
    let mut stream = admin
        .messages
        .subscribe(pb::SubscribeRequest {
            start_after: Some(0),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut seen = Vec::new();
    let end = loop {
        match tokio::time::timeout(DEADLINE, stream.message()).await {
            Err(_) => panic!("the replay neither went on nor ended; saw {seen:?}"),
            Ok(Ok(Some(item))) => match item.kind {
                Some(Kind::Event(e)) => seen.push(e.sequence),
                Some(Kind::Heartbeat(h)) => panic!("caught up past the damage at {h:?}"),
                None => {}
            },
            Ok(Ok(None)) => panic!("the stream ended without an error"),
            Ok(Err(status)) => break status,
        }
    };
    assert_eq!(end.code(), Code::DataLoss, "{end:?}");
    assert_eq!(
        seen,
        (1..victim.sequence).collect::<Vec<_>>(),
        "nothing damaged streamed"
    );
    let logged = server.log.lock().unwrap().iter().any(|l| {
        l.contains("integrity") && l.contains(&format!("\"sequence\":{}", victim.sequence))
    });
    assert!(logged, "the server logs the damaged sequence");
}

#[tokio::test]
async fn a_store_from_before_leaf_hashes_gets_them_by_migration() {
    if !embedded("leaf-hash migration") {
        return;
    }
    let mut server = Server::start().await;
    let mut w = world(&server).await;
    for i in 0..10 {
        send(&mut w.iran, &w.channel.id, &format!("m{i}"))
            .await
            .expect("send");
    }
    let before = all_events(&mut w.admin, pb::ListEventsRequest::default()).await;
    assert_eq!(server.stop().await, Some(0));
    // Back to schema version 1: no leaf_hash column (nor the token columns
    // of version 3, nor the recent idempotency records of version 4, nor
    // the runs of version 5, where version 1 had one `requests` index, nor
    // the Merkle tree of version 6).
    {
        let db = rusqlite::Connection::open(server.data_dir.join("backchannel.db")).expect("open");
        db.execute_batch(REQUESTS_BEFORE_RUNS).expect("runs undone");
        db.execute_batch(
            "ALTER TABLE events DROP COLUMN leaf_hash;
             ALTER TABLE tokens DROP COLUMN read_only;
             ALTER TABLE tokens DROP COLUMN expire_time;
             ALTER TABLE tokens DROP COLUMN last_use_time;
             DROP TABLE requests_recent;
             DROP TABLE tree_nodes;
             PRAGMA user_version = 1;",
        )
        .expect("downgrade");
    }
    let server = server.restart().await;
    let mut admin = server.admin().await;
    let after = all_events(&mut admin, pb::ListEventsRequest::default()).await;
    assert_eq!(after, before, "the same log, now with its leaf hashes");
    let db = rusqlite::Connection::open(server.data_dir.join("backchannel.db")).expect("open");
    let missing: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM events WHERE leaf_hash IS NULL",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(missing, 0);
}

#[tokio::test]
async fn a_missing_postgresql_database_is_named_with_the_command_that_creates_it() {
    let name = format!("backchannel_missing_{}", std::process::id());
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let tmp = tempfile::tempdir().expect("temp dir");
    let (code, out) = refused_start(&tmp.path().join("data"), &["--database-url", &url]).await;
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("3D000"), "the SQLSTATE: {out}");
    assert!(out.contains("does not exist"), "{out}");
    assert!(
        out.contains(&format!("createdb -h 127.0.0.1 -p 5432 -U postgres {name}")),
        "{out}"
    );
}

#[tokio::test]
async fn the_write_ahead_log_stays_under_its_bound_however_much_is_written() {
    if !embedded("WAL bound") {
        return;
    }
    const BOUND: u64 = 64 << 20;
    let server = Server::start().await;
    let w = world(&server).await;
    let wal = server.data_dir.join("backchannel.db-wal");
    // About 200 MiB of records (each 16 KiB body is stored in the event
    // and in the message record): far past the bound if nothing resets it.
    let body = "x".repeat(16 << 10);
    let mut tasks = Vec::new();
    for k in 0..8 {
        let mut iran = server.clients(&w.tokens["iran"]).await;
        let channel = w.channel.id.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..800 {
                let mut req = send_req(&channel, &format!("w{k} {i}"));
                req.body = body.clone();
                req.request_id = uuid::Uuid::new_v4().to_string();
                iran.messages.send_message(req).await.expect("send");
            }
        }));
    }
    let mut peak = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        peak = peak.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        t.await.expect("writer");
    }
    eprintln!("WAL peak {peak} bytes");
    assert!(peak > 0, "the WAL was sampled");
    assert!(
        peak <= BOUND,
        "the WAL reached {peak} bytes, over its bound of {BOUND}"
    );
}

/// The writer checkpoints once the WAL holds 16 MiB, judged by what it
/// holds since it was last restarted, not by the file's size: a restarted
/// WAL keeps its size, and judged by that every commit after the first
/// checkpoint checkpointed again (two more fsyncs per commit; fresh-store
/// sends at one call in flight were a fifth slower for it).
#[tokio::test]
async fn after_a_checkpoint_commits_do_not_each_checkpoint_again() {
    if !embedded("checkpoint cadence") {
        return;
    }
    let server = Server::start_with(Options::default().with_metrics()).await;
    let metrics = server.metrics_addr();
    let checkpoints =
        |text: &str| metric_sample(text, "backchannel_wal_checkpoint_seconds_count").unwrap_or(0.0);
    let mut w = world(&server).await;
    // About 20 MiB of WAL: past the first checkpoint.
    let body = "x".repeat(60 * 1024);
    let mut sent = 0;
    while checkpoints(&scrape(&metrics).await) < 1.0 {
        let mut req = send_req(&w.channel.id, &format!("large {sent}"));
        req.body = body.clone();
        w.iran.messages.send_message(req).await.expect("send");
        sent += 1;
        assert!(sent < 2_000, "no checkpoint after {sent} large sends");
    }
    let before = checkpoints(&scrape(&metrics).await);
    // 100 small commits, one at a time: far from another 16 MiB.
    for i in 0..100 {
        send(&mut w.iran, &w.channel.id, &format!("small {i}"))
            .await
            .expect("send");
    }
    let after = checkpoints(&scrape(&metrics).await);
    assert!(
        after - before <= 1.0,
        "{} checkpoints for 100 small commits",
        after - before
    );
}
