//! The verifiable record (DESIGN §7) over the real binary: every checkpoint
//! is a signed note whose root is the RFC 9162 head of the events' own
//! bytes, every proof is the one RFC 9162 defines, and the errors come in
//! the contract's order.
//!
//! The expected heads and proofs are computed here from the RFC's recursive
//! definitions over the listed events, not with the server's code.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

use backchannel::audit::merkle;
use backchannel::audit::note::{Checkpoint, NoteSigner, NoteVerifier};
use backchannel::pb;
use common::raw::Rng;
use common::*;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic_types::StatusExt;

type Hash = [u8; 32];

fn sha(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// RFC 9162 §2.1.1: the largest power of two below `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]) over leaf hashes.
fn mth(d: &[Hash]) -> Hash {
    match d.len() {
        0 => sha(&[]),
        1 => d[0],
        n => {
            let k = split(n);
            sha(&[&[1], &mth(&d[..k]), &mth(&d[k..])])
        }
    }
}

/// PATH(m, D[n]) (§2.1.3.1).
fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
    if d.len() <= 1 {
        return Vec::new();
    }
    let k = split(d.len());
    let (mut p, other) = if m < k {
        (path(m, &d[..k]), mth(&d[k..]))
    } else {
        (path(m - k, &d[k..]), mth(&d[..k]))
    };
    p.push(other);
    p
}

/// SUBPROOF(m, D[n], b) (§2.1.4.1).
fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    if m == d.len() {
        return if b { Vec::new() } else { vec![mth(d)] };
    }
    let k = split(d.len());
    let (mut p, other) = if m <= k {
        (subproof(m, &d[..k], b), mth(&d[k..]))
    } else {
        (subproof(m - k, &d[k..], false), mth(&d[..k]))
    };
    p.push(other);
    p
}

/// The events of the whole log as the admin lists them, their stored
/// encodings and leaf hashes.
async fn leaves(admin: &mut Clients) -> (Vec<pb::Event>, Vec<Hash>) {
    let events = all_events(admin, pb::ListEventsRequest::default()).await;
    let hashes = events
        .iter()
        .map(|e| sha(&[&[0], &e.encode_to_vec()]))
        .collect();
    (events, hashes)
}

fn hashes(v: &[Vec<u8>]) -> Vec<Hash> {
    v.iter()
        .map(|h| h.as_slice().try_into().expect("a proof hash is 32 bytes"))
        .collect()
}

/// Checks a checkpoint as a client would: its note verifies with its
/// verifier key and says what its fields say; returns the parsed body.
#[track_caller]
fn checked(c: &pb::Checkpoint, trusted_key: &str) -> Checkpoint {
    assert_eq!(c.verifier_key, trusted_key);
    // A note verified once is not verified again (Ed25519 is slow in a
    // debug build, and the exhaustive test meets each note many times).
    static SEEN: std::sync::Mutex<Vec<(String, String, Checkpoint)>> =
        std::sync::Mutex::new(Vec::new());
    let seen = SEEN
        .lock()
        .unwrap()
        .iter()
        .find_map(|(k, n, cp)| (k == trusted_key && n == &c.note).then(|| cp.clone()));
    if let Some(cp) = seen {
        assert_eq!(
            (cp.origin.as_str(), cp.size, cp.root.as_slice()),
            (c.origin.as_str(), c.tree_size, c.root_hash.as_slice())
        );
        return cp;
    }
    let verifier = NoteVerifier::parse(trusted_key).expect("verifier key parses");
    assert_eq!(verifier.name(), c.origin, "the key name is the origin");
    let body = verifier
        .open(&c.note)
        .expect("the note's signature verifies");
    let cp = Checkpoint::parse(body).expect("the note is a checkpoint");
    assert_eq!(
        (cp.origin.as_str(), cp.size, cp.root.as_slice()),
        (c.origin.as_str(), c.tree_size, c.root_hash.as_slice())
    );
    // C2SP signed-note: body, a blank line, one signature line by the key.
    let sig = c.note.strip_prefix(body).expect("the body comes first");
    let line = sig
        .strip_prefix("\n— ")
        .and_then(|l| l.strip_suffix('\n'))
        .expect("one signature line after a blank line");
    assert!(!line.contains('\n'), "one signature: {:?}", c.note);
    assert!(line.starts_with(&format!("{} ", c.origin)));
    SEEN.lock()
        .unwrap()
        .push((trusted_key.to_owned(), c.note.clone(), cp.clone()));
    cp
}

