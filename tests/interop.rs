//! Interoperability shown, not claimed (DESIGN §7): the server's signed
//! checkpoints and its inclusion and consistency proofs verify with Go's
//! `golang.org/x/mod/sumdb/note` and `sumdb/tlog`, the code behind Go's
//! checksum database, and that code rejects them once tampered with.
//!
//! `tests/interop/verify.go` is the verifier; it is built here, in GOPATH
//! mode against Debian's `golang-golang-x-mod-dev`, into
//! `target/tools/interop-verify`. It needs `go` on `PATH` and the x/mod
//! source in `/usr/share/gocode`; `./scripts/test.sh` installs both (apt).
//! Without them a plain `cargo test` skips these tests, saying how to get
//! them; the script (which sets `BACKCHANNEL_REQUIRE_TOOLS`) fails them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use backchannel::pb;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use serde_json::{Value, json};

/// The Go program that verifies.
const VERIFY_GO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/verify.go");

/// The GOPATH of Debian's Go library packages, which holds x/mod.
const GOPATH: &str = "/usr/share/gocode";

/// The tree sizes at which every event's inclusion is proved (the head
/// too).
const INCLUSION_SIZES: [u64; 3] = [1, 7, 16];

/// `target/tools`, whichever target directory this test was built in
/// (`CARGO_TARGET_TMPDIR` is its `tmp/`).
fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("tools")
}

/// Whether Go and x/mod's sumdb packages are here; a test without them is
/// skipped, saying how to get them (`./scripts/test.sh` requires them).
fn have_go() -> bool {
    let go = std::process::Command::new("go")
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    let xmod = Path::new(GOPATH)
        .join("src/golang.org/x/mod/sumdb/note")
        .is_dir();
    backchannel_testkit::tool_available(
        "Go with golang.org/x/mod",
        go && xmod,
        "these tests need `go` on PATH and golang.org/x/mod in /usr/share/gocode: \
         apt-get install golang-go golang-golang-x-mod-dev, or run ./scripts/test.sh, \
         which does",
    )
}

/// The built verifier, `target/tools/interop-verify`: built once per test
/// process, into a name of its own and renamed into place, so that test
/// processes running side by side never run a half-written binary.
fn verifier() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let tools = tools_dir();
        std::fs::create_dir_all(&tools).expect("create target/tools");
        let bin = tools.join("interop-verify");
        let partial = tools.join(format!("interop-verify.{}", std::process::id()));
        let out = std::process::Command::new("go")
            .args(["build", "-o"])
            .arg(&partial)
            .arg(VERIFY_GO)
            .env("GO111MODULE", "off")
            .env("GOPATH", GOPATH)
            .env("GOCACHE", tools.join("go-cache"))
            .env_remove("GOFLAGS")
            .stdin(Stdio::null())
            .output()
            .expect("run go build");
        assert!(
            out.status.success(),
            "go build {VERIFY_GO} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&partial, &bin).expect("move the verifier into place");
        bin
    })
}

/// What the Go verifier is given, as the server sent it: the verifier key,
/// the head's checkpoint, inclusion proofs and consistency proofs (each
/// with the note of its first size beside it).
#[derive(Clone)]
struct Evidence {
    /// `Checkpoint.verifier_key`.
    key: String,
    /// The head checkpoint's signed note.
    checkpoint: String,
    /// Inclusion proofs, each with the checkpoint of its size.
    inclusion: Vec<pb::InclusionProof>,
    /// Consistency proofs (with the second size's checkpoint) and the
    /// signed note of the first size.
    consistency: Vec<(pb::ConsistencyProof, String)>,
}

