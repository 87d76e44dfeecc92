//! Who may use the Flight SQL service: the server's tokens ([`TokenStore`]), sent as
//! `authorization: Bearer <secret>` or basic auth (token name and secret) on each
//! call, or exchanged in the Flight handshake for a session token (as the JDBC
//! driver does); anyone when no token is configured (loopback only).

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::Status;
use vigil_auth::{AuthError, Credentials, Permission, Principal, TokenStore};

#[derive(Debug, Clone, Default)]
pub struct FlightAuth {
    tokens: Arc<TokenStore>,
}

impl FlightAuth {
    pub fn new(tokens: Arc<TokenStore>) -> Self {
        Self { tokens }
    }

    /// Checks the `authorization` header of a call: who it is, and that they may
    /// query.
    pub(crate) fn check(&self, metadata: &MetadataMap) -> Result<Arc<Principal>, Status> {
        let principal = self
            .tokens
            .authenticate(credentials(metadata)?.as_ref())
            .map_err(status)?;
        principal.require(Permission::Query).map_err(status)?;
        Ok(principal)
    }

    /// The handshake: credentials in, a session token out (valid for
    /// `vigil_auth::SESSION_TTL`, at most `MAX_SESSIONS` kept).
    pub(crate) fn handshake(&self, metadata: &MetadataMap) -> Result<String, Status> {
        if !self.tokens.enabled() {
            return Ok(String::new());
        }
        let principal = self.check(metadata)?;
        Ok(self.tokens.new_session(principal))
    }
}

fn status(e: AuthError) -> Status {
    match e {
        AuthError::Forbidden { .. } => Status::permission_denied(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    }
}

fn credentials(metadata: &MetadataMap) -> Result<Option<Credentials>, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization header is not ASCII"))?;
    Credentials::from_authorization(value)
        .map(Some)
        .map_err(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use vigil_auth::{SecretHash, Token};
    use vigil_model::TableAccess;

    fn header(v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", v.parse().unwrap());
        m
    }

    fn basic(u: &str, p: &str) -> MetadataMap {
        header(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        ))
    }

    fn token(name: &str, secret: &str, permissions: Vec<Permission>) -> Token {
        Token {
            principal: Arc::new(Principal {
                name: name.into(),
                permissions,
                tables: TableAccess::all(),
            }),
            secret: SecretHash::new(secret),
        }
    }

    #[test]
    fn open_when_nothing_is_configured() {
        let a = FlightAuth::default();
        assert!(a.check(&MetadataMap::new()).is_ok());
    }

    #[test]
    fn tokens_basic_handshake_and_permissions() {
        let a = FlightAuth::new(Arc::new(TokenStore::new(vec![
            token("ann", "pw", vec![Permission::Query]),
            token("w", "wpw", vec![Permission::Write]),
        ])));
        assert_eq!(
            a.check(&MetadataMap::new()).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(a.check(&basic("ann", "pw")).is_ok());
        assert!(a.check(&header("Bearer pw")).is_ok());
        assert!(a.check(&basic("ann", "nope")).is_err());
        assert_eq!(
            a.check(&header("Bearer wpw")).unwrap_err().code(),
            tonic::Code::PermissionDenied,
            "a write-only token may not query"
        );
        let session = a.handshake(&basic("ann", "pw")).unwrap();
        assert!(a.check(&header(&format!("Bearer {session}"))).is_ok());
        assert!(a.check(&header("Bearer vs_0000")).is_err());
        assert!(a.handshake(&basic("bob", "pw")).is_err());
        assert!(a.check(&header("Digest x")).is_err());
    }
}
