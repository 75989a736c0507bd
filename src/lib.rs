//! Backchannel: a durable, auditable record of messages passed between two
//! parties through mediators, streamed to subscribers over gRPC.
//!
//! Layout: [`domain`] holds the rules (no I/O); [`store`] keeps the record
//! and owns the one writer path; [`api`] holds the thin gRPC handlers;
//! [`server`] wires them together; [`connections`] accepts and bounds
//! the connections; [`error`] is the one mapping to gRPC
//! statuses; [`backup`] copies the embedded store while it serves.

pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod codec;
pub mod config;
pub mod connections;
pub mod convert;
pub mod deadline;
pub mod domain;
pub mod error;
pub mod feed;
pub mod health;
pub mod observe;
pub mod quota;
pub mod replication;
pub mod server;
pub mod stats;
pub mod store;
pub mod upkeep;
pub mod web;
pub mod wire;

/// The generated protobuf types, clients and servers of `backchannel.v1`.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("backchannel.v1");
    pub use crate::wire::{SubscribeResponse, subscribe_response};

    /// The encoded descriptor set of `backchannel.v1` (for reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/backchannel_descriptor.bin"));

    /// The descriptors of `backchannel.v1` and of the `google.rpc` error
    /// details, decoded once: what proto3 JSON is read and written through
    /// (the command line's output, the board's JSON view).
    pub fn descriptor_pool() -> Result<&'static prost_reflect::DescriptorPool, String> {
        static POOL: std::sync::OnceLock<Result<prost_reflect::DescriptorPool, String>> =
            std::sync::OnceLock::new();
        POOL.get_or_init(|| {
            let mut pool = prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
                .map_err(|e| e.to_string())?;
            pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .map_err(|e| e.to_string())?;
            Ok(pool)
        })
        .as_ref()
        .map_err(|e| format!("the built-in descriptors do not decode: {e}"))
    }
}
