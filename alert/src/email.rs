//! E-mail notifications over SMTP (lettre): STARTTLS required unless the
//! receiver says otherwise, TLS from the start on port 465, AUTH when a user
//! is given. The idempotency key is the Message-ID, so a mail client shows a
//! message sent twice (after a crash mid-send) once.

use std::time::Duration;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use vigil_rules::EmailConfig;

use crate::notify::Attempt;
use crate::store::Notification;

fn message(
    e: &EmailConfig,
    n: &Notification,
    subject: &str,
    text: &str,
) -> Result<Message, String> {
    let mailbox = |a: &str| {
        a.trim()
            .parse::<Mailbox>()
            .map_err(|err| format!("e-mail address {a:?}: {err}"))
    };
    let mut b = Message::builder()
        .from(mailbox(&e.from)?)
        .subject(
            e.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("subject"))
                .map_or(subject, |(_, v)| v.as_str()),
        )
        .message_id(Some(format!("<{}@vigil>", n.idempotency_key)))
        .header(ContentType::TEXT_PLAIN);
    for to in e.to.split(',').filter(|a| !a.trim().is_empty()) {
        b = b.to(mailbox(to)?);
    }
    for (k, v) in e.headers.iter().filter(|(k, _)| {
        !["subject", "from", "to", "message-id", "content-type"]
            .contains(&k.to_ascii_lowercase().as_str())
    }) {
        let name =
            HeaderName::new_from_ascii(k.clone()).map_err(|err| format!("header {k:?}: {err}"))?;
        b = b.raw_header(HeaderValue::new(name, v.replace(['\r', '\n'], " ")));
    }
    b.body(text.to_string())
        .map_err(|err| format!("building the e-mail: {err}"))
}

fn transport(e: &EmailConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let (host, port) = e
        .smarthost
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("smarthost {:?} is not host:port", e.smarthost))?;
    let mut tls = TlsParameters::builder(host.to_string())
        .dangerous_accept_invalid_certs(e.insecure_skip_verify);
    if let Some(ca) = &e.ca_file {
        let pem = std::fs::read(ca).map_err(|err| format!("tls ca_file {ca}: {err}"))?;
        let cert = Certificate::from_pem(&pem).map_err(|err| format!("tls ca_file {ca}: {err}"))?;
        tls = tls.add_root_certificate(cert);
    }
    let tls = tls
        .build_rustls()
        .map_err(|err| format!("TLS for {host}: {err}"))?;
    // A password never crosses the network in clear: with credentials and a
    // host other than this machine, STARTTLS is required whatever
    // `require_tls` says (as Alertmanager's client does).
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let tls = if port == 465 {
        Tls::Wrapper(tls)
    } else if e.require_tls || (e.auth_username.is_some() && !loopback) {
        Tls::Required(tls)
    } else {
        Tls::Opportunistic(tls)
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(10)));
    if let Some(h) = &e.hello {
        b = b.hello_name(ClientId::Domain(h.clone()));
    }
    if let Some(u) = &e.auth_username {
        b = b.credentials(Credentials::new(
            u.clone(),
            e.auth_password.clone().unwrap_or_default(),
        ));
    }
    Ok(b.build())
}

/// Sends one notification as an e-mail. A permanent SMTP refusal (5xx) is
/// not retried; anything else is.
pub(crate) async fn send(e: &EmailConfig, n: &Notification, subject: &str, text: &str) -> Attempt {
    let message = match message(e, n, subject, text) {
        Ok(m) => m,
        // The addresses or headers cannot work: retrying changes nothing.
        Err(err) => return Attempt::Refused(err),
    };
    // A CA file being replaced, a TLS setup failing: worth another try.
    let transport = match transport(e) {
        Ok(t) => t,
        Err(err) => return Attempt::Failed(err),
    };
    match transport.send(message).await {
        Ok(_) => Attempt::Delivered,
        Err(err) if err.is_permanent() => {
            Attempt::Refused(format!("smtp://{}: {err}", e.smarthost))
        }
        Err(err) => Attempt::Failed(format!("smtp://{}: {err}", e.smarthost)),
    }
}
