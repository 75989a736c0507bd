//! C2SP signed notes with Ed25519 keys (c2sp.org/signed-note), and the
//! checkpoints they carry (c2sp.org/tlog-checkpoint), in the key formats of
//! Go's `golang.org/x/mod/sumdb/note`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, Verifier as _};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// The signature algorithm byte of Ed25519 in keys and key ids.
const ED25519: u8 = 0x01;

/// The start of a signature line: an em dash and a space.
const SIGNATURE_START: &str = "\u{2014} ";

/// What is wrong with a key, a note or a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key name that C2SP does not allow (empty, with a space or a `+`).
    #[error("a key name must be non-empty, without spaces or '+': {0:?}")]
    Name(String),
    /// A key that does not parse.
    #[error("not a key in the PRIVATE+KEY+name+id+key or name+id+key form: {0}")]
    Key(&'static str),
    /// A note that does not parse.
    #[error("not a signed note: {0}")]
    Malformed(&'static str),
    /// No signature by the key asked for.
    #[error("the note carries no signature by {0}")]
    Unsigned(String),
    /// A signature by the key's name and id that does not verify.
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
    /// A note whose text is not a checkpoint.
    #[error("not a checkpoint: {0}")]
    Checkpoint(&'static str),
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(NoteError::Name(name.to_owned()));
    }
    Ok(())
}

/// The key id: the first 4 bytes of `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)`.
fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0A, ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn hex4(id: [u8; 4]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits `name+hexid+base64` and checks the id against the key.
fn parse_parts(text: &str) -> Result<(String, [u8; 4], [u8; 32]), NoteError> {
    let mut parts = text.trim().splitn(3, '+');
    let (Some(name), Some(id), Some(material)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::Key("it needs name+id+key"));
    };
    check_name(name)?;
    let id = u32::from_str_radix(id, 16)
        .ok()
        .filter(|_| id.len() == 8)
        .ok_or(NoteError::Key("the key id is not 8 hex digits"))?
        .to_be_bytes();
    let raw = STANDARD
        .decode(material)
        .map_err(|_| NoteError::Key("the key is not base64"))?;
    let key: [u8; 32] = match raw.split_first() {
        Some((&ED25519, rest)) => rest
            .try_into()
            .map_err(|_| NoteError::Key("an Ed25519 key is 32 bytes"))?,
        _ => return Err(NoteError::Key("not an Ed25519 key (type 0x01)")),
    };
    Ok((name.to_owned(), id, key))
}

/// A key that signs notes, under a name.
pub struct NoteSigner {
    name: String,
    id: [u8; 4],
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NoteSigner({})", self.verifier().encode())
    }
}