async fn checkpoint(c: &mut Clients, size: u64) -> Result<pb::Checkpoint, tonic::Status> {
    c.audit
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: size })
        .await
        .map(|r| r.into_inner())
}

async fn inclusion(
    c: &mut Clients,
    sequence: u64,
    tree_size: u64,
) -> Result<pb::InclusionProof, tonic::Status> {
    c.audit
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            sequence,
            tree_size,
        })
        .await
        .map(|r| r.into_inner())
}

async fn consistency(
    c: &mut Clients,
    first_size: u64,
    second_size: u64,
) -> Result<pb::ConsistencyProof, tonic::Status> {
    c.audit
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            first_size,
            second_size,
        })
        .await
        .map(|r| r.into_inner())
}

/// Checks one inclusion proof against the expected leaves: the event is
/// the listed one, the path is RFC 9162's, and it verifies against the
/// signed checkpoint it came with.
#[track_caller]
fn check_inclusion(p: &pb::InclusionProof, events: &[pb::Event], d: &[Hash], key: &str) {
    let (seq, size) = (p.sequence as usize, p.tree_size as usize);
    assert_eq!(p.leaf_index, p.sequence - 1);
    let e = pb::Event::decode(p.event.as_slice()).expect("the leaf data is an Event");
    assert_eq!(e, events[seq - 1], "event {seq}");
    let leaf = sha(&[&[0], &p.event]);
    assert_eq!(leaf, d[seq - 1], "event {seq}'s bytes are the listed ones");
    let proof = hashes(&p.hashes);
    assert_eq!(
        proof,
        path(seq - 1, &d[..size]),
        "PATH({}, {size})",
        seq - 1
    );
    let cp = checked(p.checkpoint.as_ref().expect("a checkpoint"), key);
    assert_eq!(cp.size, p.tree_size);
    merkle::verify_inclusion(p.leaf_index, p.tree_size, &leaf, &proof, &cp.root)
        .expect("the inclusion proof verifies");
}

/// Every checkpoint of every size, every inclusion proof of every event at
/// every size that holds it, and every consistency proof between two sizes,
/// in a log of about 40 events, as the admin sees them.
#[tokio::test]
async fn every_checkpoint_and_proof_of_a_small_log_verifies() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let head = grow(&mut w, 40).await;
    let (events, d) = leaves(&mut w.admin).await;
    assert_eq!(events.len() as u64, head);
    let head_cp = checkpoint(&mut w.admin, 0).await.expect("head checkpoint");
    let key = head_cp.verifier_key.clone();
    assert_eq!(head_cp.tree_size, head);
    assert!(
        head_cp.origin.starts_with("backchannel/"),
        "{}",
        head_cp.origin
    );
    let mut roots = vec![mth(&[])];
    for size in 1..=head {
        let c = checkpoint(&mut w.admin, size).await.expect("checkpoint");
        let cp = checked(&c, &key);
        assert_eq!(cp.size, size);
        assert_eq!(cp.root, mth(&d[..size as usize]), "root at {size}");
        roots.push(cp.root);
        // One size, one note (Ed25519 is deterministic).
        assert_eq!(checkpoint(&mut w.admin, size).await.unwrap().note, c.note);
    }
    assert_eq!(
        head_cp.note,
        checkpoint(&mut w.admin, head).await.unwrap().note
    );
    for size in 1..=head {
        for seq in 1..=size {
            let p = inclusion(&mut w.admin, seq, size).await.expect("proof");
            assert_eq!((p.sequence, p.tree_size), (seq, size));
            check_inclusion(&p, &events, &d, &key);
        }
    }
    // tree_size 0: at the head.
    let p = inclusion(&mut w.admin, 1, 0)
        .await
        .expect("proof at the head");
    assert_eq!(p.tree_size, head);
    check_inclusion(&p, &events, &d, &key);
    for second in 1..=head {
        for first in 1..=second {
            let p = consistency(&mut w.admin, first, second)
                .await
                .expect("consistency");
            assert_eq!((p.first_size, p.second_size), (first, second));
            let proof = hashes(&p.hashes);
            assert_eq!(
                proof,
                subproof(first as usize, &d[..second as usize], true),
                "PROOF({first}, {second})"
            );
            let cp = checked(p.checkpoint.as_ref().expect("a checkpoint"), &key);
            assert_eq!(cp.size, second);
            merkle::verify_consistency(first, second, &proof, &roots[first as usize], &cp.root)
                .expect("the consistency proof verifies");
        }
    }
    let p = consistency(&mut w.admin, 3, 0).await.expect("to the head");
    assert_eq!(p.second_size, head);
}

