//! What an audit remembers between runs: its state file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::cli::CliError;

/// What an audit remembers between runs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct State {
    /// Whose audit it is (a party's id, or `admin`): what it verified
    /// depends on what the caller may see.
    pub(super) caller: String,
    /// The verifier key trusted.
    pub(super) verifier_key: String,
    /// The last checkpoint trusted (its signed note).
    pub(super) checkpoint: String,
    /// The sequences whose inclusion an unfiltered audit verified.
    pub(super) verified: BTreeSet<u64>,
}

impl State {
    pub(super) fn load(path: &Path) -> Result<Option<State>, CliError> {
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
    pub(super) fn save(&self, path: &Path) -> Result<(), CliError> {
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
pub(super) fn default_state(url: &str, caller: &str) -> Result<PathBuf, CliError> {
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
}