impl NoteSigner {
    /// The signer of a 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<NoteSigner, NoteError> {
        check_name(name)?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let id = key_id(name, key.verifying_key().as_bytes());
        Ok(NoteSigner {
            name: name.to_owned(),
            id,
            key,
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<id>+<base64(0x01 ‖ seed)>`.
    pub fn parse(text: &str) -> Result<NoteSigner, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::Key("a signing key starts with PRIVATE+KEY+"))?;
        let (name, id, seed) = parse_parts(rest)?;
        let signer = NoteSigner::from_seed(&name, seed)?;
        if signer.id != id {
            return Err(NoteError::Key("the key id does not match the key"));
        }
        Ok(signer)
    }

    /// The key in the form [`NoteSigner::parse`] reads.
    pub fn encode(&self) -> String {
        let mut raw = vec![ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex4(self.id),
            STANDARD.encode(raw)
        )
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key that checks this one's signatures.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// `text` (which must end in a newline) as a note signed by this key.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') || text.contains("\n\n") {
            return Err(NoteError::Malformed(
                "the text must end in a newline and hold no blank line",
            ));
        }
        let signature = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        Ok(format!(
            "{text}\n{SIGNATURE_START}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        ))
    }
}

/// A key that checks notes' signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    key: ed25519_dalek::VerifyingKey,
}

impl NoteVerifier {
    /// Parses `<name>+<id>+<base64(0x01 ‖ public key)>`.
    pub fn parse(text: &str) -> Result<NoteVerifier, NoteError> {
        let (name, id, public) = parse_parts(text)?;
        if key_id(&name, &public) != id {
            return Err(NoteError::Key("the key id does not match the key"));
        }
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public)
            .map_err(|_| NoteError::Key("not an Ed25519 public key"))?;
        Ok(NoteVerifier { name, id, key })
    }

    /// The key in the form [`NoteVerifier::parse`] reads.
    pub fn encode(&self) -> String {
        let mut raw = vec![ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!("{}+{}+{}", self.name, hex4(self.id), STANDARD.encode(raw))
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The text of `note` if it carries a good signature by this key.
    /// Signatures by other keys are ignored (room for witnesses).
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, signatures) = (&note[..=split], &note[split + 2..]);
        if text.contains("\n\n") || !signatures.ends_with('\n') {
            return Err(NoteError::Malformed(
                "a blank line in the text, or no final newline",
            ));
        }
        let mut known = false;
        for line in signatures.lines() {
            let rest = line
                .strip_prefix(SIGNATURE_START)
                .ok_or(NoteError::Malformed(
                    "a signature line starts with an em dash",
                ))?;
            let (name, blob) = rest.split_once(' ').ok_or(NoteError::Malformed(
                "a signature line is name and signature",
            ))?;
            let blob = STANDARD
                .decode(blob)
                .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
            if name != self.name || blob.len() < 4 || blob[..4] != self.id {
                continue;
            }
            known = true;
            let signature = Signature::from_slice(&blob[4..])
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            if self.key.verify(text.as_bytes(), &signature).is_err() {
                return Err(NoteError::BadSignature(self.name.clone()));
            }
        }
        if !known {
            return Err(NoteError::Unsigned(self.encode()));
        }
        Ok(text)
    }
}

/// A checkpoint: the tree head of a log of some size (c2sp.org/tlog-checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line.
    pub origin: String,
    /// The number of leaves.
    pub size: u64,
    /// The tree head.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: `<origin>\n<size>\n<base64 root>\n`.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Parses a checkpoint's text (three lines; extension lines refused,
    /// as this log writes none).
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let lines: Vec<&str> = text
            .strip_suffix('\n')
            .ok_or(NoteError::Checkpoint("no final newline"))?
            .split('\n')
            .collect();
        let [origin, size, root] = lines[..] else {
            return Err(NoteError::Checkpoint(
                "it is origin, size and root hash, one a line",
            ));
        };
        if origin.is_empty() {
            return Err(NoteError::Checkpoint("an empty origin"));
        }
        let size = size
            .parse()
            .ok()
            .filter(|_| size.bytes().all(|b| b.is_ascii_digit()))
            .filter(|_| size == "0" || !size.starts_with('0'))
            .ok_or(NoteError::Checkpoint("the size is not a decimal number"))?;
        let root = STANDARD
            .decode(root)
            .ok()
            .and_then(|r| Hash::try_from(r).ok())
            .ok_or(NoteError::Checkpoint(
                "the root is not a base64 SHA-256 hash",
            ))?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The keys and note of golang.org/x/mod/sumdb/note's documentation and
    // tests, and the example of c2sp.org/signed-note: another
    // implementation's output, which ours must reproduce byte for byte.
    const PETER_SIGNER: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VERIFIER: &str =
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const PETER_SIGNATURE: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const SPEC_VERIFIER: &str =
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const SPEC_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    #[test]
    fn go_sumdb_notes_keys_and_signatures_are_reproduced() {
        let signer = NoteSigner::parse(PETER_SIGNER).unwrap();
        assert_eq!(signer.encode(), PETER_SIGNER);
        assert_eq!(signer.verifier().encode(), PETER_VERIFIER);
        let note = signer.sign(PETER_TEXT).unwrap();
        assert_eq!(note, format!("{PETER_TEXT}\n{PETER_SIGNATURE}"));
        let verifier = NoteVerifier::parse(PETER_VERIFIER).unwrap();
        assert_eq!(verifier.open(&note).unwrap(), PETER_TEXT);
        let spec = NoteVerifier::parse(SPEC_VERIFIER).unwrap();
        assert_eq!(
            spec.open(SPEC_NOTE).unwrap(),
            "This is an example message.\n"
        );
    }

    #[test]
    fn a_changed_text_signature_or_key_is_told_apart() {
        let verifier = NoteVerifier::parse(PETER_VERIFIER).unwrap();
        let note = format!("{PETER_TEXT}\n{PETER_SIGNATURE}");
        let changed = note.replace("cryptography", "cryptographY");
        assert_eq!(
            verifier.open(&changed),
            Err(NoteError::BadSignature("PeterNeumann".into()))
        );
        // Signed by another key only: unsigned for this one.
        let other = NoteSigner::from_seed("PeterNeumann", [7; 32]).unwrap();
        let by_other = other.sign(PETER_TEXT).unwrap();
        assert!(matches!(
            verifier.open(&by_other),
            Err(NoteError::Unsigned(_))
        ));
        // A witness's signature beside ours is ignored.
        let witness = NoteSigner::from_seed("witness.example", [9; 32]).unwrap();
        let cosigned = format!(
            "{note}{}",
            witness
                .sign(PETER_TEXT)
                .unwrap()
                .rsplit_once("\n\n")
                .unwrap()
                .1
        );
        assert_eq!(verifier.open(&cosigned).unwrap(), PETER_TEXT);
        // Keys whose id does not match, or with a bad name, are refused.
        assert!(NoteVerifier::parse(&PETER_VERIFIER.replace("c74f20a3", "c74f20a4")).is_err());
        assert!(NoteSigner::from_seed("with space", [1; 32]).is_err());
        assert!(NoteSigner::from_seed("with+plus", [1; 32]).is_err());
        assert!(verifier.open(PETER_TEXT).is_err());
    }

    #[test]
    fn checkpoints_are_three_lines() {
        let c = Checkpoint {
            origin: "backchannel/0190c3a4-aaaa-7bbb-8ccc-123456789abc".into(),
            size: 42,
            root: [0xab; 32],
        };
        let text = c.text();
        assert_eq!(
            text,
            "backchannel/0190c3a4-aaaa-7bbb-8ccc-123456789abc\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n"
        );
        assert_eq!(Checkpoint::parse(&text).unwrap(), c);
        let signer = NoteSigner::from_seed("backchannel/test", [3; 32]).unwrap();
        let note = signer.sign(&text).unwrap();
        assert_eq!(
            Checkpoint::parse(signer.verifier().open(&note).unwrap()).unwrap(),
            c
        );
        for bad in [
            "o\n042\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n",
            "o\n1\nshort\n",
            "o\n1\n",
            "o\n1\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\nextra\n",
        ] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
