//! Page tokens: opaque, signed with a key kept in the store, and bound to
//! the listing's filters and caller, so a token the server did not issue (or
//! issued for another listing) is refused with `INVALID_PAGE_TOKEN`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::{Reason, Rejection};

/// Where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    /// A sequence bound (exclusive) for listings ordered by sequence.
    pub position: u64,
    /// The log position of the listing's first page.
    pub head: u64,
    /// A key bound (exclusive) for listings ordered by key.
    pub key: String,
}

const MAC_LEN: usize = 16;

/// The bound of every response (DESIGN §4): under 4 MiB, the default
/// receive limit of gRPC clients. A page ends early rather than exceed it.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Room a page keeps beside its items, for its `next_page_token` (under
/// 200 bytes) and `head_sequence`.
const PAGE_FIELDS_BYTES: usize = 1024;

/// One page of a listing: the wire form of `rows`, in order, at most
/// `limit` of them and no more than fit under [`MAX_RESPONSE_BYTES`] —
/// but always the first, so that a listing moves on. Returns them with the
/// row the next page starts after, when rows are left (the store is asked
/// for one more than `limit`, so a row left means the listing goes on).
pub fn page<'a, R, P: prost::Message>(
    rows: &'a [R],
    limit: usize,
    to_pb: impl Fn(&'a R) -> P,
) -> (Vec<P>, Option<&'a R>) {
    let budget = MAX_RESPONSE_BYTES - PAGE_FIELDS_BYTES;
    let mut items = Vec::new();
    let mut bytes = 0usize;
    for row in rows.iter().take(limit) {
        let item = to_pb(row);
        // As a repeated field of the response: its key (one byte, for field
        // number 1 of every listing), its length, its bytes.
        let len = item.encoded_len();
        let len = 1 + prost::length_delimiter_len(len) + len;
        if !items.is_empty() && bytes + len > budget {
            break;
        }
        bytes += len;
        items.push(item);
    }
    let next = match items.len() {
        n if n < rows.len() => n.checked_sub(1).and_then(|i| rows.get(i)),
        _ => None,
    };
    (items, next)
}

/// Issues and checks page tokens.
pub struct Pager {
    key: Vec<u8>,
}

impl Pager {
    /// A pager signing with `key`.
    pub fn new(key: Vec<u8>) -> Pager {
        Pager { key }
    }

    fn mac(&self, scope: &str, body: &[u8]) -> Hmac<Sha256> {
        // An HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(scope.as_bytes());
        mac.update(&[0]);
        mac.update(body);
        mac
    }

    /// The token for `cursor` in the listing described by `scope`.
    pub fn issue(&self, scope: &str, cursor: &Cursor) -> String {
        let mut body = Vec::with_capacity(16 + cursor.key.len() + MAC_LEN);
        body.extend_from_slice(&cursor.position.to_be_bytes());
        body.extend_from_slice(&cursor.head.to_be_bytes());
        body.extend_from_slice(cursor.key.as_bytes());
        let tag = self.mac(scope, &body).finalize().into_bytes();
        body.extend_from_slice(&tag[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(body)
    }

    /// The cursor of `token` (`None` for the first page), or `INVALID_PAGE_TOKEN`.
    pub fn read(&self, scope: &str, token: &str) -> Result<Option<Cursor>, Rejection> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || {
            let mut r = Rejection::field(
                "page_token",
                "is not a page token this server issued for this listing",
            );
            r.reason = Reason::INVALID_PAGE_TOKEN;
            r
        };
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        if raw.len() < 16 + MAC_LEN {
            return Err(bad());
        }
        let (body, tag) = raw.split_at(raw.len() - MAC_LEN);
        self.mac(scope, body)
            .verify_truncated_left(tag)
            .map_err(|_| bad())?;
        let position = u64::from_be_bytes(body[..8].try_into().map_err(|_| bad())?);
        let head = u64::from_be_bytes(body[8..16].try_into().map_err(|_| bad())?);
        let key = String::from_utf8(body[16..].to_vec()).map_err(|_| bad())?;
        Ok(Some(Cursor {
            position,
            head,
            key,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_ends_at_its_limit_or_before_four_mib_and_never_empty() {
        let big = |n: usize| crate::pb::Party {
            display_name: "x".repeat(n),
            ..Default::default()
        };
        let rows: Vec<usize> = (0..10).collect();
        let (items, next) = page(&rows, 3, |_| big(10));
        assert_eq!((items.len(), next), (3, Some(&2)));
        let (items, next) = page(&rows, 10, |_| big(10));
        assert_eq!((items.len(), next), (10, None));
        // 1 MiB each: three fit under 4 MiB with room for the page's fields.
        let (items, next) = page(&rows, 10, |_| big(1024 * 1024));
        assert_eq!((items.len(), next), (3, Some(&2)));
        // One item larger than the bound is still sent, alone.
        let (items, next) = page(&rows, 10, |_| big(MAX_RESPONSE_BYTES));
        assert_eq!((items.len(), next), (1, Some(&0)));
        let (items, next) = page(&rows[..0], 10, |_| big(10));
        assert_eq!((items.len(), next), (0, None));
    }

    #[test]
    fn tokens_round_trip_only_in_their_scope() {
        let p = Pager::new(b"k".to_vec());
        let c = Cursor {
            position: 42,
            head: 99,
            key: "iran".into(),
        };
        let t = p.issue("a", &c);
        assert_eq!(p.read("a", &t).unwrap(), Some(c));
        assert!(p.read("b", &t).is_err());
        assert!(p.read("a", "garbage").is_err());
        assert!(Pager::new(b"other".to_vec()).read("a", &t).is_err());
        assert_eq!(p.read("a", "").unwrap(), None);
    }
}
