//! The checks of an audit: signatures, consistency, inclusion, and the
//! tree recomputed. Each gives the problem it found, or a refusal of the
//! server's (`CliError`) that stops the audit without a verdict.

use futures_util::StreamExt;
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

use super::{Kind, Problem, hashes, hex};
use crate::audit::merkle::{self, Frontier, Hash};
use crate::audit::note::{Checkpoint, NoteVerifier};
use crate::cli::connect::Client;
use crate::cli::{AuditArgs, CliError};
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

/// A checkpoint note opened with the trusted key: its checkpoint, or the
/// problem.
pub(super) fn open(key: &NoteVerifier, note: &str, size: u64) -> Result<Checkpoint, Problem> {
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
pub(super) fn tree_damaged(s: &tonic::Status) -> Problem {
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

pub(super) fn data_loss(s: &tonic::Status, otherwise: u64) -> Problem {
    Problem::at_event(
        Kind::Altered,
        damaged_sequence(s).unwrap_or(otherwise),
        format!(
            "the server reports the stored event damaged: {}",
            s.message()
        ),
    )
}

/// Checks that `new` extends `old`.
pub(super) async fn consistent(
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

/// The events in scope up to the tree's size, oldest first.
pub(super) async fn list(
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
pub(super) async fn prove_each(
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

/// `--full`: the tree recomputed from the whole log, from the events'
/// stored bytes (as `Subscribe` sends them), each compared with its
/// listing; on a mismatch, the first size whose signed root differs names
/// the event.
pub(super) async fn recompute(
    c: &mut Client,
    key: &NoteVerifier,
    cp: &Checkpoint,
    listed: &[pb::Event],
) -> Result<Result<(), Problem>, CliError> {
    let stored = match super::stored::events(c, cp.size).await? {
        Ok(s) => s,
        Err(p) => return Ok(Err(p)),
    };
    for (i, e) in listed.iter().enumerate() {
        let same = stored
            .get(i)
            .is_some_and(|(_, b)| pb::Event::decode(b.clone()).is_ok_and(|s| &s == e));
        if !same {
            return Ok(Err(Problem::at_event(
                Kind::Altered,
                e.sequence,
                "the event as listed differs from the one the log streams",
            )));
        }
    }
    if stored.len() != listed.len() {
        let at = stored.len().min(listed.len()) as u64 + 1;
        return Ok(Err(Problem::at_event(
            Kind::Altered,
            at,
            format!(
                "the log streams {} events and lists {} up to size {}",
                stored.len(),
                listed.len(),
                cp.size
            ),
        )));
    }
    let leaves: Vec<Hash> = stored.iter().map(|(_, b)| merkle::leaf_hash(b)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_events_sequence_is_read_from_the_refusal() {
        let s = tonic::Status::data_loss("the stored event #17 failed its integrity check");
        assert_eq!(damaged_sequence(&s), Some(17));
        assert_eq!(damaged_sequence(&tonic::Status::data_loss("gone")), None);
    }
}
