//! `backchannel audit` (DESIGN §7): the reference verifier of the record.
//!
//! It trusts nothing the server says that it has not checked itself: the
//! checkpoint's signature against the key it trusts (given, or pinned on
//! first use in its state file), the new tree against the last checkpoint it
//! trusted (a consistency proof), and every event it checks against the tree
//! (an inclusion proof, and the proven bytes compared with what `ListEvents`
//! lists). A problem found is one line naming its kind and where, and exit
//! status 3.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

use super::connect::{Client, connect};
use super::output::{Out, line};
use super::{AuditArgs, CliError, ClientArgs};
use crate::audit::merkle::{self, Frontier, Hash};
use crate::audit::note::{Checkpoint, NoteVerifier};
use crate::pb;

/// Inclusion proofs asked for at once.
const IN_FLIGHT: usize = 32;

/// The most events a verdict names.
const MAX_NAMED: usize = 16;

/// How far past the first failed proof the audit looks for the others an
/// altered event breaks (its neighbours within the subtrees of its path).
const NEIGHBOURHOOD: u64 = 64;

/// How often a rate-limited proof is asked for again.
const RETRIES: u32 = 200;

/// The kinds of problem an audit tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The tree does not extend the one trusted before: history was
    /// rewritten, or the server shows different trees to different callers.
    Forked,
    /// An event is not what the tree holds, is damaged, or is missing.
    Altered,
    /// The checkpoint is not signed by the trusted key.
    BadSignature,
    /// The server's tree is smaller than one trusted before.
    Behind,
}

impl Kind {
    /// The verdict's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Forked => "FORKED",
            Kind::Altered => "ALTERED",
            Kind::BadSignature => "BAD_SIGNATURE",
            Kind::Behind => "BEHIND",
        }
    }
}

/// A problem an audit found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What kind.
    pub kind: Kind,
    /// Where: `at sequence 17`, `at size 40`.
    pub place: String,
    /// What was found.
    pub message: String,
}

impl Problem {
    fn at_event(kind: Kind, sequence: u64, message: impl Into<String>) -> Problem {
        Problem {
            kind,
            place: format!("at sequence {sequence}"),
            message: message.into(),
        }
    }

    fn at_size(kind: Kind, size: u64, message: impl Into<String>) -> Problem {
        Problem {
            kind,
            place: format!("at size {size}"),
            message: message.into(),
        }
    }

    /// The verdict line.
    pub fn line(&self) -> String {
        format!(
            "audit: {} {}: {}",
            self.kind.name(),
            self.place,
            self.message
        )
    }
}

/// What an audit remembers between runs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct State {
    /// Whose audit it is (a party's id, or `admin`): what it verified
    /// depends on what the caller may see.
    caller: String,
    /// The verifier key trusted.
    verifier_key: String,
    /// The last checkpoint trusted (its signed note).
    checkpoint: String,
    /// The sequences whose inclusion an unfiltered audit verified.
    verified: BTreeSet<u64>,
}

impl State {
    fn load(path: &Path) -> Result<Option<State>, CliError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CliError::Local(format!(
                    "cannot read the audit state {}: {e}",
                    path.display()
                )));
            }
        };
        let bad = |what: &str| {
            CliError::Local(format!(
                "the audit state {} is damaged ({what}); move it away to start again \
                 (the next audit then trusts the server's key on first use)",
                path.display()
            ))
        };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| bad("not JSON"))?;
        let field = |name: &str| {
            v[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(&format!("no {name}")))
        };
        Ok(Some(State {
            caller: field("caller")?,
            verifier_key: field("verifierKey")?,
            checkpoint: field("checkpoint")?,
            verified: parse_ranges(&field("verified")?).ok_or_else(|| bad("verified"))?,
        }))
    }

    /// Writes the state whole or not at all (a temporary file renamed).
    fn save(&self, path: &Path) -> Result<(), CliError> {
        let fail = |e: std::io::Error| {
            CliError::Local(format!(
                "cannot save the audit state {}: {e}",
                path.display()
            ))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let text = serde_json::json!({
            "caller": self.caller,
            "verifierKey": self.verifier_key,
            "checkpoint": self.checkpoint,
            "verified": format_ranges(&self.verified),
        })
        .to_string();
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(fail)?;
            f.write_all(text.as_bytes()).map_err(fail)?;
            f.write_all(b"\n").map_err(fail)?;
            f.sync_all().map_err(fail)?;
        }
        std::fs::rename(&tmp, path).map_err(fail)
    }
}