impl Evidence {
    /// The JSON that `verify.go` reads (bytes in standard base64).
    fn to_json(&self) -> Value {
        let b64 = |v: &[Vec<u8>]| v.iter().map(|h| B64.encode(h)).collect::<Vec<_>>();
        let note = |c: &Option<pb::Checkpoint>| c.as_ref().expect("a checkpoint").note.clone();
        json!({
            "verifier_key": self.key,
            "checkpoint": self.checkpoint,
            "inclusion": self.inclusion.iter().map(|p| json!({
                "leaf_index": p.leaf_index,
                "tree_size": p.tree_size,
                "event": B64.encode(&p.event),
                "hashes": b64(&p.hashes),
                "note": note(&p.checkpoint),
            })).collect::<Vec<_>>(),
            "consistency": self.consistency.iter().map(|(p, first)| json!({
                "first_size": p.first_size,
                "second_size": p.second_size,
                "hashes": b64(&p.hashes),
                "first_note": first,
                "second_note": note(&p.checkpoint),
            })).collect::<Vec<_>>(),
        })
    }

    /// The number of checks the verifier makes: the head, then one per
    /// proof.
    fn checks(&self) -> usize {
        1 + self.inclusion.len() + self.consistency.len()
    }

    /// The inclusion proof of `leaf_index` at `tree_size`.
    fn inclusion_mut(&mut self, leaf_index: u64, tree_size: u64) -> &mut pb::InclusionProof {
        self.inclusion
            .iter_mut()
            .find(|p| (p.leaf_index, p.tree_size) == (leaf_index, tree_size))
            .expect("that inclusion proof was collected")
    }
}

/// What a run of the verifier said.
struct Verdict {
    /// Whether it exited 0.
    passed: bool,
    /// Its standard output and error.
    output: String,
}

