//! The log's signing key (DESIGN §7): read from the file the operator names,
//! or from `signing.key` in the data directory, where the first start
//! generates it. Its form is Go's `sumdb/note` private key,
//! `PRIVATE+KEY+<name>+<key id>+<base64(0x01 ‖ seed)>`, so it can be copied
//! between replicas and read by other tools; its name is the log's origin.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::note::NoteSigner;

/// The generated key's file name in the data directory.
pub const SIGNING_KEY_FILE: &str = "signing.key";

/// Where the signing key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The file the operator named.
    Given(PathBuf),
    /// The data directory's, generated before.
    Kept(PathBuf),
    /// The data directory's, generated now.
    Generated(PathBuf),
}

/// The signer for `origin`: from `given`, else the data directory's key,
/// generated on the first start. A key whose name is not `origin` is
/// refused: checkpoints name their log by the key's name.
pub fn signing_key(
    given: Option<&Path>,
    data_dir: &Path,
    origin: &str,
) -> Result<(NoteSigner, KeySource), String> {
    let (path, source) = match given {
        Some(p) => (p.to_path_buf(), KeySource::Given(p.to_path_buf())),
        None => {
            let p = data_dir.join(SIGNING_KEY_FILE);
            (p.clone(), KeySource::Kept(p))
        }
    };
    let signer = match std::fs::read_to_string(&path) {
        Ok(text) => NoteSigner::parse(text.trim()).map_err(|e| {
            format!(
                "the signing key {} does not parse: {e}; it holds one line PRIVATE+KEY+<name>+<id>+<key>",
                path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && given.is_none() => {
            let signer = generate(&path, data_dir, origin)?;
            return Ok((signer, KeySource::Generated(path)));
        }
        Err(e) => return Err(format!("cannot read the signing key {}: {e}", path.display())),
    };
    if signer.name() != origin {
        return Err(format!(
            "the signing key {} is named {:?}, but the log's origin is {origin:?}: \
             set --log-origin to the key's name, or give a key made for this origin",
            path.display(),
            signer.name()
        ));
    }
    Ok((signer, source))
}

/// A new key named `origin`, written to `path` (mode 0600) before use.
fn generate(path: &Path, data_dir: &Path, origin: &str) -> Result<NoteSigner, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness for a signing key: {e}"))?;
    let signer = NoteSigner::from_seed(origin, seed)
        .map_err(|e| format!("the log's origin cannot name a key: {e}"))?;
    let written = (|| {
        std::fs::create_dir_all(data_dir)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(format!("{}\n", signer.encode()).as_bytes())?;
        f.sync_all()
    })();
    written.map_err(|e| format!("cannot write the signing key {}: {e}", path.display()))?;
    Ok(signer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bc-key-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_first_start_generates_a_private_key_file_the_next_reads_it() {
        let d = dir("gen");
        let (a, src) = signing_key(None, &d, "backchannel/test").expect("generated");
        let path = d.join(SIGNING_KEY_FILE);
        assert_eq!(src, KeySource::Generated(path.clone()));
        let mode = std::fs::metadata(&path).map(|m| {
            use std::os::unix::fs::PermissionsExt as _;
            m.permissions().mode() & 0o777
        });
        assert_eq!(mode.ok(), Some(0o600));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(text.starts_with("PRIVATE+KEY+backchannel/test+"), "{text}");
        let (b, src) = signing_key(None, &d, "backchannel/test").expect("kept");
        assert_eq!(src, KeySource::Kept(path));
        assert_eq!(a.verifier().encode(), b.verifier().encode());
        let other = signing_key(None, &d, "elsewhere").expect_err("another origin");
        assert!(other.contains("--log-origin"), "{other}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_given_key_must_exist_and_parse() {
        let d = dir("given");
        let missing = signing_key(Some(&d.join("nope")), &d, "o").expect_err("missing");
        assert!(missing.contains("cannot read"), "{missing}");
        std::fs::create_dir_all(&d).ok();
        let bad = d.join("bad.key");
        std::fs::write(&bad, "hello\n").ok();
        let e = signing_key(Some(&bad), &d, "o").expect_err("does not parse");
        assert!(e.contains("does not parse"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