/// `1-40,45,47-50`.
fn format_ranges(set: &BTreeSet<u64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end += 1;
            it.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

fn parse_ranges(text: &str) -> Option<BTreeSet<u64>> {
    let mut set = BTreeSet::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (a, b): (u64, u64) = match part.split_once('-') {
            Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
            None => {
                let n = part.parse().ok()?;
                (n, n)
            }
        };
        if a > b || b - a > 100_000_000 {
            return None;
        }
        set.extend(a..=b);
    }
    Some(set)
}

/// The default state file: one per server address and caller, under the
/// user's state directory.
fn default_state(url: &str, caller: &str) -> Result<PathBuf, CliError> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .ok_or_else(|| CliError::usage("no HOME nor XDG_STATE_HOME: give --state FILE"))?;
    let name: String = format!("{url}-{caller}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Ok(base.join("backchannel/audit").join(format!("{name}.json")))
}

/// A checkpoint note opened with the trusted key: its checkpoint, or the
/// problem.
fn open(key: &NoteVerifier, note: &str, size: u64) -> Result<Checkpoint, Problem> {
    let body = key.open(note).map_err(|e| {
        Problem::at_size(
            Kind::BadSignature,
            size,
            format!(
                "the checkpoint is not signed by the trusted key {} ({e})",
                key.encode()
            ),
        )
    })?;
    let cp = Checkpoint::parse(body).map_err(|e| {
        Problem::at_size(
            Kind::BadSignature,
            size,
            format!("the signed note is not a checkpoint ({e})"),
        )
    })?;
    if cp.origin != key.name() {
        return Err(Problem::at_size(
            Kind::BadSignature,
            cp.size,
            format!(
                "the checkpoint is of the log {:?}, not of {:?}, the trusted key's",
                cp.origin,
                key.name()
            ),
        ));
    }
    Ok(cp)
}