/// Random proofs in a log of about 3,000 events.
#[tokio::test]
async fn random_proofs_in_a_larger_log_verify() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    // Concurrent senders, to fill the log quickly (and in batches).
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut iran = w.iran.clone();
        let channel = w.channel.id.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..375 {
                iran.messages
                    .send_message(send_req(&channel, &format!("writer {t} message {i}")))
                    .await
                    .expect("send");
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
    let (events, d) = leaves(&mut w.admin).await;
    let head = events.len() as u64;
    assert!(head >= 3000, "{head}");
    let key = checkpoint(&mut w.admin, 0).await.unwrap().verifier_key;
    let mut rng = Rng(0x5eed_0013);
    for _ in 0..150 {
        let size = 1 + rng.below(head);
        let seq = 1 + rng.below(size);
        let p = inclusion(&mut w.admin, seq, size).await.expect("proof");
        check_inclusion(&p, &events, &d, &key);
        let first = 1 + rng.below(size);
        let c = consistency(&mut w.admin, first, size).await.expect("proof");
        let proof = hashes(&c.hashes);
        assert_eq!(
            proof,
            subproof(first as usize, &d[..size as usize], true),
            "PROOF({first}, {size})"
        );
        let cp = checked(c.checkpoint.as_ref().unwrap(), &key);
        assert_eq!(cp.root, mth(&d[..size as usize]));
        merkle::verify_consistency(first, size, &proof, &mth(&d[..first as usize]), &cp.root)
            .expect("the consistency proof verifies");
    }
}

/// The `BadRequest` field of an `INVALID_FIELD` refusal.
#[track_caller]
fn bad_field(r: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let s = r.expect_err("a malformed request");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert_eq!(reason(&s), "INVALID_FIELD", "{s:?}");
    let details = s.get_error_details();
    let fields: Vec<&str> = details
        .bad_request()
        .expect("a BadRequest")
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, [field], "{s:?}");
}

/// `OUT_OF_RANGE` `TREE_SIZE_BEYOND_HEAD`, with the head in the metadata.
#[track_caller]
fn beyond(r: Result<impl std::fmt::Debug, tonic::Status>, head: u64) {
    let s = r.expect_err("a size past the head");
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    assert_eq!(reason(&s), "TREE_SIZE_BEYOND_HEAD", "{s:?}");
    let details = s.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(
        info.metadata.get("head_sequence"),
        Some(&head.to_string()),
        "{s:?}"
    );
}

