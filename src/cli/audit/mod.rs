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

use tonic::Code;

use super::connect::{Client, connect};
use super::output::{Out, line};
use super::{AuditArgs, CliError, ClientArgs};
use crate::audit::merkle::Hash;
use crate::audit::note::NoteVerifier;
use crate::pb;

mod prove;
mod state;
mod stored;

use prove::{consistent, list, open, prove_each, recompute, tree_damaged};
use state::{State, default_state};

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
