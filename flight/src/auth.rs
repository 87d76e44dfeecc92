//! Who may use the Flight SQL service: a bearer token, a user and password (sent as
//! HTTP basic auth on each call, or exchanged for a session token in the Flight
//! handshake, as the JDBC driver does), or anyone when neither is configured.

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine;
use parking_lot::Mutex;
use tonic::metadata::MetadataMap;
use tonic::Status;

#[derive(Debug, Clone, Default)]
pub struct FlightAuth {
    /// Clients send `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Clients send basic auth, per call or in the handshake.
    pub basic: Option<(String, String)>,
    /// Tokens handed out by the handshake, valid until the server restarts.
    sessions: Arc<Mutex<HashSet<String>>>,
}

impl FlightAuth {
    pub fn new(token: Option<String>, basic: Option<(String, String)>) -> Self {
        Self {
            token,
            basic,
            sessions: Arc::default(),
        }
    }

    fn enabled(&self) -> bool {
        self.token.is_some() || self.basic.is_some()
    }

    /// Checks the `authorization` header of a call.
    pub(crate) fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        if !self.enabled() {
            return Ok(());
        }
        match credentials(metadata)? {
            Credentials::Bearer(t) => {
                if self.token.as_deref() == Some(t.as_str()) || self.sessions.lock().contains(&t) {
                    Ok(())
                } else {
                    Err(Status::unauthenticated("invalid bearer token"))
                }
            }
            Credentials::Basic(user, password) => self.check_basic(&user, &password),
            Credentials::Missing => Err(Status::unauthenticated(
                "authentication required: send 'authorization: Bearer <token>' or basic auth",
            )),
        }
    }

    fn check_basic(&self, user: &str, password: &str) -> Result<(), Status> {
        match &self.basic {
            Some((u, p)) if u == user && p == password => Ok(()),
            _ => Err(Status::unauthenticated(format!(
                "invalid user name or password for user '{user}'"
            ))),
        }
    }

    /// The handshake: basic credentials in, a bearer token out (the configured token
    /// when there is one, a new session token otherwise).
    pub(crate) fn handshake(&self, metadata: &MetadataMap) -> Result<String, Status> {
        if !self.enabled() {
            return Ok(String::new());
        }
        match credentials(metadata)? {
            Credentials::Basic(user, password) => {
                self.check_basic(&user, &password)?;
                if let Some(t) = &self.token {
                    return Ok(t.clone());
                }
                let token = format!("{:032x}", rand::random::<u128>());
                self.sessions.lock().insert(token.clone());
                Ok(token)
            }
            Credentials::Bearer(_) => {
                self.check(metadata)?;
                Ok(String::new())
            }
            Credentials::Missing => Err(Status::unauthenticated(
                "handshake needs basic auth (user name and password)",
            )),
        }
    }
}

enum Credentials {
    Bearer(String),
    Basic(String, String),
    Missing,
}

fn credentials(metadata: &MetadataMap) -> Result<Credentials, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(Credentials::Missing);
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization header is not ASCII"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Credentials::Bearer(rest.trim().to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .map_err(|_| Status::unauthenticated("basic auth is not valid base64"))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| Status::unauthenticated("basic auth is not UTF-8"))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| Status::unauthenticated("basic auth must be 'user:password'"))?;
        return Ok(Credentials::Basic(user.to_string(), password.to_string()));
    }
    Err(Status::unauthenticated(format!(
        "unsupported authorization scheme '{scheme}' (use Bearer or Basic)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn open_when_nothing_is_configured() {
        let a = FlightAuth::default();
        assert!(a.check(&MetadataMap::new()).is_ok());
    }

    #[test]
    fn token_and_basic_and_handshake_sessions() {
        let a = FlightAuth::new(None, Some(("ann".into(), "pw".into())));
        assert_eq!(
            a.check(&MetadataMap::new()).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(a.check(&basic("ann", "pw")).is_ok());
        let e = a.check(&basic("ann", "nope")).unwrap_err();
        assert!(e.message().contains("invalid user name or password"), "{e}");
        let token = a.handshake(&basic("ann", "pw")).unwrap();
        assert_eq!(token.len(), 32);
        assert!(a.check(&header(&format!("Bearer {token}"))).is_ok());
        assert!(a.check(&header("Bearer other")).is_err());
        assert!(a.handshake(&basic("bob", "pw")).is_err());

        let t = FlightAuth::new(Some("s3cret".into()), None);
        assert!(t.check(&header("Bearer s3cret")).is_ok());
        assert!(t.check(&header("bearer s3cret")).is_ok());
        assert!(t.check(&header("Bearer wrong")).is_err());
        assert!(t.check(&header("Digest x")).is_err());
    }
}
