//! Bearer tokens: issuing, hashing, and resolving a request's token to its
//! caller. Secrets are stored only as SHA-256 hashes and compared in constant
//! time. The token table is cached in memory and kept current by the writer
//! path, so a revocation counts from the next call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::Clock;
use crate::domain::{Caller, Id, Reason, Rejection, Time};
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
    /// Whether the token may only read.
    pub read_only: bool,
}

/// A last use is recorded when it is this much newer than the one before
/// (so that calls do not all write one shared word).
const USE_GRANULARITY_MICROS: i64 = 1_000_000;

/// A cached token and when this process last saw it used.
struct Entry {
    rec: TokenRecord,
    /// Microseconds since the epoch; 0 = not since start.
    last_use: AtomicI64,
    /// The last use already handed to the store.
    stored_use: AtomicI64,
}

impl Entry {
    fn new(rec: TokenRecord) -> Entry {
        let stored = rec.last_use_time.map_or(0, |t| t.0);
        Entry {
            rec,
            last_use: AtomicI64::new(stored),
            stored_use: AtomicI64::new(stored),
        }
    }

    fn used(&self, now: Time) {
        if now.0 >= self.last_use.load(Ordering::Relaxed) + USE_GRANULARITY_MICROS {
            self.last_use.fetch_max(now.0, Ordering::Relaxed);
        }
    }

    /// The record, with the newest last use known here.
    fn info(&self) -> TokenRecord {
        let used = self.last_use.load(Ordering::Relaxed);
        let mut rec = self.rec.clone();
        if used > rec.last_use_time.map_or(0, |t| t.0) {
            rec.last_use_time = Some(Time(used));
        }
        rec
    }
}

/// Resolves bearer tokens to callers.
pub struct Authenticator {
    admin_hash: [u8; 32],
    tokens: RwLock<HashMap<Id, Entry>>,
    /// Counts the changes this process made to the cache.
    changes: std::sync::atomic::AtomicU64,
    /// Whether a token has expired is read on it.
    clock: Clock,
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
    pub fn new(admin_token: &str, tokens: Vec<TokenRecord>, clock: Clock) -> Authenticator {
        Authenticator {
            clock,
            admin_hash: sha256(admin_token.as_bytes()),
            tokens: RwLock::new(
                tokens
                    .into_iter()
                    .map(|t| (t.token_id, Entry::new(t)))
                    .collect(),
            ),
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
        self.resolve(token, self.clock.now())
    }

    /// The identity a token names, if it is valid at `now`.
    pub fn resolve(&self, token: &str, now: Time) -> Result<Identity, Rejection> {
        let unknown = || Rejection::new(Reason::UNAUTHENTICATED, "the token is unknown or revoked");
        if let Some((id, secret)) = parse_party_token(token) {
            let tokens = self.tokens.read().map_err(|_| unknown())?;
            let e = tokens.get(&id).ok_or_else(unknown)?;
            let ok: bool = e.rec.secret_hash.ct_eq(&sha256(secret.as_bytes())).into();
            if !ok || e.rec.revoke_time.is_some() {
                return Err(unknown());
            }
            if !e.rec.valid_at(now) {
                return Err(Rejection::new(
                    Reason::UNAUTHENTICATED,
                    "the token has expired; ask the admin for a new one",
                ));
            }
            e.used(now);
            return Ok(Identity {
                caller: Caller::Party(e.rec.party_id.clone()),
                token_id: Some(id),
                read_only: e.rec.read_only,
            });
        }
        let ok: bool = self.admin_hash.ct_eq(&sha256(token.as_bytes())).into();
        if !ok {
            return Err(unknown());
        }
        Ok(Identity {
            caller: Caller::Admin,
            token_id: None,
            read_only: false,
        })
    }

    /// Whether the identity's token is still valid (not revoked, not expired).
    pub fn still_valid(&self, who: &Identity) -> bool {
        match who.token_id {
            None => true,
            Some(id) => self
                .tokens
                .read()
                .map(|t| t.get(&id).is_some_and(|e| e.rec.valid_at(self.clock.now())))
                .unwrap_or(false),
        }
    }

    /// Every cached token with the newest last use known here, ordered by id.
    pub fn list(&self) -> Vec<TokenRecord> {
        let mut v: Vec<TokenRecord> = self
            .tokens
            .read()
            .map(|t| t.values().map(Entry::info).collect())
            .unwrap_or_default();
        v.sort_by_key(|r| r.token_id.0);
        v
    }

    /// The uses seen since the last call, for the store.
    pub fn uses_to_store(&self) -> Vec<(Id, Time)> {
        let Ok(tokens) = self.tokens.read() else {
            return Vec::new();
        };
        tokens
            .iter()
            .filter_map(|(id, e)| {
                let used = e.last_use.load(Ordering::Relaxed);
                (e.stored_use.swap(used, Ordering::Relaxed) < used).then_some((*id, Time(used)))
            })
            .collect()
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
            let fresh = tokens
                .into_iter()
                .map(|r| {
                    let e = Entry::new(r);
                    // Uses this process saw and has not stored yet stay.
                    if let Some(old) = t.get(&e.rec.token_id) {
                        e.last_use
                            .fetch_max(old.last_use.load(Ordering::Relaxed), Ordering::Relaxed);
                        e.stored_use
                            .store(old.stored_use.load(Ordering::Relaxed), Ordering::Relaxed);
                    }
                    (e.rec.token_id, e)
                })
                .collect();
            *t = fresh;
        }
    }