/// The sequence a `DATA_LOSS` refusal names (`#17`), if it names one.
fn damaged_sequence(s: &tonic::Status) -> Option<u64> {
    let rest = &s.message()[s.message().find('#')? + 1..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A `DATA_LOSS` refusal of a checkpoint or a proof: the tree (or an event
/// under it) is damaged.
fn tree_damaged(s: &tonic::Status) -> Problem {
    match damaged_sequence(s) {
        Some(seq) => data_loss(s, seq),
        None => Problem {
            kind: Kind::Altered,
            place: "in the tree".into(),
            message: format!(
                "the server reports its Merkle tree damaged: {}",
                s.message()
            ),
        },
    }
}

fn data_loss(s: &tonic::Status, otherwise: u64) -> Problem {
    Problem::at_event(
        Kind::Altered,
        damaged_sequence(s).unwrap_or(otherwise),
        format!(
            "the server reports the stored event damaged: {}",
            s.message()
        ),
    )
}

/// What one audit found: its figures, or a problem.
struct Report {
    origin: String,
    size: u64,
    root: Hash,
    key: String,
    pinned: bool,
    consistent_from: Option<u64>,
    verified: u64,
    recomputed: bool,
    state: PathBuf,
}

/// `backchannel audit`.
pub async fn audit(args: &ClientArgs, out: &Out, a: AuditArgs) -> Result<(), CliError> {
    let mut c = connect(args).await?;
    let who = c.parties.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
    let caller = if who.admin {
        "admin".to_owned()
    } else {
        who.party_id.clone()
    };
    let state_path = match &a.state {
        Some(p) => p.clone(),
        None => default_state(&c.url, &caller)?,
    };
    let state = State::load(&state_path)?;
    if let Some(s) = state.as_ref().filter(|s| s.caller != caller) {
        return Err(CliError::Local(format!(
            "the audit state {} is {}'s, and this token is {caller}'s: give each caller a \
             state file of its own (--state)",
            state_path.display(),
            s.caller
        )));
    }
    let given = a
        .verifier_key
        .as_deref()
        .map(|k| {
            NoteVerifier::parse(k.trim())
                .map_err(|e| CliError::usage(format!("--verifier-key: {e}")))
        })
        .transpose()?;
    match run(&mut c, &a, &who, state, given, &state_path).await? {
        Ok(r) => print_report(out, &r),
        Err(p) => {
            if out.is_json() {
                line(
                    &serde_json::json!({
                        "verdict": p.kind.name(),
                        "where": p.place,
                        "message": p.message,
                    })
                    .to_string(),
                )?;
            }
            Err(CliError::Found(p.line()))
        }
    }
}

async fn run(
    c: &mut Client,
    a: &AuditArgs,
    who: &pb::WhoAmIResponse,
    state: Option<State>,
    given: Option<NoteVerifier>,
    state_path: &Path,
) -> Result<Result<Report, Problem>, CliError> {
    let caller = if who.admin { "admin" } else { &who.party_id };
    if a.full && !who.admin {
        return Err(CliError::usage(
            "--full recomputes the whole tree from the log, which only the admin sees: \
             call with the admin token",
        ));
    }
    let head = match c
        .audit
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
        .await
    {
        Ok(h) => h.into_inner(),
        Err(s) if s.code() == Code::DataLoss => return Ok(Err(tree_damaged(&s))),
        Err(s) => return Err(s.into()),
    };

    // The key: given, else pinned, else the server's (trust on first use).
    let pinned_key = state.as_ref().map(|s| s.verifier_key.clone());
    let (key, pinned) = match (&given, &pinned_key) {
        (Some(k), _) => (k.clone(), false),
        (None, Some(k)) => (
            NoteVerifier::parse(k).map_err(|e| {
                CliError::Local(format!(
                    "the audit state {} holds a bad verifier key ({e})",
                    state_path.display()
                ))
            })?,
            false,
        ),
        (None, None) => match NoteVerifier::parse(&head.verifier_key) {
            Ok(k) => (k, true),
            Err(e) => {
                return Ok(Err(Problem::at_size(
                    Kind::BadSignature,
                    head.tree_size,
                    format!("the server's verifier key does not parse ({e})"),
                )));
            }
        },
    };
    let cp = match open(&key, &head.note, head.tree_size) {
        Ok(cp) => cp,
        Err(mut p) => {
            if head.verifier_key != key.encode() {
                p.message += &format!("; the server now names the key {}", head.verifier_key);
            }
            return Ok(Err(p));
        }
    };
    let n = cp.size;

    // The tree now against the one trusted before.
    let saved = match &state {
        Some(s) => Some(open(&key, &s.checkpoint, 0).map_err(|p| {
            CliError::Local(format!(
                "the audit state {} holds a checkpoint its key does not verify ({})",
                state_path.display(),
                p.message
            ))
        })?),
        None => None,
    };
    let mut consistent_from = None;
    if let Some(old) = &saved {
        if let Err(p) = consistent(c, &key, old, &cp).await? {
            return Ok(Err(p));
        }
        consistent_from = Some(old.size);
    }

    // The events to check, as listed.
    let scoped = a.channel.is_some() || a.message.is_some();
    let listed = match list(c, a, n).await? {
        Ok(l) => l,
        Err(p) => return Ok(Err(p)),
    };
    if !scoped {
        let seqs: BTreeSet<u64> = listed.iter().map(|e| e.sequence).collect();
        if who.admin
            && let Some(k) = (1..=n).find(|k| !seqs.contains(k))
        {
            return Ok(Err(Problem::at_event(
                Kind::Altered,
                k,
                format!("the event is missing: the log lists {} of {n}", seqs.len()),
            )));
        }
        let before = state.as_ref().map(|s| &s.verified);
        if let Some(k) = before
            .into_iter()
            .flatten()
            .find(|k| **k <= n && !seqs.contains(k))
        {
            return Ok(Err(Problem::at_event(
                Kind::Altered,
                *k,
                "the event, verified by an earlier audit, is no longer listed",
            )));
        }
    }

    let checked = if a.full {
        recompute(c, &key, &cp, &listed).await?
    } else {
        prove_each(c, &key, &head.note, &cp, &listed).await?
    };
    if let Err(p) = checked {
        return Ok(Err(p));
    }

    let mut next = State {
        caller: caller.to_owned(),
        verifier_key: key.encode(),
        checkpoint: head.note.clone(),
        verified: state.map(|s| s.verified).unwrap_or_default(),
    };
    if !scoped {
        next.verified = listed.iter().map(|e| e.sequence).collect();
    }
    next.save(state_path)?;
    Ok(Ok(Report {
        origin: cp.origin,
        size: n,
        root: cp.root,
        key: key.encode(),
        pinned,
        consistent_from,
        verified: listed.len() as u64,
        recomputed: a.full,
        state: state_path.to_owned(),
    }))
}

/// Checks that `new` extends `old`.
async fn consistent(
    c: &mut Client,
    key: &NoteVerifier,
    old: &Checkpoint,
    new: &Checkpoint,
) -> Result<Result<(), Problem>, CliError> {
    if new.size < old.size {
        return Ok(Err(Problem::at_size(
            Kind::Behind,
            new.size,
            format!(
                "the server's tree has {} events, fewer than the {} of the checkpoint \
                 trusted before: it is behind, or events were removed",
                new.size, old.size
            ),
        )));
    }
    if new.size == old.size || old.size == 0 {
        if new.size == old.size && new.root != old.root {
            return Ok(Err(Problem::at_size(
                Kind::Forked,
                new.size,
                "the tree of this size has another root than the one trusted before: \
                 the history was rewritten",
            )));
        }
        return Ok(Ok(()));
    }
    let p = match c
        .audit
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            first_size: old.size,
            second_size: new.size,
        })
        .await
    {
        Ok(p) => p.into_inner(),
        Err(s) if s.code() == Code::DataLoss => return Ok(Err(tree_damaged(&s))),
        Err(s) => return Err(s.into()),
    };
    if let Err(p) = same_tree(key, p.checkpoint.as_ref(), new) {
        return Ok(Err(p));
    }
    let proof = match hashes(&p.hashes) {
        Some(h) => h,
        None => {
            return Ok(Err(Problem::at_size(
                Kind::Forked,
                new.size,
                "the consistency proof holds a hash that is not 32 bytes",
            )));
        }
    };
    Ok(
        merkle::verify_consistency(old.size, new.size, &proof, &old.root, &new.root).map_err(|e| {
            Problem::at_size(
                Kind::Forked,
                new.size,
                format!(
                    "the tree does not extend the checkpoint of size {} trusted before \
                         ({e}): the history was rewritten",
                    old.size
                ),
            )
        }),
    )
}

/// A proof's checkpoint is the one the audit checks against: signed, and
/// of the same tree (two roots signed for one size is a fork).
fn same_tree(
    key: &NoteVerifier,
    got: Option<&pb::Checkpoint>,
    want: &Checkpoint,
) -> Result<(), Problem> {
    let got = got.ok_or_else(|| {
        Problem::at_size(
            Kind::BadSignature,
            want.size,
            "a proof came without its checkpoint",
        )
    })?;
    let cp = open(key, &got.note, got.tree_size)?;
    if cp.size != want.size {
        return Err(Problem::at_size(
            Kind::Forked,
            want.size,
            format!(
                "a proof against the tree of size {} came with the checkpoint of size {}",
                want.size, cp.size
            ),
        ));
    }
    if cp.root != want.root {
        return Err(Problem::at_size(
            Kind::Forked,
            want.size,
            format!(
                "the server signed two trees for one log: size {} root {} and size {} root {}",
                want.size,
                hex(&want.root),
                cp.size,
                hex(&cp.root)
            ),
        ));
    }
    Ok(())
}

fn hashes(v: &[Vec<u8>]) -> Option<Vec<Hash>> {
    v.iter().map(|h| h.as_slice().try_into().ok()).collect()
}

fn hex(h: &[u8]) -> String {
    h.iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + "…"
}

/// The events in scope up to the tree's size, oldest first.
async fn list(
    c: &mut Client,
    a: &AuditArgs,
    size: u64,
) -> Result<Result<Vec<pb::Event>, Problem>, CliError> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = match c
            .messages
            .list_events(pb::ListEventsRequest {
                channel_id: a.channel.clone().unwrap_or_default(),
                message_id: a.message.clone().unwrap_or_default(),
                after_sequence: 0,
                page_size: 1000,
                page_token,
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::DataLoss => {
                let after = all.last().map_or(0, |e: &pb::Event| e.sequence);
                return Ok(Err(data_loss(&s, after + 1)));
            }
            Err(s) => return Err(s.into()),
        };
        // An empty page ends the listing too (a server that kept sending
        // them would hold the audit forever).
        let done = r.next_page_token.is_empty()
            || r.events.is_empty()
            || r.events.last().is_some_and(|e| e.sequence >= size);
        for e in r.events {
            if e.sequence > size {
                break;
            }
            if let Some(prev) = all.last().filter(|p: &&pb::Event| p.sequence >= e.sequence) {
                return Ok(Err(Problem::at_event(
                    Kind::Altered,
                    prev.sequence,
                    format!(
                        "the log lists event {} after it: out of order, or twice",
                        e.sequence
                    ),
                )));
            }
            all.push(e);
        }
        if done {
            return Ok(Ok(all));
        }
        page_token = r.next_page_token;
    }
}

