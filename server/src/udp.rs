//! UDP push: line protocol datagrams (one or more lines each), as agents and
//! InfluxDB's UDP listener send them. Datagrams are gathered while more are
//! waiting (up to 1 MiB) and written through the one write pipeline as one
//! body, so a flood costs one WAL commit per batch, not one per datagram.
//! UDP has no way to push back: a datagram that finds the queue full, or a
//! batch the pipeline refuses, is dropped and counted.
//!
//! With a shared key (`[udp] hmac_key`), each datagram starts with the hex
//! HMAC-SHA256 of the rest and a newline (`<64 hex>\n<lines>`); a datagram
//! that does not verify is rejected, so only agents holding the key can push.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use ring::hmac;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use vigil_ingest::{Precision, WriteFormat, WritePipeline};
use vigil_model::TableAccess;
use vigil_storage::retention::now_nanos;

/// Datagrams waiting for the writer at most (about 64 MiB of 64 KiB ones).
const QUEUE: usize = 1024;
/// A batch is written once it holds this much.
const BATCH_BYTES: usize = 1 << 20;

#[derive(Clone, Default)]
pub(crate) struct UdpMetrics {
    pub received: Counter,
    pub dropped: Counter,
    pub rejected: Counter,
    pub lines_rejected: Counter,
}

impl UdpMetrics {
    pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "vigil_udp_datagrams_received",
            "UDP datagrams received",
            self.received.clone(),
        );
        registry.register(
            "vigil_udp_datagrams_dropped",
            "UDP datagrams dropped: the queue was full or the write pipeline refused their batch",
            self.dropped.clone(),
        );
        registry.register(
            "vigil_udp_datagrams_rejected",
            "UDP datagrams rejected: no valid HMAC signature",
            self.rejected.clone(),
        );
        registry.register(
            "vigil_udp_lines_rejected",
            "Line protocol lines in UDP datagrams that could not be stored",
            self.lines_rejected.clone(),
        );
    }
}

/// The payload of a signed datagram (`<64 hex>\n<payload>`) if its signature
/// verifies.
pub(crate) fn verified<'a>(key: &hmac::Key, datagram: &'a [u8]) -> Option<&'a [u8]> {
    if datagram.len() < 65 || datagram[64] != b'\n' {
        return None;
    }
    let mut tag = [0u8; 32];
    if !datagram[..64].iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    for (i, pair) in datagram[..64].chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        tag[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    let payload = &datagram[65..];
    hmac::verify(key, payload, &tag).ok()?;
    Some(payload)
}

/// The running listener; stopped at shutdown.
pub(crate) struct UdpListener {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl UdpListener {
    pub(crate) async fn start(
        addr: SocketAddr,
        key: Option<String>,
        precision: Precision,
        pipeline: Arc<WritePipeline>,
        metrics: UdpMetrics,
    ) -> std::io::Result<UdpListener> {
        let socket = UdpSocket::bind(addr).await?;
        let local_addr = socket.local_addr()?;
        let key = key.map(|k| hmac::Key::new(hmac::HMAC_SHA256, k.as_bytes()));
        info!(udp = %local_addr, signed = key.is_some(), "receiving line protocol over UDP");
        let (stop, stop_rx) = watch::channel(false);
        let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
        let receive = tokio::spawn(receive(socket, key, tx, metrics.clone(), stop_rx.clone()));
        let write = tokio::spawn(write(rx, precision, pipeline, metrics));
        Ok(UdpListener {
            stop,
            tasks: vec![receive, write],
        })
    }

