//! The verifiable record (DESIGN §7): the event log as an RFC 9162 Merkle
//! tree, whose checkpoints are C2SP signed notes. So far the tree's hashing
//! and proofs ([`merkle`]) and the notes and keys ([`note`]), with no I/O;
//! the store's tree, the signing key and `AuditService` come next.

pub mod merkle;
pub mod note;
