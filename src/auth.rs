//! Bearer tokens: issuing, hashing, and resolving a request's token to its
//! caller. Secrets are stored only as SHA-256 hashes and compared in constant
//! time. The token table is cached in memory and kept current by the writer
//! path, so a revocation counts from the next call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{Caller, Id, PartyId, Reason, Rejection};
use crate::store::TokenRecord;

/// Prefix of party tokens: `bc_<token id, 32 hex>_<secret>`.
const PARTY_PREFIX: &str = "bc_";
/// The admin token file's name in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Who a request's token names, and which token it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The caller.
    pub caller: Caller,
    /// The party token's id (`None` for the admin).
    pub token_id: Option<Id>,
}

/// Resolves bearer tokens to callers.
pub struct Authenticator {
    admin_hash: [u8; 32],
    tokens: RwLock<HashMap<Id, TokenRecord>>,
    /// Counts the changes this process made to the cache.
    changes: std::sync::atomic::AtomicU64,
}

/// A freshly issued token: shown once, stored as `secret_hash`.
pub struct NewToken {
    /// Its id.
    pub token_id: Id,
    /// The bearer token text.
    pub token: String,
    /// SHA-256 of its secret.
    pub secret_hash: [u8; 32],
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn random_secret() -> Result<String, Rejection> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| Rejection::new(Reason::INTERNAL, format!("no randomness: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// Makes a new party token (256 random bits).
pub fn new_token() -> Result<NewToken, Rejection> {
    let token_id = Id::new();
    let secret = random_secret()?;
    Ok(NewToken {
        token_id,
        token: format!("{PARTY_PREFIX}{}_{secret}", token_id.0.simple()),
        secret_hash: sha256(secret.as_bytes()),
    })
}

/// The admin token: `from_env` if given, else the one in
/// `<data_dir>/admin.token`, generated (mode 0600) on the first start.
/// Returns the token and, when it lives in a file, the file's path.
pub fn admin_token(
    from_env: Option<String>,
    data_dir: &Path,
) -> std::io::Result<(String, Option<PathBuf>)> {
    if let Some(t) = from_env.filter(|t| !t.trim().is_empty()) {
        return Ok((t.trim().to_owned(), None));
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_owned(), Some(path))),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is empty; delete it to generate a new admin token",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let token = format!(
        "bca_{}",
        random_secret().map_err(|e| std::io::Error::other(e.message))?
    );
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    Ok((token, Some(path)))
}

impl Authenticator {
    /// An authenticator for this admin token and these stored tokens.
    pub fn new(admin_token: &str, tokens: Vec<TokenRecord>) -> Authenticator {
        Authenticator {
            admin_hash: sha256(admin_token.as_bytes()),
            tokens: RwLock::new(tokens.into_iter().map(|t| (t.token_id, t)).collect()),
            changes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Resolves the `authorization: Bearer TOKEN` metadata.
    pub fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Identity, Rejection> {
        let unauth = |m: &str| Rejection::new(Reason::UNAUTHENTICATED, m);
        let header = metadata
            .get("authorization")
            .ok_or_else(|| unauth("missing 'authorization: Bearer TOKEN' metadata"))?
            .to_str()
            .map_err(|_| unauth("the authorization metadata is not text"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| unauth("the authorization metadata must be 'Bearer TOKEN'"))?
            .trim();
        self.resolve(token)
            .ok_or_else(|| unauth("the token is unknown or revoked"))
    }

    /// The identity a token names, if it is valid now.
    pub fn resolve(&self, token: &str) -> Option<Identity> {
        if let Some((id, secret)) = parse_party_token(token) {
            let tokens = self.tokens.read().ok()?;
            let rec = tokens.get(&id)?;
            let ok: bool = rec.secret_hash.ct_eq(&sha256(secret.as_bytes())).into();
            return (ok && !rec.revoked).then(|| Identity {
                caller: Caller::Party(rec.party_id.clone()),
                token_id: Some(id),
            });
        }
        let ok: bool = self.admin_hash.ct_eq(&sha256(token.as_bytes())).into();
        ok.then_some(Identity {
            caller: Caller::Admin,
            token_id: None,
        })
    }

    /// Whether the identity's token is still valid (not revoked).
    pub fn still_valid(&self, who: &Identity) -> bool {
        match who.token_id {
            None => true,
            Some(id) => self
                .tokens
                .read()
                .map(|t| t.get(&id).is_some_and(|r| !r.revoked))
                .unwrap_or(false),
        }
    }

    /// How many changes this process has made to the cache so far.
    pub fn version(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Replaces the cache with the stored tokens (tokens changed elsewhere),
    /// unless this process changed a token since `seen` (then the snapshot
    /// may predate that change; the next reload brings it).
    pub fn replace_all(&self, tokens: Vec<TokenRecord>, seen: u64) {
        if let Ok(mut t) = self.tokens.write()
            && self.version() == seen
        {
            *t = tokens.into_iter().map(|r| (r.token_id, r)).collect();
        }
    }

    /// Records a token the writer committed.
    pub fn issued(&self, token_id: Id, party_id: PartyId, secret_hash: [u8; 32]) {
        if let Ok(mut t) = self.tokens.write() {
            self.changes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            t.insert(
                token_id,
                TokenRecord {
                    token_id,
                    party_id,
                    secret_hash,
                    revoked: false,
                },
            );
        }
    }

    /// Records a revocation the writer committed.
    pub fn revoked(&self, token_id: Id) {
        if let Ok(mut t) = self.tokens.write() {
            self.changes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Some(r) = t.get_mut(&token_id) {
                r.revoked = true;
            }
        }
    }
}

/// Refuses a call without a valid token before its body is decoded, so that
/// `UNAUTHENTICATED` wins over `INVALID_ARGUMENT` (DESIGN §4) even for a body
/// that does not decode or is over the size limit. The caller's [`Identity`]
/// is left in the request's extensions for the handler.
#[derive(Clone)]
pub struct RequireToken(pub std::sync::Arc<Authenticator>);

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let who = self
            .0
            .authenticate(req.metadata())
            .map_err(|r| crate::error::status(&r))?;
        tracing::Span::current().record("caller", who.caller.actor());
        // The handler reads the caller from here instead of checking again.
        req.extensions_mut().insert(who);
        Ok(req)
    }
}

fn parse_party_token(token: &str) -> Option<(Id, &str)> {
    let rest = token.strip_prefix(PARTY_PREFIX)?;
    let (id, secret) = (rest.get(..32)?, rest.get(32..)?);
    let secret = secret.strip_prefix('_')?;
    Some((Id(uuid::Uuid::try_parse(id).ok()?), secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_resolve_and_revoked_ones_do_not() {
        let auth = Authenticator::new("root-secret", vec![]);
        let t = new_token().unwrap();
        let party = PartyId::parse("iran").unwrap();
        assert!(auth.resolve(&t.token).is_none());
        auth.issued(t.token_id, party.clone(), t.secret_hash);
        assert_eq!(auth.resolve(&t.token).unwrap().caller, Caller::Party(party));
        let mut forged = t.token.clone();
        forged.pop();
        forged.push('x');
        assert!(auth.resolve(&forged).is_none());
        auth.revoked(t.token_id);
        assert!(auth.resolve(&t.token).is_none());
        assert_eq!(auth.resolve("root-secret").unwrap().caller, Caller::Admin);
        assert!(auth.resolve("root-secreT").is_none());
    }
}
