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
