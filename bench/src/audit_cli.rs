//! `audit`, its second half: one proof of each kind checked as a client
//! would, and `backchannel audit`, the reference verifier, timed as a
//! subprocess over 100,000 events (fresh, with a saved state, and
//! `--full`).

use backchannel::audit::merkle::{self, Hash};
use backchannel::audit::note::{Checkpoint, NoteVerifier};

use crate::*;

/// How `backchannel audit` ran, or why it did not.
pub(crate) enum CliPart {
    Ran {
        store: String,
        events: u64,
        runs: Vec<CliRun>,
    },
    Skipped(String),
}

/// One run of `backchannel audit`.
pub(crate) struct CliRun {
    /// What it was: "first use", "state kept", "--full".
    pub(crate) mode: &'static str,
    pub(crate) args: Vec<String>,
    pub(crate) outcome: CliOutcome,
}

pub(crate) enum CliOutcome {
    /// The binary has no `audit` subcommand.
    NotAvailable,
    /// It ran to its end (or was killed at its time limit: `status` None).
    Ran {
        status: Option<i32>,
        secs: f64,
        /// Its user + system CPU, and the server's over the same time.
        cpu: Option<f64>,
        server_cpu: Option<f64>,
        /// Its last line of output (stdout, else stderr).
        said: String,
    },
}