#[tokio::test]
async fn audit_refusals_come_in_the_contracts_order() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    // A channel iran is not on, with a message.
    let other = aside_channel(&mut w).await;
    w.france
        .messages
        .send_message(send_req(&other.id, "not for Tehran"))
        .await
        .expect("send");
    let head = grow(&mut w, 12).await;
    let (events, d) = leaves(&mut w.admin).await;

    // Unauthenticated, whatever else is wrong with the request.
    let mut anon = server.anonymous().await;
    assert_err(
        checkpoint(&mut anon, 0).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    assert_err(
        inclusion(&mut anon, 0, 0).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    assert_err(
        consistency(&mut anon, 0, 0).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );

    // The request alone malformed, before any size against the head.
    bad_field(inclusion(&mut w.iran, 0, 0).await, "sequence");
    bad_field(inclusion(&mut w.iran, 0, head + 5).await, "sequence");
    bad_field(inclusion(&mut w.iran, 5, 4).await, "tree_size");
    bad_field(
        inclusion(&mut w.iran, head + 9, head + 8).await,
        "tree_size",
    );
    bad_field(consistency(&mut w.iran, 0, 3).await, "first_size");
    bad_field(consistency(&mut w.iran, 0, 0).await, "first_size");
    bad_field(consistency(&mut w.iran, 4, 3).await, "second_size");
    bad_field(
        consistency(&mut w.iran, head + 9, head + 8).await,
        "second_size",
    );

    // Sizes against the head.
    beyond(checkpoint(&mut w.iran, head + 1).await, head);
    beyond(inclusion(&mut w.iran, 1, head + 1).await, head);
    beyond(inclusion(&mut w.iran, head + 1, 0).await, head);
    beyond(consistency(&mut w.iran, 1, head + 1).await, head);
    beyond(consistency(&mut w.iran, head + 1, 0).await, head);
    // …before visibility: the outsider learns the head, as from a checkpoint.
    beyond(inclusion(&mut w.outsider, head + 1, 0).await, head);

    // Equal sizes: an empty proof.
    let p = consistency(&mut w.iran, head, head)
        .await
        .expect("equal sizes");
    assert!(p.hashes.is_empty());

    // Any party gets checkpoints and consistency proofs.
    let key = checkpoint(&mut w.admin, 0).await.unwrap().verifier_key;
    for c in [&mut w.outsider, &mut w.japan] {
        let cp = checked(&checkpoint(c, 0).await.expect("checkpoint"), &key);
        assert_eq!(cp.root, mth(&d));
        consistency(c, 1, 0).await.expect("consistency");
    }

    // Inclusion only of what the caller may see; the same refusal for every
    // event it may not see.
    let mut refusals = Vec::new();
    for e in &events {
        let party_view = stream::visible(e, Some("iran"));
        match inclusion(&mut w.iran, e.sequence, 0).await {
            Ok(p) => {
                assert!(party_view, "iran got event {}", e.sequence);
                check_inclusion(&p, &events, &d, &key);
            }
            Err(s) => {
                assert!(!party_view, "iran refused its event {}: {s:?}", e.sequence);
                refusals.push(s);
            }
        }
        let s = inclusion(&mut w.outsider, e.sequence, 0)
            .await
            .expect_err("the outsider sees nothing");
        refusals.push(s);
    }
    assert!(
        refusals.len() > events.len(),
        "iran was refused something too"
    );
    let first = &refusals[0];
    assert_eq!(first.code(), Code::NotFound, "{first:?}");
    assert_eq!(reason(first), "EVENT_NOT_FOUND");
    for s in &refusals {
        assert_eq!(
            (s.code(), s.message(), s.details()),
            (first.code(), first.message(), first.details()),
            "every refusal alike"
        );
    }
}

/// The data directory's `signing.key` (0600, in sumdb/note's form) signs
/// every checkpoint, across restarts; an existing store's tree is rebuilt
/// by the migration to the same heads.
#[tokio::test]
async fn the_key_and_the_tree_survive_a_restart_and_the_migration_rebuilds_the_tree() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let head = grow(&mut w, 30).await;
    let mut notes = Vec::new();
    for size in 1..=head {
        notes.push(checkpoint(&mut w.admin, size).await.unwrap().note);
    }
    let key = checkpoint(&mut w.admin, 0).await.unwrap().verifier_key;
    if server.database().is_none() {
        let file = server.data_path().join("signing.key");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&file).unwrap();
        let signer = NoteSigner::parse(text.trim()).expect("a sumdb/note private key");
        assert_eq!(signer.verifier().encode(), key);
        assert!(text.starts_with("PRIVATE+KEY+backchannel/"), "{text}");
    }
    let logged = server.log.lock().unwrap().iter().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        v["verifier_key"].as_str().map(str::to_owned)
    });
    assert_eq!(
        logged.as_deref(),
        Some(key.as_str()),
        "the key is logged at start"
    );

    let mut server = server.restart().await;
    let mut admin = server.admin().await;
    for size in 1..=head {
        assert_eq!(
            checkpoint(&mut admin, size).await.unwrap().note,
            notes[size as usize - 1]
        );
    }

    // Take the store back to before the tree, and start again.
    server.stop().await;
    match server.database() {
        None => {
            let db = rusqlite::Connection::open(server.data_path().join("backchannel.db")).unwrap();
            db.execute_batch("DROP TABLE tree_nodes; PRAGMA user_version = 5;")
                .unwrap();
        }
        Some(db) => {
            backchannel_testkit::on_server(&db.url, |c| {
                c.batch_execute(
                    "DROP TABLE tree_nodes; ALTER TABLE log_head DROP COLUMN tree_size; \
                     DELETE FROM schema_migrations WHERE version = 4;",
                )
            })
            .unwrap();
        }
    }
    let server = server.restart().await;
    let mut admin = server.admin().await;
    for size in 1..=head {
        assert_eq!(
            checkpoint(&mut admin, size).await.unwrap().note,
            notes[size as usize - 1],
            "size {size} after the rebuild"
        );
    }
    // And the rebuilt tree goes on growing.
    let mut w2 = World {
        admin,
        iran: server.clients(&w.tokens["iran"]).await,
        france: server.clients(&w.tokens["france"]).await,
        ..w
    };
    let more = grow(&mut w2, head + 7).await;
    let (_, d) = leaves(&mut w2.admin).await;
    let cp = checked(&checkpoint(&mut w2.admin, 0).await.unwrap(), &key);
    assert_eq!((cp.size, cp.root), (more, mth(&d)));
}

