//! Who may do what: operators with a bearer token, and buyers identified by the demo body
//! field, a trusted proxy's header, or a signed token.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// How a buyer is identified.
pub enum Buyers {
    /// Demo: the body's `user` field, unchecked. For trying the server out only.
    Demo,
    /// A trusted front proxy authenticated the buyer and passes the id in this header
    /// (the proxy must strip it from what clients send).
    Header(axum::http::HeaderName),
    /// The buyer presents `Authorization: Bearer <JWT>` with the buyer id as its `sub`
    /// claim and an `exp`, signed with a shared secret (HS256) or with the private half of
    /// one of the public keys given.
    Jwt(Box<Tokens>),
}

/// The keys tokens are verified with now: replaced whole when the key files are read
/// again (on SIGHUP), with the tokens remembered as verified, which a removed key may
/// have verified.
pub struct Tokens {
    keys: parking_lot::RwLock<TokenKeys>,
    /// Told when a token that did not verify names a `kid` none of the keys has: the
    /// provider may have started signing with a key published since the last fetch.
    unknown_key: tokio::sync::Notify,
}

impl Tokens {
    /// Resolves after a token named a key none of ours has (see [`Tokens`]).
    pub async fn named_an_unknown_key(&self) {
        self.unknown_key.notified().await;
    }

    /// How many keys tokens are checked against now.
    pub fn key_count(&self) -> usize {
        self.keys.read().keys.len()
    }

    /// Verifies with `keys` from now on.
    pub fn replace(&self, keys: TokenKeys) {
        *self.keys.write() = keys;
    }
}

/// The keys buyer tokens are verified with: one HS256 secret, or public keys (RSA, EC,
/// Ed25519), each accepting only the algorithms of its kind, so a token cannot pick a
/// weaker algorithm or pass a public key off as an HMAC secret.
pub struct TokenKeys {
    keys: Vec<TokenKey>,
    /// Tokens that verified with a public key, so a buyer's next request with the same
    /// token costs a look-up, not a signature check (22-58 microseconds, against 1.1 for
    /// HS256, which is not cached).
    verified: Option<Verified>,
}

/// Tokens that verified, by their whole text (so one that differs in any byte is checked
/// afresh), in shards of up to 1,024 each, a shard emptied when full. What a token
/// says does not change, so a hit needs only its `exp` checked again.
struct Verified {
    shards: Box<[VerifiedShard]>,
    hasher: std::collections::hash_map::RandomState,
}

/// Verified tokens with the same hash modulo the shard count.
type VerifiedShard = parking_lot::Mutex<std::collections::HashMap<Box<str>, Claims>>;

/// Shards of [`Verified`], and tokens each holds: at most 16,384 tokens, about 10 MiB
/// with tokens of 600 bytes.
const VERIFIED_SHARDS: usize = 16;
const VERIFIED_PER_SHARD: usize = 1024;
/// The longest token remembered (a few hundred bytes is usual); a longer one is checked
/// on every use, so memory stays bounded at 64 MiB whatever tokens the provider signs.
const VERIFIED_TOKEN_MAX: usize = 4096;

