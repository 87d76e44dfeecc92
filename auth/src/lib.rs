//! Who may do what: tokens with permissions, shared by every listener.
//!
//! A token has a name (the user name for basic auth and Postgres), a secret, a set
//! of permissions (`write`, `query`, `admin`) and optionally the table name
//! prefixes it is limited to. Secrets are kept only as PBKDF2-SHA256 salted hashes,
//! the form SCRAM-SHA-256 (Postgres' password exchange) needs as well, so one
//! configured hash serves HTTP bearer tokens, basic auth, Flight SQL and pgwire.
//! Comparisons are constant-time; a verified secret is remembered (by its SHA-256)
//! so that the PBKDF2 cost is paid once per secret, not once per request.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use parking_lot::Mutex;
use subtle::ConstantTimeEq;
use vigil_model::TableAccess;

/// PBKDF2 iterations of hashes vigil makes (Postgres' SCRAM default).
pub const ITERATIONS: u32 = 4096;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Write points (HTTP writes, remote write).
    Write,
    /// Run SQL (HTTP, Flight SQL, pgwire).
    Query,
    /// Everything, including administration.
    Admin,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Permission::Write => "write",
            Permission::Query => "query",
            Permission::Admin => "admin",
        })
    }
}

/// An authenticated client: the token it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub permissions: Vec<Permission>,
    pub tables: TableAccess,
}

impl Principal {
    /// Anyone, with every permission: what a server without tokens treats each
    /// client as (it listens on loopback only).
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            permissions: vec![Permission::Admin],
            tables: TableAccess::all(),
        }
    }

    pub fn can(&self, p: Permission) -> bool {
        self.permissions.contains(&p) || self.permissions.contains(&Permission::Admin)
    }

    /// An error naming what is missing, if `p` is.
    pub fn require(&self, p: Permission) -> Result<(), AuthError> {
        if self.can(p) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                name: self.name.clone(),
                permission: p,
            })
        }
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send 'Authorization: Bearer <token>' (or 'Token <token>', basic auth, or u/p parameters)")]
    Missing,
    #[error("invalid credentials")]
    Invalid,
    #[error("malformed Authorization header: {0}")]
    Malformed(String),
    #[error("token '{name}' lacks the '{permission}' permission")]
    Forbidden {
        name: String,
        permission: Permission,
    },
}

/// A secret as stored: PBKDF2-SHA256 of the secret with a salt.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
}

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// A configured hash that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid secret hash (expected pbkdf2-sha256$<iterations>$<salt base64>$<hash base64>, as `vigil auth hash` prints): {0}")]
pub struct HashFormatError(String);

impl SecretHash {
    /// Hashes a secret with a new random salt.
    pub fn new(secret: &str) -> Self {
        let salt: [u8; 16] = rand::random();
        Self::with_salt(secret, &salt, ITERATIONS)
    }

    pub fn with_salt(secret: &str, salt: &[u8], iterations: u32) -> Self {
        Self {
            iterations,
            salt: salt.to_vec(),
            hash: salted_password(secret, salt, iterations),
        }
    }

    pub fn verify(&self, secret: &str) -> bool {
        let candidate = salted_password(secret, &self.salt, self.iterations);
        bool::from(candidate.ct_eq(&self.hash))
    }

    /// `pbkdf2-sha256$4096$<salt>$<hash>`.
    pub fn encode(&self) -> String {
        format!(
            "pbkdf2-sha256${}${}${}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(&self.hash)
        )
    }

    pub fn parse(s: &str) -> Result<Self, HashFormatError> {
        let parts: Vec<&str> = s.trim().split('$').collect();
        let [scheme, iterations, salt, hash] = parts[..] else {
            return Err(HashFormatError("expected four '$'-separated parts".into()));
        };
        if scheme != "pbkdf2-sha256" {
            return Err(HashFormatError(format!("unknown scheme '{scheme}'")));
        }
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|i| *i >= 1)
            .ok_or_else(|| HashFormatError(format!("bad iteration count '{iterations}'")))?;
        let salt = STANDARD
            .decode(salt)
            .map_err(|e| HashFormatError(format!("salt: {e}")))?;
        let hash = STANDARD
            .decode(hash)
            .map_err(|e| HashFormatError(format!("hash: {e}")))?;
        if hash.len() != 32 {
            return Err(HashFormatError(format!(
                "hash is {} bytes, expected 32",
                hash.len()
            )));
        }
        Ok(Self {
            iterations,
            salt,
            hash,
        })
    }
}