    /// Records a token the writer committed.
    pub fn issued(&self, rec: TokenRecord) {
        if let Ok(mut t) = self.tokens.write() {
            self.changes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            t.insert(rec.token_id, Entry::new(rec));
        }
    }

    /// Records a revocation the writer committed.
    pub fn revoked(&self, token_id: Id, at: Time) {
        if let Ok(mut t) = self.tokens.write() {
            self.changes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Some(e) = t.get_mut(&token_id) {
                e.rec.revoke_time = Some(at);
            }
        }
    }
}

/// Refuses a call without a valid token before its body is decoded, so that
/// `UNAUTHENTICATED` wins over `INVALID_ARGUMENT` (DESIGN §4) even for a body
/// that does not decode or is over the size limit. The caller's [`Identity`]
/// is left in the request's extensions for the handler.
/// The caller's request rate is counted here too, so that a party over its
/// limit costs a refusal before anything else.
#[derive(Clone)]
pub struct RequireToken(
    pub std::sync::Arc<Authenticator>,
    pub std::sync::Arc<crate::quota::Quotas>,
);

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let who = self
            .0
            .authenticate(req.metadata())
            .map_err(|r| crate::error::status(&r))?;
        tracing::Span::current().record("caller", who.caller.actor());
        self.1.admit(&who.caller).map_err(|r| {
            let mut status = crate::error::status(&r);
            crate::quota::mark_for_tarpit(&mut status);
            status
        })?;
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
    use crate::domain::PartyId;

    #[test]
    fn issued_tokens_resolve_and_revoked_ones_do_not() {
        let auth = Authenticator::new("root-secret", vec![], Clock::system());
        let t = new_token().unwrap();
        let party = PartyId::parse("iran").unwrap();
        let now = Clock::system().now();
        assert!(auth.resolve(&t.token, now).is_err());
        auth.issued(TokenRecord {
            token_id: t.token_id,
            party_id: party.clone(),
            secret_hash: t.secret_hash,
            read_only: true,
            create_time: now,
            expire_time: Some(now.plus_secs(60)),
            revoke_time: None,
            last_use_time: None,
        });
        let who = auth.resolve(&t.token, now).unwrap();
        assert_eq!(who.caller, Caller::Party(party));
        assert!(who.read_only);
        assert_eq!(auth.uses_to_store(), vec![(t.token_id, now)]);
        assert_eq!(auth.uses_to_store(), vec![]);
        assert!(
            auth.resolve(&t.token, now.plus_secs(60)).is_err(),
            "expired"
        );
        let mut forged = t.token.clone();
        forged.pop();
        forged.push('x');
        assert!(auth.resolve(&forged, now).is_err());
        auth.revoked(t.token_id, now);
        assert!(auth.resolve(&t.token, now).is_err());
        assert_eq!(
            auth.resolve("root-secret", now).unwrap().caller,
            Caller::Admin
        );
        assert!(auth.resolve("root-secreT", now).is_err());
    }
}
