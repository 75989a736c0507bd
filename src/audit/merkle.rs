//! The RFC 9162 Merkle tree over SHA-256 (§2.1): hashes, the tree head,
//! inclusion and consistency proofs and their verification.
//!
//! Proofs are built from the hashes of *perfect* subtrees — the subtree of
//! `2^level` leaves starting at leaf `index << level` — which a store can
//! keep as it appends (see [`Frontier`]), so that a proof at any size costs
//! `O(log n)` lookups and no recomputation.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The leaf hash of `data`: `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// An interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The head of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Where the hashes of perfect subtrees come from.
pub trait Subtrees {
    /// Why a hash could not be had.
    type Error;
    /// The hash of the perfect subtree of `2^level` leaves starting at leaf
    /// `index << level` (level 0: the leaf hash of leaf `index`).
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// The largest power of two below `n` (for `n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH of the leaves `[start, start + len)`, where `start` is a multiple
/// of the smallest power of two at least `len` (as every range the RFC's
/// recursion visits is).
fn range<S: Subtrees>(start: u64, len: u64, s: &S) -> Result<Hash, S::Error> {
    if len.is_power_of_two() {
        let level = len.trailing_zeros();
        return s.subtree(level, start >> level);
    }
    let k = split(len);
    Ok(node_hash(
        &range(start, k, s)?,
        &range(start + k, len - k, s)?,
    ))
}

/// The tree head of the first `size` leaves.
pub fn root<S: Subtrees>(size: u64, s: &S) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    range(0, size, s)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves
/// (RFC 9162 §2.1.3.1), for `index < size`.
pub fn inclusion_proof<S: Subtrees>(index: u64, size: u64, s: &S) -> Result<Vec<Hash>, S::Error> {
    let mut proof = Vec::new();
    let (mut start, mut len, mut m) = (0u64, size, index);
    // Walk down from the root, noting the sibling of each step; the RFC
    // lists them from the leaf up.
    while len > 1 {
        let k = split(len);
        if m < k {
            proof.push(range(start + k, len - k, s)?);
            len = k;
        } else {
            proof.push(range(start, k, s)?);
            start += k;
            len -= k;
            m -= k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// The consistency proof between the trees of `first` and `second`
/// leaves (RFC 9162 §2.1.4.1), for `0 < first <= second`.
pub fn consistency_proof<S: Subtrees>(
    first: u64,
    second: u64,
    s: &S,
) -> Result<Vec<Hash>, S::Error> {
    let mut proof = Vec::new();
    let (mut start, mut len, mut m, mut whole) = (0u64, second, first, true);
    while m != len {
        let k = split(len);
        if m <= k {
            proof.push(range(start + k, len - k, s)?);
            len = k;
        } else {
            proof.push(range(start, k, s)?);
            start += k;
            len -= k;
            m -= k;
            whole = false;
        }
    }
    if !whole {
        proof.push(range(start, len, s)?);
    }
    proof.reverse();
    Ok(proof)
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The sizes or index cannot be (an index past the size, sizes out of order).
    #[error("the proof's sizes are impossible: {0}")]
    Sizes(&'static str),
    /// The proof has the wrong number of hashes for its sizes.
    #[error("the proof has the wrong length")]
    Length,
    /// The hashes do not lead to the root.
    #[error("the proof does not lead to the tree head")]
    Mismatch,
}

/// Verifies that `leaf` (a leaf hash) is leaf `index` of the tree of
/// `size` leaves whose head is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Sizes(
            "the leaf index is not below the tree size",
        ));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::Length);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Length);
    }
    if &r != root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// Verifies that the tree of `first` leaves with head `first_root` is a
/// prefix of the tree of `second` leaves with head `second_root` (RFC 9162
/// §2.1.4.2).
pub fn verify_consistency(
    first: u64,
    second: u64,
    proof: &[Hash],
    first_root: &Hash,
    second_root: &Hash,
) -> Result<(), ProofError> {
    if first == 0 || first > second {
        return Err(ProofError::Sizes("the first size is 0 or past the second"));
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::Length);
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(first_root);
    }
    path.extend(proof);
    let Some((head, rest)) = path.split_first() else {
        return Err(ProofError::Length);
    };
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (**head, **head);
    for c in rest {
        if s == 0 {
            return Err(ProofError::Length);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Length);
    }
    if &fr != first_root || &sr != second_root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// The right edge of a growing tree: the heads of the perfect subtrees its
/// size decomposes into, largest first. Appending a leaf completes zero or
/// more perfect subtrees, which a store records to answer [`Subtrees`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (level, hash) of each perfect subtree of the edge, largest first.
    edge: Vec<(u32, Hash)>,
}