/// A key given by file, with its origin, signs; one whose name is not the
/// origin is refused at start, naming the flag.
#[tokio::test]
async fn a_given_key_signs_and_a_key_for_another_origin_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = "example.org/backchannel-test";
    let signer = NoteSigner::from_seed(origin, [7; 32]).unwrap();
    let key_file = tmp.path().join("given.key");
    std::fs::write(&key_file, signer.encode() + "\n").unwrap();
    let server = Server::start_with(Options {
        args: vec![
            "--signing-key".into(),
            key_file.display().to_string(),
            "--log-origin".into(),
            origin.into(),
        ],
        ..Default::default()
    })
    .await;
    let mut admin = server.admin().await;
    let c = checkpoint(&mut admin, 0).await.unwrap();
    assert_eq!(c.origin, origin);
    assert_eq!(c.verifier_key, signer.verifier().encode());
    checked(&c, &signer.verifier().encode());
    if server.database().is_none() {
        assert!(!server.data_path().join("signing.key").exists());
    }

    let data = tmp.path().join("data");
    let (code, text) = refused_start(
        &data,
        &[
            "--signing-key",
            &key_file.display().to_string(),
            "--log-origin",
            "another.example/log",
        ],
    )
    .await;
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("--log-origin"), "{text}");
    assert!(text.contains(origin), "{text}");
    let (code, text) = refused_start(&data, &["--signing-key", "/nonexistent/key"]).await;
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("/nonexistent/key"), "{text}");
}

