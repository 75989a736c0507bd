//! What every backend's migrations share: which of the known migrations
//! a database still needs, and the key that signs page tokens.

use super::error::{Fault, StoreError};

/// The indexes, from 0, of the migrations a database at schema version
/// `applied` still needs, of the `known` this binary has. A database newer
/// than this binary is refused: it would be read with the wrong schema.
pub fn pending(applied: i64, known: usize) -> Result<std::ops::Range<usize>, StoreError> {
    let applied = usize::try_from(applied).map_err(|_| {
        StoreError::new(
            Fault::Corrupt,
            format!("the database's schema version {applied} is not a version"),
        )
    })?;
    if applied > known {
        return Err(StoreError::new(
            Fault::Internal,
            format!(
                "the database has schema version {applied}, newer than this binary knows ({known})"
            ),
        ));
    }
    Ok(applied..known)
}

/// A new random key for signing page tokens, kept in the `meta` table.
pub fn new_page_key() -> Result<[u8; 32], StoreError> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| StoreError::new(Fault::Internal, format!("no randomness: {e}")))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::pending;

    #[test]
    fn a_database_gets_the_migrations_after_its_version_and_a_newer_one_is_refused() {
        assert_eq!(pending(0, 3).ok(), Some(0..3));
        assert_eq!(pending(2, 3).ok(), Some(2..3));
        assert_eq!(pending(3, 3).ok(), Some(3..3));
        let newer = pending(4, 3).expect_err("newer than this binary");
        assert!(
            newer.message.contains("schema version 4"),
            "{}",
            newer.message
        );
        assert!(pending(-1, 3).is_err());
    }
}