impl Frontier {
    /// The edge of a tree of `size` leaves, from its subtrees.
    pub fn of<S: Subtrees>(size: u64, s: &S) -> Result<Frontier, S::Error> {
        let mut edge = Vec::new();
        let mut start = 0u64;
        for level in (0..64u32).rev() {
            if size & (1 << level) != 0 {
                edge.push((level, s.subtree(level, start >> level)?));
                start += 1 << level;
            }
        }
        Ok(Frontier { size, edge })
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf; returns every perfect subtree it completes, as
    /// `(level, index, hash)`, the leaf itself (level 0) first.
    pub fn push(&mut self, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let index = self.size;
        self.size += 1;
        let mut done = vec![(0, index, leaf)];
        let (mut level, mut hash) = (0u32, leaf);
        while let Some(&(l, left)) = self.edge.last() {
            if l != level {
                break;
            }
            self.edge.pop();
            hash = node_hash(&left, &hash);
            level += 1;
            done.push((level, index >> level, hash));
        }
        self.edge.push((level, hash));
        done
    }

    /// The tree head.
    pub fn root(&self) -> Hash {
        let mut it = self.edge.iter().rev();
        match it.next() {
            None => empty_root(),
            Some(&(_, last)) => it.fold(last, |acc, (_, left)| node_hash(left, &acc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use super::*;

    /// Every perfect subtree of a list of leaf hashes, kept as a store would.
    #[derive(Default)]
    struct Memory {
        nodes: HashMap<(u32, u64), Hash>,
        frontier: Frontier,
    }

    impl Memory {
        fn of(leaves: &[Hash]) -> Memory {
            let mut m = Memory::default();
            for l in leaves {
                for (level, index, h) in m.frontier.push(*l) {
                    m.nodes.insert((level, index), h);
                }
            }
            m
        }
    }

    impl Subtrees for Memory {
        type Error = Infallible;
        fn subtree(&self, level: u32, index: u64) -> Result<Hash, Infallible> {
            Ok(self.nodes[&(level, index)])
        }
    }

    /// MTH straight from RFC 9162 §2.1.1, for comparison.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn unhex(s: &str) -> Hash {
        let v: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    /// The inputs and tree heads of RFC 6962's reference tests (the
    /// certificate-transparency test data), sizes 1 to 8.
    fn reference() -> (Memory, Vec<Hash>) {
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let leaves: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
        (Memory::of(&leaves), leaves)
    }

    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn tree_heads_are_rfc_6962s() {
        let (m, leaves) = reference();
        for size in 0..=8u64 {
            assert_eq!(
                root(size, &m).unwrap(),
                unhex(ROOTS[size as usize]),
                "size {size}"
            );
            assert_eq!(
                Frontier::of(size, &m).unwrap().root(),
                unhex(ROOTS[size as usize]),
                "size {size}"
            );
            assert_eq!(mth(&leaves[..size as usize]), unhex(ROOTS[size as usize]));
        }
    }

    #[test]
    fn proofs_are_rfc_6962s() {
        let (m, leaves) = reference();
        let hexes = |v: &[&str]| v.iter().map(|h| unhex(h)).collect::<Vec<_>>();
        for (index, size, want) in [
            (
                0u64,
                8u64,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                vec![
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                vec!["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                vec![
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ] {
            let proof = inclusion_proof(index, size, &m).unwrap();
            assert_eq!(proof, hexes(&want), "inclusion {index} in {size}");
            verify_inclusion(
                index,
                size,
                &leaves[index as usize],
                &proof,
                &unhex(ROOTS[size as usize]),
            )
            .unwrap();
        }
        for (first, second, want) in [
            (1u64, 1u64, vec![]),
            (
                1,
                8,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                vec![
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                vec![
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ] {
            let proof = consistency_proof(first, second, &m).unwrap();
            assert_eq!(proof, hexes(&want), "consistency {first} to {second}");
            let (r1, r2) = (unhex(ROOTS[first as usize]), unhex(ROOTS[second as usize]));
            verify_consistency(first, second, &proof, &r1, &r2).unwrap();
        }
    }

    #[test]
    fn every_proof_of_every_size_verifies_and_a_changed_hash_does_not() {
        let leaves: Vec<Hash> = (0..45u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let m = Memory::of(&leaves);
        let flip = |h: &Hash| {
            let mut h = *h;
            h[7] ^= 1;
            h
        };
        for size in 1..=leaves.len() as u64 {
            let head = mth(&leaves[..size as usize]);
            assert_eq!(root(size, &m).unwrap(), head);
            for index in 0..size {
                let leaf = &leaves[index as usize];
                let proof = inclusion_proof(index, size, &m).unwrap();
                verify_inclusion(index, size, leaf, &proof, &head).unwrap();
                assert!(verify_inclusion(index, size, &flip(leaf), &proof, &head).is_err());
                if let Some(p) = proof.first() {
                    let mut bad = proof.clone();
                    bad[0] = flip(p);
                    assert!(verify_inclusion(index, size, leaf, &bad, &head).is_err());
                    assert_eq!(
                        verify_inclusion(index, size, leaf, &proof[1..], &head),
                        Err(ProofError::Length)
                    );
                }
            }
            for first in 1..=size {
                let first_head = mth(&leaves[..first as usize]);
                let proof = consistency_proof(first, size, &m).unwrap();
                verify_consistency(first, size, &proof, &first_head, &head).unwrap();
                assert!(
                    verify_consistency(first, size, &proof, &flip(&first_head), &head).is_err()
                );
                assert!(
                    verify_consistency(first, size, &proof, &first_head, &flip(&head)).is_err()
                );
            }
        }
        assert!(verify_inclusion(3, 3, &leaves[3], &[], &leaves[3]).is_err());
        assert!(verify_consistency(0, 3, &[], &empty_root(), &mth(&leaves[..3])).is_err());
    }

    #[test]
    fn the_frontier_completes_each_perfect_subtree_once() {
        let mut f = Frontier::default();
        let mut completed = Vec::new();
        for i in 0..8u32 {
            completed.extend(
                f.push(leaf_hash(&i.to_be_bytes()))
                    .into_iter()
                    .map(|(l, x, _)| (l, x)),
            );
        }
        assert_eq!(completed.iter().filter(|(l, _)| *l == 0).count(), 8);
        assert_eq!(completed.iter().filter(|(l, _)| *l == 1).count(), 4);
        assert_eq!(completed.iter().filter(|(l, _)| *l == 2).count(), 2);
        assert_eq!(completed.iter().filter(|(l, _)| *l == 3).count(), 1);
        assert_eq!(f.size(), 8);
    }
}
