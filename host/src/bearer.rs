//! Bearer credentials presented to our own ports: the admin API's token (in
//! `Authorization`) and a proxy route's consumer secret (in `Proxy-Authorization`). Both
//! are store secrets read on every request, so rotating one needs no restart, and both are
//! compared in equal time.

use crate::store::{SecretStore, StoreError};
use axum::http::HeaderValue;
use secrecy::ExposeSecret;

/// The credentials of a `Bearer` header value; the scheme is case-insensitive (RFC 9110
/// §11.1).
pub(crate) fn credentials(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Equal-time comparison, so response timing reveals neither how much of a guess matched
/// nor the secret's length: the SHA-256 digests (always 32 bytes) are compared, every byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// Whether `presented` (a header value) carries the bearer credentials stored as `name`.
/// A secret that is not set admits nobody.
pub(crate) async fn matches(
    store: &dyn SecretStore,
    name: &str,
    presented: Option<&HeaderValue>,
) -> Result<bool, StoreError> {
    let presented = presented
        .and_then(|v| v.to_str().ok())
        .and_then(credentials);
    let Some(expected) = store.get(name).await? else {
        return Ok(false);
    };
    Ok(presented.is_some_and(|p| same(p.as_bytes(), expected.value.expose_secret().as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for ok in ["Bearer abc", "bearer abc", "BEARER abc", "  Bearer   abc "] {
            assert_eq!(credentials(ok), Some("abc"), "{ok}");
        }
        for bad in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", ""] {
            assert_eq!(credentials(bad), None, "{bad}");
        }
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }
}
