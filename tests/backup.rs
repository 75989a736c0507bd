//! `backchannel backup DEST`: a consistent copy of the embedded store, taken
//! while the server runs and writes, that a second server serves as it was;
//! and the refusals, which leave everything as they found it.
mod common;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use backchannel::pb;
use common::stream::seqs;
use common::*;

/// Runs the `backchannel` binary with `args`, without the settings of the
/// environment the tests run in.
async fn backchannel<S: AsRef<OsStr>>(args: &[S]) -> Output {
    tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_backchannel"))
            .args(args)
            .env_remove("BACKCHANNEL_DATA_DIR")
            .env_remove("BACKCHANNEL_DATABASE_URL")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("backchannel backup finished within the deadline")
    .expect("run backchannel")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The head sequence and event count in the summary line
/// `backup DEST: SIZE, N events, head H, T`.
fn summary(out: &Output) -> (u64, u64) {
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let at = |word: &str| {
        words
            .iter()
            .position(|w| *w == word)
            .unwrap_or_else(|| panic!("no {word:?} in the summary {line:?}"))
    };
    let number = |i: usize| words[i].parse::<u64>().expect("a number");
    (number(at("head") + 1), number(at("events") - 1))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every entry under `dir` with its mode and contents, to show it unchanged.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        let contents = if path.is_dir() {
            Vec::new()
        } else {
            std::fs::read(&path).expect("read")
        };
        out.insert(path.clone(), (mode(&path), contents));
        if path.is_dir() {
            out.extend(tree(&path));
        }
    }
    out
}

/// Names in `dir` that a backup left half-made.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-"))
        .collect()
}

/// A server that generated its own admin token (so that the data directory
/// holds `admin.token`), and that token.
async fn server_with_token_file() -> (Server, String) {
    let server = Server::start_with(Options {
        no_admin_env: true,
        ..Default::default()
    })
    .await;
    let token = std::fs::read_to_string(server.data_path().join("admin.token"))
        .expect("admin.token")
        .trim()
        .to_owned();
    (server, token)
}

/// Registers iran, france and united-states and opens iran → france →
/// united-states; returns the channel's id and iran's token.
async fn channel(admin: &mut Clients) -> (String, String) {
    let iran = party(admin, "iran").await;
    party(admin, "france").await;
    party(admin, "united-states").await;
    let channel = admin
        .channels
        .create_channel(pb::CreateChannelRequest {
            display_name: "Biarritz".into(),
            parties: vec!["iran".into(), "united-states".into()],
            mediators: vec!["france".into()],
            request_id: String::new(),
        })
        .await
        .expect("create channel")
        .into_inner();
    (channel.id, iran)
}