/// SCRAM's SaltedPassword: PBKDF2-HMAC-SHA256 of the SASLprep'd secret (as Postgres
/// and pgwire compute it, so hashes work for SCRAM logins too).
pub fn salted_password(secret: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let normalized = stringprep::saslprep(secret)
        .map(|c| c.into_owned())
        .unwrap_or_else(|_| secret.to_string());
    let mut out = vec![0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iterations.max(1)).expect("max(1) > 0"),
        salt,
        normalized.as_bytes(),
        &mut out,
    );
    out
}

/// One configured token.
#[derive(Debug, Clone)]
pub struct Token {
    pub principal: Arc<Principal>,
    pub secret: SecretHash,
}

/// Credentials as a client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A bare secret: `Bearer`, InfluxDB's `Token`, or v1's `p` without `u`.
    Secret(String),
    /// A user (token name) and password (its secret): basic auth, v1 `u`/`p`.
    User(String, String),
}

impl Credentials {
    /// Reads an `Authorization` header value.
    pub fn from_authorization(value: &str) -> Result<Self, AuthError> {
        let (scheme, rest) = value
            .trim()
            .split_once(' ')
            .ok_or_else(|| AuthError::Malformed("expected '<scheme> <credentials>'".into()))?;
        let rest = rest.trim();
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" | "token" => Ok(Credentials::Secret(rest.to_string())),
            "basic" => {
                let decoded = STANDARD
                    .decode(rest)
                    .map_err(|_| AuthError::Malformed("basic credentials are not base64".into()))?;
                let text = String::from_utf8(decoded)
                    .map_err(|_| AuthError::Malformed("basic credentials are not UTF-8".into()))?;
                let (user, password) = text
                    .split_once(':')
                    .ok_or_else(|| AuthError::Malformed("basic credentials lack ':'".into()))?;
                Ok(Credentials::User(user.to_string(), password.to_string()))
            }
            other => Err(AuthError::Malformed(format!("unknown scheme '{other}'"))),
        }
    }
}

/// Secrets verified recently, by SHA-256, so PBKDF2 runs once per secret.
const VERIFIED_CACHE: usize = 1024;

/// The configured tokens. Empty means authentication is off.
#[derive(Debug, Default)]
pub struct TokenStore {
    tokens: Vec<Token>,
    verified: Mutex<HashMap<[u8; 32], usize>>,
    /// Flight SQL handshake sessions: token -> (principal, expiry).
    sessions: Mutex<SessionTokens>,
}

#[derive(Debug, Default)]
struct SessionTokens {
    by_token: HashMap<String, (Arc<Principal>, Instant)>,
    order: std::collections::VecDeque<String>,
}

/// Handshake session tokens kept at most (oldest dropped first) and how long one
/// is valid.
pub const MAX_SESSIONS: usize = 10_000;
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

impl TokenStore {
    pub fn new(tokens: Vec<Token>) -> Self {
        Self {
            tokens,
            ..Default::default()
        }
    }

    /// Whether any token is configured (authentication is required).
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// The token named `name` (a user name), for SCRAM logins.
    pub fn by_name(&self, name: &str) -> Option<&Token> {
        self.tokens.iter().find(|t| t.principal.name == name)
    }

    /// Who the credentials belong to. Without tokens configured everyone is
    /// [`Principal::anonymous`].
    pub fn authenticate(
        &self,
        credentials: Option<&Credentials>,
    ) -> Result<Arc<Principal>, AuthError> {
        if !self.enabled() {
            return Ok(Arc::new(Principal::anonymous()));
        }
        match credentials {
            None => Err(AuthError::Missing),
            Some(Credentials::Secret(secret)) => {
                if let Some(p) = self.session(secret) {
                    return Ok(p);
                }
                self.check_secret(None, secret)
            }
            Some(Credentials::User(user, password)) => self.check_secret(Some(user), password),
        }
    }

    fn check_secret(&self, user: Option<&str>, secret: &str) -> Result<Arc<Principal>, AuthError> {
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        let cached = self.verified.lock().get(&digest).copied();
        let index = match cached {
            Some(i) => Some(i),
            None => {
                // Every token is tried (no early exit), so timing says nothing about
                // which one matched.
                let mut found = None;
                for (i, t) in self.tokens.iter().enumerate() {
                    if t.secret.verify(secret) && found.is_none() {
                        found = Some(i);
                    }
                }
                if let Some(i) = found {
                    let mut v = self.verified.lock();
                    if v.len() >= VERIFIED_CACHE {
                        v.clear();
                    }
                    v.insert(digest, i);
                }
                found
            }
        };
        let token = index.map(|i| &self.tokens[i]).ok_or(AuthError::Invalid)?;
        if let Some(user) = user {
            if !bool::from(user.as_bytes().ct_eq(token.principal.name.as_bytes())) {
                return Err(AuthError::Invalid);
            }
        }
        Ok(Arc::clone(&token.principal))
    }

