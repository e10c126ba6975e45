//! Who may do what: operators with a bearer token, and buyers identified by the demo body
//! field, a trusted proxy's header, or a signed token.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// How a buyer is identified.
pub enum Buyers {
    /// Demo: the body's `user` field, unchecked. For trying the server out only.
    Demo,
    /// A trusted front proxy authenticated the buyer and passes the id in this header
    /// (the proxy must strip it from what clients send).
    Header(axum::http::HeaderName),
    /// The buyer presents `Authorization: Bearer <JWT>`, HS256, with the buyer id as its
    /// `sub` claim and an `exp`.
    Jwt(Box<(DecodingKey, Validation)>),
}

impl std::fmt::Debug for Buyers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Demo => f.write_str("Demo"),
            Self::Header(name) => write!(f, "Header({name})"),
            Self::Jwt(_) => f.write_str("Jwt"),
        }
    }
}

/// Why a buyer could not be identified.
#[derive(Debug, PartialEq, Eq)]
pub enum NotABuyer {
    /// No credentials, or credentials that do not check out.
    Unauthorized(&'static str),
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

impl Buyers {
    /// HS256 tokens signed with `secret`.
    pub fn jwt(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self::Jwt(Box::new((DecodingKey::from_secret(secret), validation)))
    }

    /// The authenticated buyer (`None` in demo mode: the body says).
    pub fn buyer(&self, headers: &HeaderMap) -> Result<Option<u64>, NotABuyer> {
        match self {
            Self::Demo => Ok(None),
            Self::Header(name) => {
                let value = headers
                    .get(name)
                    .ok_or(NotABuyer::Unauthorized("no buyer header"))?;
                let text = value
                    .to_str()
                    .map_err(|_| NotABuyer::Unauthorized("the buyer header is not text"))?;
                canonical_u64(text)
                    .map(Some)
                    .ok_or(NotABuyer::Unauthorized("the buyer header is not a u64"))
            }
            Self::Jwt(key) => {
                let token = bearer(headers).ok_or(NotABuyer::Unauthorized("no bearer token"))?;
                let data = jsonwebtoken::decode::<Claims>(token, &key.0, &key.1)
                    .map_err(|_| NotABuyer::Unauthorized("the token does not verify"))?;
                canonical_u64(&data.claims.sub)
                    .map(Some)
                    .ok_or(NotABuyer::Unauthorized(
                        "the token's sub is not a u64 buyer id",
                    ))
            }
        }
    }
}

/// The bearer token of an `Authorization` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Whether the request carries the operator token (compared in constant time).
pub fn is_operator(headers: &HeaderMap, token: &str) -> bool {
    bearer(headers).is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// Equal, in a time that depends on the lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// A number in canonical decimal: digits only, no sign, no leading zero (but `0`).
pub fn canonical_u64(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|byte| byte.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_paths_and_headers_are_canonical() {
        assert_eq!(canonical_u64("2"), Some(2));
        assert_eq!(canonical_u64("0"), Some(0));
        for bad in ["", "+2", "02", "-1", "2 ", "1e3", "18446744073709551616"] {
            assert_eq!(canonical_u64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secre"));
    }
}