/// Checks every listed event's inclusion in the tree, and that the proven
/// bytes are the listed event; the first problem by sequence.
async fn prove_each(
    c: &mut Client,
    key: &NoteVerifier,
    note: &str,
    cp: &Checkpoint,
    listed: &[pb::Event],
) -> Result<Result<(), Problem>, CliError> {
    let size = cp.size;
    let mut proofs = futures_util::stream::iter(listed.iter().map(|e| {
        let mut audit = c.audit.clone();
        let sequence = e.sequence;
        async move {
            let req = pb::GetInclusionProofRequest {
                sequence,
                tree_size: size,
            };
            let mut tries = 0;
            loop {
                match audit.get_inclusion_proof(req).await {
                    Err(s) if tries < RETRIES && rate_limited(&s) => {
                        tries += 1;
                        tokio::time::sleep(retry_delay(&s)).await;
                    }
                    r => return r,
                }
            }
        }
    }))
    .buffered(IN_FLIGHT);
    let mut listed = listed.iter();
    // An altered leaf hash also fails its neighbours' proofs (it is in
    // their paths): the failures are gathered, to name them all.
    let mut failed: Vec<(u64, Problem)> = Vec::new();
    while let Some(r) = proofs.next().await {
        let Some(e) = listed.next() else { break };
        if failed.len() >= MAX_NAMED
            || failed
                .first()
                .is_some_and(|(s, _)| e.sequence > s.saturating_add(NEIGHBOURHOOD))
        {
            break;
        }
        let p = match r {
            Ok(p) => p.into_inner(),
            Err(s) if s.code() == Code::DataLoss => return Ok(Err(data_loss(&s, e.sequence))),
            Err(s) if s.code() == Code::NotFound => {
                return Ok(Err(Problem::at_event(
                    Kind::Altered,
                    e.sequence,
                    "the log lists the event but the server will not prove it is in the tree",
                )));
            }
            Err(s) => return Err(s.into()),
        };
        match included(key, note, cp, e, &p) {
            Err(problem) if problem.kind == Kind::Altered => failed.push((e.sequence, problem)),
            Err(problem) => return Ok(Err(problem)),
            Ok(()) => {}
        }
    }
    let Some((_, mut first)) = failed.first().cloned() else {
        return Ok(Ok(()));
    };
    if failed.len() > 1 {
        let named: Vec<String> = failed.iter().map(|(s, _)| s.to_string()).collect();
        first.message += &format!(
            "; the events whose proofs fail: {} (an altered event fails its neighbours' \
             proofs too)",
            named.join(", ")
        );
    }
    Ok(Err(first))
}