/// Runs the Go verifier on `evidence`.
async fn verify(evidence: &Evidence) -> Verdict {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("evidence.json");
    std::fs::write(&file, evidence.to_json().to_string()).expect("write the evidence");
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(verifier())
            .arg(&file)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the verifier finished in time")
    .expect("run the verifier");
    Verdict {
        passed: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The signed checkpoint of `tree_size` (0: the head).
async fn checkpoint(admin: &mut Clients, tree_size: u64) -> pb::Checkpoint {
    admin
        .audit
        .get_checkpoint(pb::GetCheckpointRequest { tree_size })
        .await
        .unwrap_or_else(|e| panic!("checkpoint of size {tree_size}: {e}"))
        .into_inner()
}

/// A log of about 30 events, and the evidence over it: the head, every
/// event's inclusion at the head and at [`INCLUSION_SIZES`], and
/// consistency between several pairs of sizes (equal ones too). Returns it
/// with the head.
async fn evidence(server: &Server) -> (Evidence, u64) {
    let mut w = world(server).await;
    let head = grow(&mut w, 30).await;
    let admin = &mut w.admin;
    let head_cp = checkpoint(admin, 0).await;
    assert_eq!(head_cp.tree_size, head);
    let mut inclusion = Vec::new();
    for size in INCLUSION_SIZES.into_iter().chain([head]) {
        for sequence in 1..=size {
            let p = admin
                .audit
                .get_inclusion_proof(pb::GetInclusionProofRequest {
                    sequence,
                    tree_size: size,
                })
                .await
                .unwrap_or_else(|e| panic!("inclusion of {sequence} at {size}: {e}"))
                .into_inner();
            inclusion.push(p);
        }
    }
    let mut consistency = Vec::new();
    for (first_size, second_size) in [
        (1, 1),
        (1, 2),
        (3, 7),
        (7, 16),
        (13, head),
        (16, head - 1),
        (16, head),
        (head - 1, head),
        (head, head),
    ] {
        let p = admin
            .audit
            .get_consistency_proof(pb::GetConsistencyProofRequest {
                first_size,
                second_size,
            })
            .await
            .unwrap_or_else(|e| panic!("consistency of {first_size} with {second_size}: {e}"))
            .into_inner();
        let first = checkpoint(admin, first_size).await.note;
        consistency.push((p, first));
    }
    let evidence = Evidence {
        key: head_cp.verifier_key,
        checkpoint: head_cp.note,
        inclusion,
        consistency,
    };
    (evidence, head)
}

/// `note` with its tree size line (the second) one larger: the signature
/// no longer covers it.
fn with_size_changed(note: &str) -> String {
    let mut lines: Vec<String> = note.split('\n').map(str::to_owned).collect();
    let size: u64 = lines[1].parse().expect("the second line is the size");
    lines[1] = (size + 1).to_string();
    lines.join("\n")
}

#[tokio::test]
async fn go_sumdb_verifies_the_checkpoint_and_every_proof() {
    if !have_go() {
        return;
    }
    // Built before the server starts: the build blocks this thread.
    verifier();
    let server = Server::start().await;
    let (evidence, head) = evidence(&server).await;
    let v = verify(&evidence).await;
    assert!(v.passed, "the Go verifier failed:\n{}", v.output);
    let key_name = evidence.key.split('+').next().expect("a key name");
    assert!(
        v.output
            .lines()
            .next()
            .is_some_and(|l| l.starts_with(&format!("ok checkpoint: {key_name}, size {head}, "))),
        "{}",
        v.output
    );
    assert!(
        v.output.contains(&format!(
            "ok inclusion of leaf {} in tree {head}\n",
            head - 1
        )),
        "{}",
        v.output
    );
    assert!(
        v.output
            .ends_with(&format!("\nall {} checks passed\n", evidence.checks())),
        "{}",
        v.output
    );
}

#[tokio::test]
async fn go_sumdb_rejects_a_tampered_event_proof_or_checkpoint() {
    if !have_go() {
        return;
    }
    // Built before the server starts: the build blocks this thread.
    verifier();
    let server = Server::start().await;
    let (evidence, head) = evidence(&server).await;
    assert!(verify(&evidence).await.passed, "untampered, it verifies");

    let mut cases: Vec<(&str, Evidence, String)> = Vec::new();
    let mut e = evidence.clone();
    let p = e.inclusion_mut(12, head);
    let mid = p.event.len() / 2;
    p.event[mid] ^= 0x01;
    cases.push((
        "a flipped byte in an event",
        e,
        format!("FAIL inclusion of leaf 12 in tree {head}: invalid transparency proof"),
    ));
    let mut e = evidence.clone();
    e.inclusion_mut(5, 16).hashes[1][0] ^= 0x80;
    cases.push((
        "a wrong hash in an inclusion proof",
        e,
        "FAIL inclusion of leaf 5 in tree 16: invalid transparency proof".into(),
    ));
    let mut e = evidence.clone();
    let (p, _) = e
        .consistency
        .iter_mut()
        .find(|(p, _)| (p.first_size, p.second_size) == (7, 16))
        .expect("consistency of 7 with 16");
    p.hashes[0][31] ^= 0x01;
    cases.push((
        "a wrong hash in a consistency proof",
        e,
        "FAIL consistency of tree 7 with tree 16: invalid transparency proof".into(),
    ));
    let mut e = evidence.clone();
    e.checkpoint = with_size_changed(&e.checkpoint);
    cases.push((
        "the head checkpoint with its size changed",
        e,
        "FAIL checkpoint: invalid signature".into(),
    ));
    let mut e = evidence.clone();
    let p = e.inclusion_mut(3, 7);
    let cp = p.checkpoint.as_mut().expect("a checkpoint");
    cp.note = with_size_changed(&cp.note);
    cases.push((
        "a proof's checkpoint with its size changed",
        e,
        "FAIL inclusion of leaf 3 in tree 7: invalid signature".into(),
    ));

    for (what, tampered, says) in cases {
        let v = verify(&tampered).await;
        assert!(!v.passed, "{what}: the Go verifier passed:\n{}", v.output);
        assert!(
            v.output.contains(&says),
            "{what}: the Go verifier did not say {says:?}:\n{}",
            v.output
        );
    }
}
