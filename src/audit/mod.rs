//! The verifiable record (DESIGN §7): the event log as an RFC 9162 Merkle
//! tree ([`merkle`]; the store keeps it, `store::tree`), whose checkpoints
//! are C2SP signed notes ([`note`]) signed with the log's key ([`key`]).

pub mod key;
pub mod merkle;
pub mod note;

use merkle::Hash;
use note::{Checkpoint, NoteSigner};

/// The log's identity: its origin and the key that signs its checkpoints.
#[derive(Debug)]
pub struct Log {
    signer: NoteSigner,
    verifier_key: String,
}

impl Log {
    /// The log that `signer` signs (its name is the origin).
    pub fn new(signer: NoteSigner) -> Log {
        let verifier_key = signer.verifier().encode();
        Log {
            signer,
            verifier_key,
        }
    }

    /// The log's origin: the first line of its checkpoints.
    pub fn origin(&self) -> &str {
        self.signer.name()
    }

    /// The verifier key, in Go's `sumdb/note` form.
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// The signed checkpoint of the tree of `size` leaves with head `root`.
    pub fn checkpoint(
        &self,
        size: u64,
        root: Hash,
    ) -> Result<crate::pb::Checkpoint, note::NoteError> {
        let text = Checkpoint {
            origin: self.origin().to_owned(),
            size,
            root,
        }
        .text();
        // The origin was checked as a key name when the key was made or
        // read, so the text is always one a note may carry.
        let note = self.signer.sign(&text)?;
        Ok(crate::pb::Checkpoint {
            origin: self.origin().to_owned(),
            tree_size: size,
            root_hash: root.to_vec(),
            note,
            verifier_key: self.verifier_key.clone(),
        })
    }
}