/// One inclusion proof checked against the checkpoint and the listed event.
fn included(
    key: &NoteVerifier,
    note: &str,
    cp: &Checkpoint,
    e: &pb::Event,
    p: &pb::InclusionProof,
) -> Result<(), Problem> {
    let at = |m: &str| Problem::at_event(Kind::Altered, e.sequence, m);
    if p.checkpoint.as_ref().map(|c| c.note.as_str()) != Some(note) {
        same_tree(key, p.checkpoint.as_ref(), cp)?;
    }
    if p.sequence != e.sequence
        || p.leaf_index.checked_add(1) != Some(e.sequence)
        || p.tree_size != cp.size
    {
        return Err(at("the server proved another event than the one asked for"));
    }
    let proof = hashes(&p.hashes).ok_or_else(|| at("a proof hash is not 32 bytes"))?;
    let leaf = merkle::leaf_hash(&p.event);
    merkle::verify_inclusion(p.leaf_index, cp.size, &leaf, &proof, &cp.root).map_err(|err| {
        at(&format!(
            "the event's recorded bytes are not the ones the signed tree holds ({err})"
        ))
    })?;
    let proven = pb::Event::decode(p.event.as_slice())
        .map_err(|_| at("the bytes the tree holds do not decode as an event"))?;
    if &proven != e {
        return Err(at(
            "the event as listed differs from the one the signed tree holds",
        ));
    }
    Ok(())
}