/// Times `backchannel audit` against the server at `addr` with the admin
/// token, three times: with a fresh state file (the key pinned on first
/// use), again with the state that run saved, and `--full` with a fresh
/// state file. A binary without the subcommand is "not available", not a
/// failure; any other exit status but 0 is one.
pub(crate) async fn time_cli(
    bin: &Path,
    addr: &str,
    admin_token: &str,
    server_pid: Option<u32>,
    events: u64,
    timeout: Duration,
    report: &mut Report,
) -> Result<Vec<CliRun>> {
    let dir = std::env::temp_dir().join(format!(
        "backchannel-bench-audit-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let token_file = dir.join("admin.token");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)?;
        writeln!(f, "{admin_token}")?;
    }
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let base = |state: &str| -> Vec<String> {
        vec![
            "audit".into(),
            "--addr".into(),
            url.clone(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--state".into(),
            dir.join(state).display().to_string(),
        ]
    };
    let mut full = base("full.json");
    full.push("--full".into());
    let plan: [(&'static str, Vec<String>); 3] = [
        ("first use", base("state.json")),
        ("state kept", base("state.json")),
        ("--full", full),
    ];
    let mut runs = Vec::new();
    for (mode, args) in plan {
        progress(format!(
            "audit: `backchannel {}` over {} events",
            args.join(" "),
            fmt_count(events)
        ));
        let outcome = {
            let (bin, args) = (bin.to_path_buf(), args.clone());
            tokio::task::spawn_blocking(move || run_cli(&bin, &args, server_pid, timeout)).await??
        };
        match &outcome {
            CliOutcome::NotAvailable => {
                progress("audit: this binary has no `audit` subcommand: not available");
                runs.push(CliRun {
                    mode,
                    args,
                    outcome,
                });
                break;
            }
            CliOutcome::Ran {
                status, secs, said, ..
            } => {
                progress(format!(
                    "audit: {mode}: exit {} in {secs:.2} s ({} events/s): {said}",
                    status.map_or("none (killed at the time limit)".into(), |s| s.to_string()),
                    fmt_rate(events as f64 / secs)
                ));
                if *status != Some(0) {
                    report.failures.push(format!(
                        "audit: `backchannel {}` exited {}: {said}",
                        args.join(" "),
                        status.map_or("none (killed at the time limit)".into(), |s| s.to_string())
                    ));
                }
            }
        }
        runs.push(CliRun {
            mode,
            args,
            outcome,
        });
    }
    Ok(runs)
}

/// Removes a directory when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// User + system CPU seconds of this process's children that have ended.
fn children_cpu() -> Option<f64> {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) } != 0 {
        return None;
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    Some(t(u.ru_utime) + t(u.ru_stime))
}

/// Runs `bin args` to its end (killed after `timeout`), its output kept.
fn run_cli(
    bin: &Path,
    args: &[String],
    server_pid: Option<u32>,
    timeout: Duration,
) -> Result<CliOutcome> {
    let dir = std::env::temp_dir();
    let out_path = dir.join(format!(
        "backchannel-bench-cli-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let err_path = out_path.with_extension("stderr");
    let _cleanup = (
        RemoveFileOnDrop(out_path.clone()),
        RemoveFileOnDrop(err_path.clone()),
    );
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?);
    // Only the flags given: no address, token or key from the environment.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BACKCHANNEL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    let server = || server_pid.and_then(|p| cpu_secs(&p.to_string()));
    let (cpu0, srv0) = (children_cpu(), server());
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let secs = started.elapsed().as_secs_f64();
    let (cpu1, srv1) = (children_cpu(), server());
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let code = status.and_then(|s| s.code());
    if code == Some(2) && stderr.contains("unrecognized subcommand") {
        return Ok(CliOutcome::NotAvailable);
    }
    let last = |s: &str| {
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::to_owned)
    };
    let said = if code == Some(0) {
        last(&stdout).or_else(|| last(&stderr))
    } else {
        last(&stderr).or_else(|| last(&stdout))
    }
    .unwrap_or_default();
    let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    Ok(CliOutcome::Ran {
        status: code,
        secs,
        cpu: diff(cpu0, cpu1),
        server_cpu: diff(srv0, srv1),
        said,
    })
}

/// Removes a file when dropped.
struct RemoveFileOnDrop(PathBuf);

impl Drop for RemoveFileOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Checks, as a client would, a checkpoint's signature, one inclusion
/// proof and one consistency proof at the head; the sizes checked.
pub(crate) async fn check_proofs(world: &World, head: u64) -> Result<String> {
    let mut a = world.admin.on(0).audit;
    let open = |c: &pb::Checkpoint| -> Result<Hash> {
        let key = NoteVerifier::parse(&c.verifier_key)?;
        let cp = Checkpoint::parse(key.open(&c.note)?)?;
        if cp.size != c.tree_size || cp.root.as_slice() != c.root_hash.as_slice() {
            return Err("the note says another size or root than the message".into());
        }
        Ok(cp.root)
    };
    let hashes = |v: &[Vec<u8>]| -> Result<Vec<Hash>> {
        v.iter()
            .map(|h| Hash::try_from(h.as_slice()).map_err(|_| "a hash is not 32 bytes".into()))
            .collect()
    };
    let top = a
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: 0 })
        .await?
        .into_inner();
    if top.tree_size != head {
        return Err(format!("the head's checkpoint is of {}, not {head}", top.tree_size).into());
    }
    let root = open(&top)?;
    let seq = 1 + mix(head) % head;
    let p = a
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            sequence: seq,
            tree_size: 0,
        })
        .await?
        .into_inner();
    let proof_root = open(p.checkpoint.as_ref().ok_or("no checkpoint")?)?;
    if proof_root != root {
        return Err("the inclusion proof's checkpoint is not the head's".into());
    }
    merkle::verify_inclusion(
        seq - 1,
        head,
        &merkle::leaf_hash(&p.event),
        &hashes(&p.hashes)?,
        &root,
    )?;
    let first = 1 + mix(head ^ 1) % head;
    let old = a
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: first })
        .await?
        .into_inner();
    let c = a
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            first_size: first,
            second_size: 0,
        })
        .await?
        .into_inner();
    merkle::verify_consistency(first, head, &hashes(&c.hashes)?, &open(&old)?, &root)?;
    Ok(format!(
        "the head's signed checkpoint, the inclusion of event {} ({} hashes) and consistency from {} \
         ({} hashes) verified",
        fmt_count(seq),
        p.hashes.len(),
        fmt_count(first),
        c.hashes.len()
    ))
}
