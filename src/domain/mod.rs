//! The domain: ids, validation, the record's types, the state machine and who
//! may do what. Plain Rust with no I/O; the gRPC layer and the stores call it.

pub mod command;
pub mod decide;
pub mod model;
pub mod rejection;
pub mod rules;
pub mod validate;

#[cfg(test)]
mod rules_tests;

pub use command::*;
pub use decide::{Decision, Outcome};
pub use model::*;
pub use rejection::{Class, FieldViolation, Reason, Rejection, Violations};