/// `--full`: the tree recomputed from the whole log as listed; on a
/// mismatch, the first size whose signed root differs names the event.
async fn recompute(
    c: &mut Client,
    key: &NoteVerifier,
    cp: &Checkpoint,
    listed: &[pb::Event],
) -> Result<Result<(), Problem>, CliError> {
    let leaves: Vec<Hash> = listed
        .iter()
        .map(|e| merkle::leaf_hash(&e.encode_to_vec()))
        .collect();
    let root_of = |m: usize| {
        let mut f = Frontier::default();
        for l in &leaves[..m] {
            f.push(*l);
        }
        f.root()
    };
    if root_of(leaves.len()) == cp.root {
        return Ok(Ok(()));
    }
    // The first size at which the signed root and the recomputed one part.
    let (mut good, mut bad) = (0usize, leaves.len());
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        let signed = match c
            .audit
            .get_checkpoint(pb::GetCheckpointRequest {
                tree_size: mid as u64,
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == Code::DataLoss => return Ok(Err(tree_damaged(&s))),
            Err(s) => return Err(s.into()),
        };
        let signed = match open(key, &signed.note, mid as u64) {
            Ok(s) if s.size == mid as u64 => s,
            Ok(s) => {
                return Ok(Err(Problem::at_size(
                    Kind::Forked,
                    mid as u64,
                    format!(
                        "asked for the checkpoint of size {mid}, got size {}",
                        s.size
                    ),
                )));
            }
            Err(p) => return Ok(Err(p)),
        };
        if signed.root == root_of(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Ok(Err(Problem::at_event(
        Kind::Altered,
        bad as u64,
        "the event as listed is not the one the signed tree holds (the tree recomputed \
         from the log differs from this size on)",
    )))
}

/// Whether a refusal is the party's rate limit (which passes).
fn rate_limited(s: &tonic::Status) -> bool {
    s.code() == Code::ResourceExhausted
        && s.get_details_error_info()
            .is_some_and(|i| i.reason == "RATE_LIMITED")
}

/// How long a rate-limited call waits: what the server's `RetryInfo` says,
/// within reason.
fn retry_delay(s: &tonic::Status) -> std::time::Duration {
    s.get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or(std::time::Duration::from_millis(50))
        .clamp(
            std::time::Duration::from_millis(10),
            std::time::Duration::from_secs(5),
        )
}

fn print_report(out: &Out, r: &Report) -> Result<(), CliError> {
    use base64::Engine;
    let root = base64::engine::general_purpose::STANDARD.encode(r.root);
    if out.is_json() {
        let mut v = serde_json::json!({
            "verdict": "OK",
            "origin": r.origin,
            "treeSize": r.size.to_string(),
            "rootHash": root,
            "verifierKey": r.key,
            "verifiedEvents": r.verified.to_string(),
            "recomputed": r.recomputed,
            "state": r.state.display().to_string(),
        });
        if let Some(from) = r.consistent_from {
            v["consistentFrom"] = from.to_string().into();
        }
        return line(&v.to_string());
    }
    line(&format!("log          {}", r.origin))?;
    line(&format!("checkpoint   size {}, root {root}", r.size))?;
    if r.pinned {
        line(&format!(
            "key          {} (pinned on first use: check it with the operator)",
            r.key
        ))?;
    } else {
        line(&format!("key          {} (signature verified)", r.key))?;
    }
    match r.consistent_from {
        Some(from) => line(&format!(
            "consistent   with the checkpoint of size {from} trusted before"
        ))?,
        None => line("consistent   (no checkpoint trusted before)")?,
    }
    if r.recomputed {
        line(&format!(
            "recomputed   the tree from all {} events: the signed root",
            r.verified
        ))?;
    } else {
        line(&format!(
            "verified     {} events: each in the signed tree, as listed",
            r.verified
        ))?;
    }
    line(&format!("state        {}", r.state.display()))?;
    line("audit: OK")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip() {
        let set: BTreeSet<u64> = [1, 2, 3, 5, 7, 8, 9, 20].into_iter().collect();
        assert_eq!(format_ranges(&set), "1-3,5,7-9,20");
        assert_eq!(parse_ranges("1-3,5,7-9,20"), Some(set));
        assert_eq!(parse_ranges(""), Some(BTreeSet::new()));
        assert_eq!(parse_ranges("3-1"), None);
        assert_eq!(parse_ranges("x"), None);
    }

    #[test]
    fn a_damaged_events_sequence_is_read_from_the_refusal() {
        let s = tonic::Status::data_loss("the stored event #17 failed its integrity check");
        assert_eq!(damaged_sequence(&s), Some(17));
        assert_eq!(damaged_sequence(&tonic::Status::data_loss("gone")), None);
    }
}
