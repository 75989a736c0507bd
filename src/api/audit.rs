//! `AuditService` (DESIGN §7): signed checkpoints of the log's Merkle tree,
//! and inclusion and consistency proofs, each with the checkpoint it proves
//! against.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Ctx;
use crate::audit::Log;
use crate::domain::{Reason, Rejection};
use crate::pb;
use crate::store::EventQuery;

/// The service.
pub struct AuditApi {
    ctx: Arc<Ctx>,
    log: Arc<Log>,
}

impl AuditApi {
    /// The service over the shared handler state and the log's key.
    pub fn new(ctx: Arc<Ctx>, log: Arc<Log>) -> AuditApi {
        AuditApi { ctx, log }
    }

    /// The head now, and `size` checked against it (0: the head).
    async fn size(&self, size: u64, field: &'static str) -> Result<(u64, u64), Status> {
        let head = self.ctx.store.head().await?;
        if size > head {
            return Err(beyond_head(field, size, head).into());
        }
        Ok((head, if size == 0 { head } else { size }))
    }

    /// The signed checkpoint of the tree of `size` leaves with head `root`
    /// (signing fails only on a bug of ours: `INTERNAL`).
    fn checkpoint(&self, size: u64, root: [u8; 32]) -> Result<pb::Checkpoint, Status> {
        self.log
            .checkpoint(size, root)
            .map_err(|e| crate::error::internal("cannot sign the checkpoint", &e))
    }
}

/// `OUT_OF_RANGE` `TREE_SIZE_BEYOND_HEAD`.
fn beyond_head(field: &str, value: u64, head: u64) -> Rejection {
    Rejection::new(
        Reason::TREE_SIZE_BEYOND_HEAD,
        format!("{field} {value} is past the log's head, {head}"),
    )
    .with("head_sequence", head)
}

/// `NOT_FOUND` `EVENT_NOT_FOUND`: the same for every event the caller may
/// not see, as for one that is not there.
fn event_not_found() -> Rejection {
    Rejection::new(
        Reason::EVENT_NOT_FOUND,
        "no such event, or the caller may not see it",
    )
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditApi {
    async fn get_checkpoint(
        &self,
        req: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        self.ctx.caller(&req)?;
        let (_, size) = self.size(req.get_ref().tree_size, "tree_size").await?;
        let root = self.ctx.store.tree_root(size).await?;
        Ok(Response::new(self.checkpoint(size, root)?))
    }

    async fn get_inclusion_proof(
        &self,
        req: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let caller = self.ctx.caller(&req)?;
        let r = req.into_inner();
        if r.sequence == 0 {
            return Err(Rejection::field("sequence", "an event's sequence starts at 1").into());
        }
        if r.tree_size != 0 && r.tree_size < r.sequence {
            return Err(Rejection::field(
                "tree_size",
                format!(
                    "a tree of {} events does not hold event {}",
                    r.tree_size, r.sequence
                ),
            )
            .into());
        }
        let (head, size) = self.size(r.tree_size, "tree_size").await?;
        if r.sequence > size {
            return Err(beyond_head("sequence", r.sequence, head).into());
        }
        // The event as stored, checked against its leaf hash, if the caller
        // may see it: the listing's own visibility rule.
        let frame = self
            .ctx
            .store
            .frames(EventQuery {
                viewer: caller.party().cloned(),
                channel: None,
                message: None,
                after: r.sequence - 1,
                through: Some(r.sequence),
                limit: 1,
                max_bytes: usize::MAX,
            })
            .await?
            .into_iter()
            .next()
            .filter(|f| f.sequence == r.sequence)
            .ok_or_else(event_not_found)?;
        let index = r.sequence - 1;
        let (hashes, root) = self.ctx.store.inclusion(index, size).await?;
        Ok(Response::new(pb::InclusionProof {
            sequence: r.sequence,
            tree_size: size,
            leaf_index: index,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            event: frame.data.to_vec(),
            checkpoint: Some(self.checkpoint(size, root)?),
        }))
    }

    async fn get_consistency_proof(
        &self,
        req: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        self.ctx.caller(&req)?;
        let r = req.into_inner();
        if r.first_size == 0 {
            return Err(Rejection::field(
                "first_size",
                "every tree extends the empty one: first_size starts at 1",
            )
            .into());
        }
        if r.second_size != 0 && r.second_size < r.first_size {
            return Err(Rejection::field(
                "second_size",
                format!(
                    "second_size {} is below first_size {}",
                    r.second_size, r.first_size
                ),
            )
            .into());
        }
        let (head, second) = self.size(r.second_size, "second_size").await?;
        if r.first_size > second {
            return Err(beyond_head("first_size", r.first_size, head).into());
        }
        let (hashes, root) = self.ctx.store.consistency(r.first_size, second).await?;
        Ok(Response::new(pb::ConsistencyProof {
            first_size: r.first_size,
            second_size: second,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            checkpoint: Some(self.checkpoint(second, root)?),
        }))
    }
}