    /// Stops receiving; what was received is written first.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn receive(
    socket: UdpSocket,
    key: Option<hmac::Key>,
    tx: mpsc::Sender<Bytes>,
    metrics: UdpMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let got = tokio::select! {
            _ = stop.changed() => return,
            got = socket.recv_from(&mut buf) => got,
        };
        let (n, peer) = match got {
            Ok(x) => x,
            Err(e) => {
                // An ICMP error from an earlier send, or a transient one.
                debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        metrics.received.inc();
        let datagram = &buf[..n];
        let payload = match &key {
            None => datagram,
            Some(k) => match verified(k, datagram) {
                Some(p) => p,
                None => {
                    metrics.rejected.inc();
                    debug!(%peer, "UDP datagram without a valid signature rejected");
                    continue;
                }
            },
        };
        // Datagrams are joined into one body: one that is not UTF-8, or that
        // ends inside a quoted string or after a backslash (and would swallow
        // the next), is refused on its own rather than spoiling the batch.
        if std::str::from_utf8(payload).is_err() || !closed(payload) {
            metrics.rejected.inc();
            debug!(%peer, "UDP datagram is not whole line protocol text; rejected");
            continue;
        }
        if tx.try_send(Bytes::copy_from_slice(payload)).is_err() {
            metrics.dropped.inc();
        }
    }
}

/// Whether every quote opened in `text` is closed and it does not end with
/// an escaping backslash.
fn closed(text: &[u8]) -> bool {
    let mut quoted = false;
    let mut escaped = false;
    for &b in text {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => quoted = !quoted,
            _ => {}
        }
    }
    !quoted && !escaped
}

async fn write(
    mut rx: mpsc::Receiver<Bytes>,
    precision: Precision,
    pipeline: Arc<WritePipeline>,
    metrics: UdpMetrics,
) {
    while let Some(first) = rx.recv().await {
        let mut body = BytesMut::with_capacity(first.len() + 1);
        let mut datagrams = 0u64;
        let mut add = |d: Bytes, body: &mut BytesMut| {
            body.put_slice(&d);
            body.put_u8(b'\n');
            datagrams += 1;
        };
        add(first, &mut body);
        // Under the pipeline's body limit whatever it is set to.
        let cap = BATCH_BYTES.min(pipeline.limits().max_body_bytes / 2);
        while body.len() < cap {
            match rx.try_recv() {
                Ok(d) => add(d, &mut body),
                Err(_) => break,
            }
        }
        let result = pipeline
            .write(
                body.freeze(),
                false,
                WriteFormat::LineProtocol(precision),
                now_nanos(),
                TableAccess::all(),
            )
            .await;
        match result {
            Ok(report) => {
                metrics.lines_rejected.inc_by(report.rejected as u64);
            }
            Err(e) => {
                metrics.dropped.inc_by(datagrams);
                warn!(error = %e, datagrams, "UDP datagrams not written");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &str, payload: &[u8]) -> Vec<u8> {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()), payload);
        let mut out: Vec<u8> = tag
            .as_ref()
            .iter()
            .flat_map(|b| format!("{b:02x}").into_bytes())
            .collect();
        out.push(b'\n');
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn only_datagrams_signed_with_the_key_verify() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"s3cret");
        let good = sign("s3cret", b"cpu v=1 1");
        assert_eq!(verified(&key, &good), Some(&b"cpu v=1 1"[..]));
        assert_eq!(verified(&key, &sign("other", b"cpu v=1 1")), None);
        let mut tampered = good.clone();
        *tampered.last_mut().unwrap() = b'2';
        assert_eq!(verified(&key, &tampered), None);
        assert!(closed(b"cpu s=\"a\\\"b\" 1") && !closed(b"cpu s=\"a") && !closed(b"cpu v=1\\"));
        let mut plus = good.clone();
        plus[0] = b'+';
        assert_eq!(verified(&key, &plus), None);
        for hostile in [&b""[..], b"cpu v=1 1", &[b'z'; 65], &good[..64]] {
            assert_eq!(verified(&key, hostile), None);
        }
        // Multi-byte text where the hex should be: no panic, no verify.
        let mut odd = "é".repeat(32).into_bytes();
        odd.push(b'\n');
        odd.extend_from_slice(b"cpu v=1");
        assert_eq!(verified(&key, &odd), None);
    }
}