impl Verified {
    fn new() -> Self {
        Self {
            shards: (0..VERIFIED_SHARDS)
                .map(|_| parking_lot::Mutex::new(std::collections::HashMap::new()))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn shard(&self, token: &str) -> &VerifiedShard {
        use std::hash::BuildHasher;
        &self.shards[self.hasher.hash_one(token) as usize % VERIFIED_SHARDS]
    }

    fn get(&self, token: &str) -> Option<Claims> {
        self.shard(token).lock().get(token).cloned()
    }

    fn insert(&self, token: &str, claims: &Claims) {
        if token.len() > VERIFIED_TOKEN_MAX {
            return;
        }
        let mut shard = self.shard(token).lock();
        if shard.len() >= VERIFIED_PER_SHARD {
            shard.clear();
        }
        shard.insert(token.into(), claims.clone());
    }
}

struct TokenKey {
    /// The key's `kid`, when it came from a JWKS.
    id: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// The most public keys `--jwt-key` files may hold together: a token without a `kid` is
/// tried against each, and a verification costs tens of microseconds.
pub const TOKEN_KEYS_MAX: usize = 16;

/// What a token must say besides its buyer and expiry: an audience among `audience` and
/// an issuer among `issuer`, each only when given. A token that names an audience is
/// refused when no audience is given (as RFC 7519 asks: a server not named in `aud` is
/// not the one the token is for).
#[derive(Debug, Clone, Default)]
pub struct TokenRules {
    /// Accepted `aud` values (`--jwt-audience`).
    pub audience: Vec<String>,
    /// Accepted `iss` values (`--jwt-issuer`).
    pub issuer: Vec<String>,
}

impl TokenKey {
    fn new(
        id: Option<String>,
        key: DecodingKey,
        algorithms: &[Algorithm],
        rules: &TokenRules,
    ) -> Self {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.to_vec();
        // A token not valid before an instant (`nbf`, where it has one) is refused until
        // then, within the same leeway as `exp`.
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if !rules.audience.is_empty() {
            validation.set_audience(&rules.audience);
            required.push("aud");
        }
        if !rules.issuer.is_empty() {
            validation.set_issuer(&rules.issuer);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Self {
            id,
            key,
            validation,
        }
    }
}

const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
const ED: &[Algorithm] = &[Algorithm::EdDSA];

impl TokenKeys {
    /// Verifies HS256 tokens signed with `secret` that say what `rules` ask.
    pub fn secret(secret: &[u8], rules: &TokenRules) -> Self {
        Self {
            keys: vec![TokenKey::new(
                None,
                DecodingKey::from_secret(secret),
                &[Algorithm::HS256],
                rules,
            )],
            verified: None,
        }
    }

    /// Verifies tokens signed with the private halves of the public keys in `files`
    /// (name, contents), each a public key in PEM (RSA, EC P-256 or P-384, Ed25519) or a
    /// JWKS (the JSON an identity provider publishes at its `jwks_uri`), that say what
    /// `rules` ask.
    ///
    /// # Errors
    /// What is wrong with which file, as one line.
    pub fn public(files: &[(String, Vec<u8>)], rules: &TokenRules) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (name, contents) in files {
            let text = String::from_utf8_lossy(contents);
            let found = if text.trim_start().starts_with('{') {
                jwks(contents, rules).map_err(|why| format!("--jwt-key {name}: {why}"))?
            } else {
                vec![pem(&text, rules).map_err(|why| format!("--jwt-key {name}: {why}"))?]
            };
            keys.extend(found);
        }
        if keys.is_empty() {
            return Err("--jwt-key: no public key given".to_owned());
        }
        if keys.len() > TOKEN_KEYS_MAX {
            return Err(format!(
                "--jwt-key: {} keys, more than the {TOKEN_KEYS_MAX} a token may be tried against",
                keys.len()
            ));
        }
        Ok(Self {
            keys,
            verified: Some(Verified::new()),
        })
    }

    /// Whether `token` names (by its `kid`) a public key none of these has.
    fn names_an_unknown_key(&self, token: &str) -> bool {
        self.verified.is_some()
            && jsonwebtoken::decode_header(token)
                .ok()
                .and_then(|header| header.kid)
                .is_some_and(|kid| self.keys.iter().all(|key| key.id.as_ref() != Some(&kid)))
    }

    /// The token's claims if it verifies (now): a token that verified before and has not
    /// expired since, or one whose signature checks out against the key its `kid` names
    /// when one of ours has that id, else against each key in turn.
    fn verify(&self, token: &str) -> Option<Claims> {
        self.verify_at(token, jsonwebtoken::get_current_timestamp())
    }

    /// [`verify`](Self::verify) at `now` (seconds since the Unix epoch), for a token
    /// verified before; a signature check always uses the clock.
    fn verify_at(&self, token: &str, now: u64) -> Option<Claims> {
        if let Some(verified) = &self.verified
            && let Some(claims) = verified.get(token)
        {
            // As `jsonwebtoken` checks it: expired once `exp` is more than the leeway ago.
            let leeway = self.keys[0].validation.leeway;
            return (claims.exp.saturating_add(leeway) >= now).then_some(claims);
        }
        let decode = |key: &TokenKey| {
            jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
                .ok()
                .map(|data| data.claims)
        };
        let claims = if let [only] = self.keys.as_slice() {
            decode(only)
        } else {
            let kid = jsonwebtoken::decode_header(token).ok()?.kid;
            match kid.and_then(|kid| self.keys.iter().find(|key| key.id.as_ref() == Some(&kid))) {
                Some(named) => decode(named),
                None => self.keys.iter().find_map(decode),
            }
        }?;
        if let Some(verified) = &self.verified {
            verified.insert(token, &claims);
        }
        Some(claims)
    }
}

/// One public key in PEM, of whichever kind it is.
fn pem(text: &str, rules: &TokenRules) -> Result<TokenKey, String> {
    if text.contains("PRIVATE KEY-----") {
        return Err("holds a private key; give the public key".to_owned());
    }
    if !text.contains("-----BEGIN ") {
        return Err("is neither a PEM public key nor a JWKS (JSON)".to_owned());
    }
    let bytes = text.as_bytes();
    if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
        return Ok(TokenKey::new(None, key, RSA, rules));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        return Ok(TokenKey::new(None, key, EC, rules));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
        return Ok(TokenKey::new(None, key, ED, rules));
    }
    Err("is not an RSA, EC (P-256, P-384) or Ed25519 public key in PEM".to_owned())
}

/// A JWKS, its keys not yet read: a key of a kind this server does not know (another
/// curve, say) is skipped, not a reason to refuse the others.
#[derive(serde::Deserialize)]
struct KeySet {
    keys: Vec<serde_json::Value>,
}

/// The signing keys of a JWKS: those not marked for encryption, with the algorithm each
/// names or else every algorithm of its kind.
fn jwks(contents: &[u8], rules: &TokenRules) -> Result<Vec<TokenKey>, String> {
    let set: KeySet =
        serde_json::from_slice(contents).map_err(|why| format!("is not a JWKS: {why}"))?;
    let mut keys = Vec::new();
    for jwk in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(jwk) else {
            continue;
        };
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let kind = match jwk.algorithm {
            AlgorithmParameters::RSA(_) => RSA,
            AlgorithmParameters::EllipticCurve(_) => EC,
            AlgorithmParameters::OctetKeyPair(_) => ED,
            // A shared secret has no place in a set of public keys.
            AlgorithmParameters::OctetKey(_) => continue,
        };
        let named = match jwk.common.key_algorithm {
            Some(algorithm) => match algorithm.to_string().parse::<Algorithm>() {
                Ok(algorithm) if kind.contains(&algorithm) => Some(algorithm),
                // An encryption algorithm (`RSA-OAEP`...), or one not of the key's kind.
                _ => continue,
            },
            None => None,
        };
        let key = DecodingKey::from_jwk(&jwk).map_err(|why| {
            let id = jwk.common.key_id.as_deref().unwrap_or("without a kid");
            format!("key {id}: {why}")
        })?;
        let algorithms = named.as_ref().map_or(kind, core::slice::from_ref);
        keys.push(TokenKey::new(
            jwk.common.key_id.clone(),
            key,
            algorithms,
            rules,
        ));
    }
    if keys.is_empty() {
        return Err("holds no signing key".to_owned());
    }
    Ok(keys)
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

#[derive(serde::Deserialize, Clone)]
struct Claims {
    sub: String,
    /// Seconds since the Unix epoch (required: a token without one does not verify).
    exp: u64,
}

impl Buyers {
    /// Tokens verified with `keys`.
    pub fn jwt(keys: TokenKeys) -> Self {
        Self::Jwt(Box::new(Tokens {
            keys: parking_lot::RwLock::new(keys),
            unknown_key: tokio::sync::Notify::new(),
        }))
    }

    /// The authenticated buyer (`None` in demo mode: the body says).
    pub fn buyer(&self, headers: &HeaderMap) -> Result<Option<u64>, NotABuyer> {
        match self {
            Self::Demo => Ok(None),
            Self::Header(name) => {
                // A proxy that appends its header to one the client sent would otherwise
                // let the client's, the first, name the buyer.
                let mut values = headers.get_all(name).iter();
                let value = values
                    .next()
                    .ok_or(NotABuyer::Unauthorized("no buyer header"))?;
                if values.next().is_some() {
                    return Err(NotABuyer::Unauthorized("more than one buyer header"));
                }
                let text = value
                    .to_str()
                    .map_err(|_| NotABuyer::Unauthorized("the buyer header is not text"))?;
                canonical_u64(text)
                    .map(Some)
                    .ok_or(NotABuyer::Unauthorized("the buyer header is not a u64"))
            }
            Self::Jwt(tokens) => {
                if headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
                    return Err(NotABuyer::Unauthorized(
                        "more than one Authorization header",
                    ));
                }
                let token = bearer(headers).ok_or(NotABuyer::Unauthorized("no bearer token"))?;
                let keys = tokens.keys.read();
                let Some(claims) = keys.verify(token) else {
                    if keys.names_an_unknown_key(token) {
                        tokens.unknown_key.notify_one();
                    }
                    return Err(NotABuyer::Unauthorized("the token does not verify"));
                };
                drop(keys);
                canonical_u64(&claims.sub)
                    .map(Some)
                    .ok_or(NotABuyer::Unauthorized(
                        "the token's sub is not a u64 buyer id",
                    ))
            }
        }
    }
}

/// The bearer token of the request's `Authorization` header (none where it has more than
/// one: which would speak is not for the server to guess).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
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

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/jwt/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires() {
        let keys = TokenKeys::public(
            &[("rsa".to_owned(), fixture("rsa-public.pem"))],
            &TokenRules::default(),
        )
        .unwrap();
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::RS256),
            &serde_json::json!({"sub": "42", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).unwrap(),
        )
        .unwrap();
        let verified = keys.verified.as_ref().unwrap();
        assert!(verified.get(&token).is_none());
        assert_eq!(
            keys.verify(&token).map(|claims| claims.sub).as_deref(),
            Some("42")
        );
        assert!(verified.get(&token).is_some(), "remembered");
        // From memory now: still good up to the leeway past `exp`, not after.
        let leeway = keys.keys[0].validation.leeway;
        assert!(keys.verify_at(&token, exp + leeway).is_some());
        assert!(keys.verify_at(&token, exp + leeway + 1).is_none());
        // One byte changed anywhere is another token, checked afresh, and refused.
        for at in [token.len() - 2, token.find('.').unwrap() + 3] {
            let mut forged = token.clone().into_bytes();
            forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(forged).unwrap();
            assert!(keys.verify(&forged).is_none(), "changed at {at}");
            assert!(verified.get(&forged).is_none());
        }
        // HS256 secrets are cheap to check and not remembered.
        assert!(
            TokenKeys::secret(b"k", &TokenRules::default())
                .verified
                .is_none()
        );
    }

    #[test]
    fn a_token_naming_a_key_we_lack_is_told_apart() {
        let keys = TokenKeys::public(
            &[("set".to_owned(), fixture("jwks.json"))],
            &TokenRules::default(),
        )
        .unwrap();
        let with_kid = |kid: Option<&str>| {
            let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(
                &header,
                &serde_json::json!({"sub": "1", "exp": 1}),
                &jsonwebtoken::EncodingKey::from_secret(b"k"),
            )
            .unwrap()
        };
        assert!(keys.names_an_unknown_key(&with_kid(Some("rsa-2"))));
        assert!(!keys.names_an_unknown_key(&with_kid(Some("rsa-1"))), "ours");
        assert!(!keys.names_an_unknown_key(&with_kid(None)), "names none");
        assert!(!keys.names_an_unknown_key("not a token"));
        // A shared secret has no key set to fetch again.
        let secret = TokenKeys::secret(b"k", &TokenRules::default());
        assert!(!secret.names_an_unknown_key(&with_kid(Some("rsa-2"))));
    }

    #[test]
    fn a_key_set_offers_public_keys_only() {
        let rules = TokenRules::default();
        let secret = br#"{"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}"#;
        let refused = TokenKeys::public(&[("set".to_owned(), secret.to_vec())], &rules);
        assert_eq!(
            refused.err().as_deref(),
            Some("--jwt-key set: holds no signing key")
        );
        let keys = TokenKeys::public(&[("set".to_owned(), fixture("jwks.json"))], &rules).unwrap();
        let ids: Vec<_> = keys.keys.iter().map(|key| key.id.as_deref()).collect();
        assert_eq!(
            ids,
            [Some("rsa-1"), Some("ed-1")],
            "the encryption key skipped"
        );
    }

    #[test]
    fn a_full_shard_of_verified_tokens_starts_again() {
        let verified = Verified::new();
        let claims = Claims {
            sub: "1".to_owned(),
            exp: u64::MAX,
        };
        let tokens: Vec<String> = (0..VERIFIED_SHARDS * VERIFIED_PER_SHARD * 2)
            .map(|i| format!("token {i}"))
            .collect();
        for token in &tokens {
            verified.insert(token, &claims);
        }
        for shard in verified.shards.iter() {
            let len = shard.lock().len();
            assert!((1..=VERIFIED_PER_SHARD).contains(&len), "{len}");
        }
        assert!(verified.get(tokens.last().unwrap()).is_some());
        let long = "t".repeat(VERIFIED_TOKEN_MAX + 1);
        verified.insert(&long, &claims);
        assert!(verified.get(&long).is_none(), "too long to remember");
    }

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