    /// A new handshake session token for `principal` (Flight SQL's JDBC driver logs in
    /// once with basic auth and then sends the token it got back).
    pub fn new_session(&self, principal: Arc<Principal>) -> String {
        let token = format!("vs_{:032x}", rand::random::<u128>());
        let mut s = self.sessions.lock();
        let now = Instant::now();
        while s.order.len() >= MAX_SESSIONS {
            if let Some(old) = s.order.pop_front() {
                s.by_token.remove(&old);
            }
        }
        s.by_token
            .insert(token.clone(), (principal, now + SESSION_TTL));
        s.order.push_back(token.clone());
        token
    }

    fn session(&self, token: &str) -> Option<Arc<Principal>> {
        if !token.starts_with("vs_") {
            return None;
        }
        let mut s = self.sessions.lock();
        match s.by_token.get(token) {
            Some((p, expiry)) if *expiry > Instant::now() => Some(Arc::clone(p)),
            Some(_) => {
                s.by_token.remove(token);
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> TokenStore {
        TokenStore::new(vec![
            Token {
                principal: Arc::new(Principal {
                    name: "writer".into(),
                    permissions: vec![Permission::Write],
                    tables: TableAccess::prefixes(vec!["team_".into()]),
                }),
                secret: SecretHash::new("w-secret"),
            },
            Token {
                principal: Arc::new(Principal {
                    name: "root".into(),
                    permissions: vec![Permission::Admin],
                    tables: TableAccess::all(),
                }),
                secret: SecretHash::new("r-secret"),
            },
        ])
    }

    #[test]
    fn secrets_users_and_permissions() {
        let s = store();
        let w = s
            .authenticate(Some(&Credentials::Secret("w-secret".into())))
            .unwrap();
        assert_eq!(w.name, "writer");
        assert!(w.can(Permission::Write) && !w.can(Permission::Query));
        assert!(w.tables.allows("team_cpu") && !w.tables.allows("cpu"));
        let e = w.require(Permission::Query).unwrap_err().to_string();
        assert!(e.contains("lacks the 'query' permission"), "{e}");
        // Cached path gives the same answer.
        assert_eq!(
            s.authenticate(Some(&Credentials::Secret("w-secret".into())))
                .unwrap()
                .name,
            "writer"
        );
        let root = s
            .authenticate(Some(&Credentials::User("root".into(), "r-secret".into())))
            .unwrap();
        assert!(root.can(Permission::Query));
        assert_eq!(
            s.authenticate(Some(&Credentials::User("writer".into(), "r-secret".into()))),
            Err(AuthError::Invalid),
            "right secret, wrong user"
        );
        assert_eq!(
            s.authenticate(Some(&Credentials::Secret("nope".into()))),
            Err(AuthError::Invalid)
        );
        assert_eq!(s.authenticate(None), Err(AuthError::Missing));
        assert!(TokenStore::default()
            .authenticate(None)
            .unwrap()
            .can(Permission::Admin));
    }

    #[test]
    fn authorization_headers() {
        assert_eq!(
            Credentials::from_authorization("Bearer abc").unwrap(),
            Credentials::Secret("abc".into())
        );
        assert_eq!(
            Credentials::from_authorization("Token abc").unwrap(),
            Credentials::Secret("abc".into())
        );
        let basic = format!("Basic {}", STANDARD.encode("u:p:q"));
        assert_eq!(
            Credentials::from_authorization(&basic).unwrap(),
            Credentials::User("u".into(), "p:q".into())
        );
        assert!(Credentials::from_authorization("Digest x").is_err());
        assert!(Credentials::from_authorization("Basic !!!").is_err());
    }

    #[test]
    fn hash_round_trip_and_sessions() {
        let h = SecretHash::new("s3cret");
        let parsed = SecretHash::parse(&h.encode()).unwrap();
        assert_eq!(parsed, h);
        assert!(parsed.verify("s3cret") && !parsed.verify("s3cre"));
        assert!(SecretHash::parse("md5$x").is_err());
        let s = store();
        let root = s
            .authenticate(Some(&Credentials::Secret("r-secret".into())))
            .unwrap();
        let t = s.new_session(root);
        assert_eq!(
            s.authenticate(Some(&Credentials::Secret(t))).unwrap().name,
            "root"
        );
        assert!(s
            .authenticate(Some(&Credentials::Secret("vs_forged".into())))
            .is_err());
    }
}
