//! The log's Merkle tree as a store keeps it (DESIGN §7), written once for
//! every SQL backend.
//!
//! A store keeps the hash of every *perfect* subtree of the tree
//! ([`merkle::Subtrees`]): at level 0 the events' own leaf hashes
//! (`events.leaf_hash`, leaf `i` being sequence `i + 1`), above it the
//! `tree_nodes` table. Its rows are keyed by the last leaf a subtree covers
//! and then its level, so that the nodes one append completes sit together
//! and every append writes at the table's end. A node never changes once
//! written, and every node of a tree of `n` leaves is committed with the
//! `n`th event, so a reader that knows `n` committed may read them in any
//! snapshot.
//!
//! Which subtrees a proof needs depends on its sizes only: [`Wanted`]
//! learns them by running the computation once with placeholder hashes,
//! and [`queries`] reads them all in one statement, of a few shapes only
//! (a server prepares, and caches, each shape it is sent).
//!
//! A damaged tree (a node missing or malformed) is `RECORD_CORRUPT`, as a
//! damaged event is: the record cannot be proved.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;

use super::error::{Fault, StoreError};
use super::exec::Statements;
use super::query::{Arg, Sql, Style, int};
use super::read::Row;
use super::read::{Reader, Reads};
use super::record::corrupt;

/// The tree is damaged: `RECORD_CORRUPT`, logged.
fn damaged(what: impl std::fmt::Display) -> StoreError {
    tracing::error!(error = %what, "the log's Merkle tree is damaged");
    StoreError::new(
        Fault::Corrupt,
        format!(
            "the log's Merkle tree is damaged ({what}): the record cannot be proved; \
             the operator must restore the store from a backup"
        ),
    )
}

/// The slots of a statement for `n` subtrees: the next power of two, at
/// least 4 (a proof needs at most 128 subtrees, so at most 6 shapes).
fn slots(n: usize) -> usize {
    n.next_power_of_two().max(4)
}
pub use crate::audit::merkle::Hash;
use crate::audit::merkle::{self, Frontier, Subtrees};

/// A perfect subtree: its level and index (the subtree of `2^level` leaves
/// starting at leaf `index << level`).
pub type Node = (u32, u64);

/// The last leaf the subtree covers: its `tree_nodes` key with the level.
pub fn last_leaf((level, index): Node) -> u64 {
    ((index + 1) << level) - 1
}

/// Records the subtrees a computation asks for, answering placeholders.
#[derive(Debug, Default)]
pub struct Wanted(RefCell<Vec<Node>>);

impl Wanted {
    /// The subtrees asked for, each once.
    pub fn take(self) -> Vec<Node> {
        let mut v = self.0.into_inner();
        v.sort_unstable();
        v.dedup();
        v
    }
}

impl Subtrees for Wanted {
    type Error = Infallible;
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, Infallible> {
        self.0.borrow_mut().push((level, index));
        Ok([0; 32])
    }
}

/// Subtrees as read from the store.
#[derive(Debug, Default)]
pub struct Found(HashMap<Node, Hash>);

impl Subtrees for Found {
    type Error = StoreError;
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, StoreError> {
        self.0
            .get(&(level, index))
            .copied()
            .ok_or_else(|| damaged(format!("it has no node at level {level}, index {index}")))
    }
}

/// The statement that reads `nodes` (none for none), each row `(level,
/// last leaf, hash)`: the leaves from the events, `UNION ALL` the nodes
/// above them, each side padded (so one read, of a few shapes).
pub fn queries(nodes: &[Node], style: Style) -> Result<Vec<Sql>, StoreError> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let (leaves, above): (Vec<Node>, Vec<Node>) = nodes.iter().partition(|(l, _)| *l == 0);
    let mut s = Sql::with(
        style,
        "SELECT 0, seq - 1, leaf_hash FROM events WHERE seq IN (",
        Vec::new(),
    );
    // Padded with sequence 0, which no event has.
    for i in 0..slots(leaves.len()) {
        let seq = match leaves.get(i) {
            Some((_, index)) => int(index + 1)?,
            None => 0,
        };
        let p = s.arg(Arg::Int(seq));
        if i > 0 {
            s.text += ", ";
        }
        s.text += &p;
    }
    s.text += ") UNION ALL SELECT level, last_leaf, hash FROM tree_nodes WHERE ";
    // Padded with (-1, -1), which no node has.
    for i in 0..slots(above.len()) {
        let (leaf, level) = match above.get(i) {
            Some(node) => (int(last_leaf(*node))?, i64::from(node.0)),
            None => (-1, -1),
        };
        let leaf = s.arg(Arg::Int(leaf));
        let level = s.arg(Arg::Int(level));
        if i > 0 {
            s.text += " OR ";
        }
        s.text += &format!("(last_leaf = {leaf} AND level = {level})");
    }
    Ok(vec![s])
}