/// Sends messages from several connections at once until told to stop;
/// every acknowledged id is recorded.
struct Writers {
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    async fn start(server: &Server, token: &str, channel_id: &str, n: usize) -> Writers {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..n {
            let mut c = server.clients(token).await;
            let (acked, stop, channel_id) = (acked.clone(), stop.clone(), channel_id.to_owned());
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let m = c
                        .messages
                        .send_message(send_req(&channel_id, &format!("writer {w} #{i}")))
                        .await
                        .unwrap_or_else(|e| panic!("writer {w}: send #{i} refused: {e}"))
                        .into_inner();
                    acked.lock().unwrap().push(m.id);
                }
            }));
        }
        Writers { acked, stop, tasks }
    }

    fn acked(&self) -> Vec<String> {
        self.acked.lock().unwrap().clone()
    }

    /// Stops the writers; each one's sends all succeeded.
    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("writer");
        }
        self.acked.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_load_restores_every_acknowledged_message() {
    if backend_is_postgres() {
        eprintln!(
            "skipped: backup copies the embedded store; on PostgreSQL it refuses \
             (a_postgres_record_is_refused_with_a_pointer_to_pg_dump)"
        );
        return;
    }
    let (server, token) = server_with_token_file().await;
    let mut admin = server.clients(&token).await;
    let (channel_id, iran) = channel(&mut admin).await;
    let writers = Writers::start(&server, &iran, &channel_id, 4).await;
    eventually("writes to pile up", || {
        let n = writers.acked().len();
        async move { (n >= 400).then_some(()) }
    })
    .await;

    let tmp = tempfile::tempdir().expect("temp dir");
    let dest = tmp.path().join("backup");
    let acked_before: HashSet<String> = writers.acked().into_iter().collect();
    // Small steps: the copy takes many of them, with commits landing between.
    let out = backchannel(&[
        OsStr::new("backup"),
        dest.as_os_str(),
        OsStr::new("--data-dir"),
        server.data_path().as_os_str(),
        OsStr::new("--step-pages"),
        OsStr::new("2"),
    ])
    .await;
    let acked_during = writers.acked().len() - acked_before.len();
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    let (head, events) = summary(&out);
    eprintln!(
        "{} acknowledged before the backup, {acked_during} during it; {}",
        acked_before.len(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert_eq!(events, head, "the copied log has a gap");
    assert!(
        acked_during > 0,
        "the server went on acknowledging writes while the backup ran"
    );
    // Still writing after the backup: the original goes on unaffected.
    let after = writers.acked().len();
    eventually("writes after the backup", || {
        let n = writers.acked().len();
        async move { (n > after).then_some(()) }
    })
    .await;
    let acked_all = writers.finish().await;

    // A complete data directory, private to its owner, with nothing half-made.
    assert_eq!(mode(&dest), 0o700);
    let names: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(names, ["admin.token", "backchannel.db", "signing.key"]);
    for n in &names {
        assert_eq!(mode(&dest.join(n)), 0o600, "{n}");
    }
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());

    // Restore: a second server on the backup, with the copied admin token.
    let restored = Server::start_in(
        dest.clone(),
        Options {
            no_admin_env: true,
            ..Default::default()
        },
    )
    .await;
    let mut restored_admin = restored.clients(&token).await;
    let copied = all_events(&mut restored_admin, Default::default()).await;
    assert_eq!(
        seqs(&copied),
        (1..=head).collect::<Vec<_>>(),
        "restored log is 1..=head"
    );
    assert!(head >= acked_before.len() as u64);
    let sent: HashSet<&str> = copied
        .iter()
        .filter(|e| e.r#type() == pb::event::Type::MessageSent)
        .map(|e| e.message_id.as_str())
        .collect();
    let lost: Vec<&String> = acked_before
        .iter()
        .filter(|id| !sent.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged before the backup, missing from it: {lost:?}"
    );

    // The copy is the original's log up to its head, event for event, and
    // the original kept everything it acknowledged after.
    let original = all_events(&mut admin, Default::default()).await;
    assert_eq!(
        seqs(&original),
        (1..=original.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(&original[..copied.len()], &copied[..]);
    let original_sent = original
        .iter()
        .filter(|e| e.r#type() == pb::event::Type::MessageSent)
        .count();
    assert_eq!(original_sent, acked_all.len());

    // The restored server takes writes of its own.
    let mut restored_iran = restored.clients(&iran).await;
    restored_iran
        .messages
        .send_message(send_req(&channel_id, "after the restore"))
        .await
        .expect("a restored server takes writes");
}

#[tokio::test]
async fn a_stopped_store_backs_up_into_an_empty_directory() {
    if backend_is_postgres() {
        eprintln!("skipped: backup copies the embedded store");
        return;
    }
    let mut server = Server::start().await;
    let mut admin = server.admin().await;
    let (channel_id, iran) = channel(&mut admin).await;
    let mut sender = server.clients(&iran).await;
    for i in 0..5 {
        sender
            .messages
            .send_message(send_req(&channel_id, &format!("#{i}")))
            .await
            .expect("send");
    }
    let head = stream::head(&mut admin).await;
    assert_eq!(server.stop().await, Some(0));

    let tmp = tempfile::tempdir().expect("temp dir");
    let dest = tmp.path().join("backup");
    std::fs::create_dir(&dest).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = backchannel(&[
        OsStr::new("backup"),
        dest.as_os_str(),
        OsStr::new("--data-dir"),
        server.data_path().as_os_str(),
    ])
    .await;
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    assert_eq!(summary(&out), (head, head));
    assert_eq!(mode(&dest), 0o700);
    // The embedded server started with BACKCHANNEL_ADMIN_TOKEN: no token file.
    assert!(!dest.join("admin.token").exists());

    let restored = Server::start_in(dest, Options::default()).await;
    let mut restored_admin = restored.admin().await;
    assert_eq!(stream::head(&mut restored_admin).await, head);
}

#[tokio::test]
async fn a_destination_that_is_not_empty_is_refused_and_left_alone() {
    let server = Server::start().await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let dest = tmp.path().join("backup");
    std::fs::create_dir_all(dest.join("older")).unwrap();
    std::fs::write(dest.join("notes.txt"), "keep me").unwrap();
    std::fs::write(dest.join("older/backchannel.db"), "an older backup").unwrap();
    let before = tree(&dest);

    let out = backchannel(&[
        OsStr::new("backup"),
        dest.as_os_str(),
        OsStr::new("--data-dir"),
        server.data_path().as_os_str(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains(&dest.display().to_string()) && err.contains("not empty"),
        "{err}"
    );
    assert_eq!(tree(&dest), before);
    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());

    // A file where the directory should be is refused too.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let out = backchannel(&[
        OsStr::new("backup"),
        file.as_os_str(),
        OsStr::new("--data-dir"),
        server.data_path().as_os_str(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory");
}

#[tokio::test]
async fn a_missing_or_foreign_data_directory_is_named_and_nothing_is_made() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dest = tmp.path().join("backup");
    let refuse = |data_dir: PathBuf, why: &'static str| {
        let dest = dest.clone();
        async move {
            let out = backchannel(&[
                OsStr::new("backup"),
                dest.as_os_str(),
                OsStr::new("--data-dir"),
                data_dir.as_os_str(),
            ])
            .await;
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            let err = stderr(&out);
            assert!(err.starts_with("error: "), "{err}");
            assert!(err.contains(&data_dir.display().to_string()), "{err}");
            assert!(err.contains(why), "{err}");
            assert!(!dest.exists(), "{} was made", dest.display());
        }
    };

    refuse(tmp.path().join("nowhere"), "does not exist").await;

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    refuse(empty.clone(), "not a backchannel store").await;

    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("backchannel.db"), "no database in here").unwrap();
    refuse(foreign, "not a backchannel store").await;

    assert_eq!(leftovers(tmp.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_postgres_record_is_refused_with_a_pointer_to_pg_dump() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dest = tmp.path().join("backup");
    let url = admin_database_url();
    let out = backchannel(&[
        OsStr::new("backup"),
        dest.as_os_str(),
        OsStr::new("--database-url"),
        OsStr::new(&url),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("pg_dump"), "{}", stderr(&out));
    assert!(!stderr(&out).contains(&url), "the URL may hold a password");
    assert!(!dest.exists());

    // The server's own setting, from the environment, counts the same.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .arg("backup")
        .arg(&dest)
        .env("BACKCHANNEL_DATABASE_URL", &url)
        .output()
        .await
        .expect("run backchannel");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("pg_dump"), "{}", stderr(&out));
    assert!(!dest.exists());
}

#[tokio::test]
async fn a_backup_without_a_destination_is_a_usage_error() {
    let out = backchannel(&["backup"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("DEST"), "{}", stderr(&out));
}