/// Replicas on PostgreSQL sharing a key sign byte-identical checkpoints,
/// and the consistency proofs of one verify against the other's heads.
#[tokio::test]
async fn replicas_sharing_a_key_give_identical_checkpoints() {
    if !postgres_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let origin = "example.org/replicated";
    let signer = NoteSigner::from_seed(origin, [42; 32]).unwrap();
    let key_file = tmp.path().join("shared.key");
    std::fs::write(&key_file, signer.encode()).unwrap();
    let replicas = Server::start_postgres_replicas_with(
        2,
        Options {
            args: vec![
                "--signing-key".into(),
                key_file.display().to_string(),
                "--log-origin".into(),
                origin.into(),
            ],
            ..Default::default()
        },
    )
    .await;
    let mut w = world(&replicas[0]).await;
    grow(&mut w, 12).await;
    // Both replicas append, concurrently and in turns: each writer's edge
    // of the tree goes stale when the other commits, and must be read again.
    let mut via_other = replicas[1].clients(&w.tokens["iran"]).await;
    let mut via_first = w.iran.clone();
    let channel = w.channel.id.clone();
    for round in 0..6 {
        let (a, b) = tokio::join!(
            via_first
                .messages
                .send_message(send_req(&channel, &format!("first {round}"))),
            via_other
                .messages
                .send_message(send_req(&channel, &format!("other {round}"))),
        );
        a.expect("send through the first replica");
        b.expect("send through the other replica");
        via_other
            .messages
            .send_message(send_req(&channel, &format!("other again {round}")))
            .await
            .expect("send");
    }
    let head = grow(&mut w, 35).await;
    let key = signer.verifier().encode();
    let mut other = replicas[1].admin().await;
    eventually("the second replica at the head", || {
        let mut other = other.clone();
        async move { (stream::head(&mut other).await >= head).then_some(()) }
    })
    .await;
    let (_, d) = leaves(&mut w.admin).await;
    assert_eq!(d.len() as u64, head);
    let mut mine: HashMap<u64, Checkpoint> = HashMap::new();
    for size in 1..=head {
        let a = checkpoint(&mut w.admin, size).await.unwrap();
        let b = checkpoint(&mut other, size).await.unwrap();
        assert_eq!(a.note, b.note, "size {size}");
        let cp = checked(&a, &key);
        assert_eq!(cp.root, mth(&d[..size as usize]), "the root at {size}");
        mine.insert(size, cp);
    }
    for (first, second) in [(1, head), (5, 17), (13, 30), (head - 1, head), (8, 9)] {
        let p = consistency(&mut other, first, second).await.unwrap();
        merkle::verify_consistency(
            first,
            second,
            &hashes(&p.hashes),
            &mine[&first].root,
            &mine[&second].root,
        )
        .expect("the other replica's proof verifies against this one's heads");
    }
}

/// Replicas each with a key of their own would sign different notes: the
/// server warns when none is given on PostgreSQL.
#[tokio::test]
async fn a_replica_without_a_given_key_warns() {
    if !postgres_available() {
        return;
    }
    let server = Server::start_postgres_with(Options::default()).await;
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("BACKCHANNEL_SIGNING_KEY_FILE")),
        "{:?}",
        server.log.lock().unwrap()
    );
}

/// Replicas of the version before the tree appended events without its
/// nodes while a new one migrated (a rolling upgrade): the next write of a
/// new replica completes the tree from the events' leaf hashes.
#[tokio::test]
async fn a_tree_left_behind_by_older_replicas_is_completed_by_the_next_write() {
    if !postgres_available() {
        return;
    }
    let server = Server::start_postgres_with(Options::default()).await;
    let mut w = world(&server).await;
    let head = grow(&mut w, 20).await;
    let mut server = server;
    server.stop().await;
    // The nodes of leaves 9 on (0-based) as if never written, and the tree
    // said to cover 9 leaves.
    let url = server.database().unwrap().url.clone();
    backchannel_testkit::on_server(&url, |c| {
        c.batch_execute(
            "DELETE FROM tree_nodes WHERE last_leaf >= 9; UPDATE log_head SET tree_size = 9;",
        )
    })
    .unwrap();
    let server = server.restart().await;
    let mut w = World {
        admin: server.admin().await,
        iran: server.clients(&w.tokens["iran"]).await,
        france: server.clients(&w.tokens["france"]).await,
        ..w
    };
    let more = grow(&mut w, head + 1).await;
    let (_, d) = leaves(&mut w.admin).await;
    let key = checkpoint(&mut w.admin, 0).await.unwrap().verifier_key;
    for size in 1..=more {
        let cp = checked(&checkpoint(&mut w.admin, size).await.unwrap(), &key);
        assert_eq!(cp.root, mth(&d[..size as usize]), "the root at {size}");
    }
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("completing it")),
        "the catch-up is logged"
    );
    let size: i64 = backchannel_testkit::on_server(&url, |c| {
        c.query_one("SELECT tree_size FROM log_head", &[])
            .map(|r| r.get(0))
    })
    .unwrap();
    assert_eq!(size as u64, more);
}