/// The subtrees in rows of [`queries`].
pub fn found(rows: impl IntoIterator<Item = Row>) -> Result<Found, StoreError> {
    let mut f = Found::default();
    for r in rows {
        let level = u32::try_from(r.int(0)?).map_err(damaged)?;
        let last = r.count(1)?;
        if level > 62 {
            return Err(damaged(format!("a node at level {level}")));
        }
        let index = ((last + 1) >> level)
            .checked_sub(1)
            .ok_or_else(|| damaged("a node before the first leaf"))?;
        let hash: Hash = match r.0.get(2) {
            Some(super::read::Value::Bytes(b)) => b
                .as_slice()
                .try_into()
                .map_err(|_| damaged(format!("a node of {} bytes", b.len())))?,
            other => return Err(damaged(format!("a node's hash is {other:?}"))),
        };
        f.0.insert((level, index), hash);
    }
    Ok(f)
}

/// The right edge of the tree of `size` leaves, read in `tx`: what the
/// writer appends to.
pub fn frontier<T: Statements>(tx: &mut T, size: u64) -> Result<Frontier, StoreError> {
    let wanted = Wanted::default();
    let _ = Frontier::of(size, &wanted);
    let mut rows = Vec::new();
    for q in queries(&wanted.take(), T::STYLE)? {
        rows.extend(tx.rows(&q)?);
    }
    Frontier::of(size, &found(rows)?)
}

impl<B: Reads> Reader<B> {
    /// The subtrees `wanted` asked for.
    async fn subtrees(&self, wanted: Wanted) -> Result<Found, StoreError> {
        let mut rows = Vec::new();
        for q in queries(&wanted.take(), B::STYLE)? {
            rows.extend(self.0.rows(q).await?);
        }
        found(rows)
    }

    /// The log's id (it names the log in checkpoints by default).
    pub async fn log_id(&self) -> Result<String, StoreError> {
        let mut rows = self
            .0
            .rows(Sql::with(
                B::STYLE,
                "SELECT value FROM meta WHERE key = {1}",
                vec![Arg::Text("log_id".into())],
            ))
            .await?;
        let b = rows
            .first_mut()
            .map(|r| r.take_bytes(0))
            .transpose()?
            .ok_or_else(|| corrupt("no log id"))?;
        String::from_utf8(b).map_err(corrupt)
    }

    /// The head of the tree of `size` leaves (at most the log's head).
    pub async fn tree_root(&self, size: u64) -> Result<Hash, StoreError> {
        let wanted = Wanted::default();
        let _ = merkle::root(size, &wanted);
        merkle::root(size, &self.subtrees(wanted).await?)
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves,
    /// and that tree's head.
    pub async fn inclusion(&self, index: u64, size: u64) -> Result<(Vec<Hash>, Hash), StoreError> {
        let wanted = Wanted::default();
        let _ = merkle::root(size, &wanted);
        let _ = merkle::inclusion_proof(index, size, &wanted);
        let found = self.subtrees(wanted).await?;
        Ok((
            merkle::inclusion_proof(index, size, &found)?,
            merkle::root(size, &found)?,
        ))
    }

    /// The consistency proof from the tree of `first` leaves to that of
    /// `second` (`0 < first <= second`), and the head of the second.
    pub async fn consistency(
        &self,
        first: u64,
        second: u64,
    ) -> Result<(Vec<Hash>, Hash), StoreError> {
        let wanted = Wanted::default();
        let _ = merkle::root(second, &wanted);
        let _ = merkle::consistency_proof(first, second, &wanted);
        let found = self.subtrees(wanted).await?;
        Ok((
            merkle::consistency_proof(first, second, &found)?,
            merkle::root(second, &found)?,
        ))
    }
}

/// The rows a batch's appends add to `tree_nodes`: `(last leaf, level,
/// hash)` of each node above the leaves that they completed.
pub fn rows_of(completed: &[(u32, u64, Hash)]) -> impl Iterator<Item = (u64, u32, &Hash)> {
    completed
        .iter()
        .filter(|(level, _, _)| *level > 0)
        .map(|(level, index, hash)| (last_leaf((*level, *index)), *level, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_keyed_by_the_last_leaf_it_covers() {
        assert_eq!(last_leaf((0, 5)), 5);
        assert_eq!(last_leaf((1, 0)), 1);
        assert_eq!(last_leaf((1, 2)), 5);
        assert_eq!(last_leaf((3, 1)), 15);
    }

    #[test]
    fn the_nodes_an_append_completes_share_its_last_leaf() {
        let mut f = Frontier::default();
        for i in 0..64u64 {
            let done = f.push(merkle::leaf_hash(&i.to_be_bytes()));
            assert!(rows_of(&done).all(|(last, _, _)| last == i), "leaf {i}");
        }
    }

    #[test]
    fn the_statements_come_in_a_few_shapes() {
        let mut shapes = std::collections::BTreeSet::new();
        for size in 1..5000u64 {
            for index in [0, size / 3, size - 1] {
                let w = Wanted::default();
                let _ = merkle::root(size, &w);
                let _ = merkle::inclusion_proof(index, size, &w);
                let _ = merkle::consistency_proof(index + 1, size, &w);
                for q in queries(&w.take(), Style::Dollar).unwrap() {
                    shapes.insert(q.text);
                }
            }
        }
        assert!(shapes.len() <= 6, "{} shapes", shapes.len());
    }

    #[test]
    fn wanted_lists_each_subtree_once() {
        let w = Wanted::default();
        let _ = merkle::root(7, &w);
        let _ = merkle::root(7, &w);
        assert_eq!(w.take(), vec![(0, 6), (1, 2), (2, 0)]);
    }
}
