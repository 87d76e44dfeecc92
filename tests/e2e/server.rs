//! Starting and stopping a real `vigil serve` for a test.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_vigil");

pub struct TestServer {
    pub child: Option<Child>,
    pub url: String,
    pub addr: String,
    /// Arrow Flight SQL address (host:port).
    pub flight_addr: String,
    /// Postgres wire protocol address (host:port).
    pub pg_addr: String,
    pub data_dir: PathBuf,
    /// The secret helpers send (`--auth-token` or `--auth-password` in `extra`).
    pub token: Option<String>,
    /// The certificate when the server runs TLS (`--tls-cert`): HTTP is https.
    pub tls_cert: Option<PathBuf>,
    extra: Vec<String>,
    /// An HTTP address the test chose (peers must know it before the start).
    fixed_addr: Option<String>,
    /// Extra environment of the server process (e.g. `FAILPOINTS`).
    pub env: Vec<(String, String)>,
}

fn arg_after(extra: &[&str], flag: &str) -> Option<String> {
    extra
        .iter()
        .position(|a| *a == flag)
        .and_then(|i| extra.get(i + 1))
        .map(|s| s.to_string())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestServer {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// Starts vigil with its HTTP API on `addr` (a free port the test picked).
    pub fn start_at(data_dir: &Path, addr: &str, extra: &[&str]) -> Self {
        Self::start_full(data_dir, extra, &[], Some(addr.to_string()))
    }

    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_full(data_dir, extra, env, None)
    }

    fn start_full(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        fixed_addr: Option<String>,
    ) -> Self {
        let mut s = Self {
            child: None,
            url: String::new(),
            addr: String::new(),
            flight_addr: String::new(),
            pg_addr: String::new(),
            data_dir: data_dir.to_path_buf(),
            token: arg_after(extra, "--auth-token").or_else(|| arg_after(extra, "--auth-password")),
            tls_cert: arg_after(extra, "--tls-cert").map(PathBuf::from),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            fixed_addr,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.pick_ports();
        s.spawn();
        s
    }

    /// Free ports are found by binding port 0 and letting go, so another test (or a
    /// Kafka broker) may take one before vigil binds it.
    fn pick_ports(&mut self) {
        self.addr = self
            .fixed_addr
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
        let scheme = if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        self.url = format!("{scheme}://{}", self.addr);
        self.flight_addr = format!("127.0.0.1:{}", free_port());
        self.pg_addr = format!("127.0.0.1:{}", free_port());
    }

    /// Starts vigil and waits until it is healthy; if it exits during startup (a port
    /// taken in the meantime), tries again on new ports, five times at most.
    fn spawn(&mut self) {
        for attempt in 1..=5 {
            match self.try_spawn() {
                Ok(()) => return,
                Err(status) if attempt < 5 => {
                    eprintln!("vigil exited during startup ({status}); retrying on new ports");
                    self.pick_ports();
                }
                Err(status) => panic!("vigil exited during startup: {status}"),
            }
        }
    }

    fn try_spawn(&mut self) -> Result<(), std::process::ExitStatus> {
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--http-addr")
            .arg(&self.addr)
            .arg("--flight-addr")
            .arg(&self.flight_addr)
            .arg("--pg-addr")
            .arg(&self.pg_addr)
            .args(&self.extra)
            // Most tests write at fixed, long-past times: they keep data forever
            // unless they ask for a retention (a flag or this variable).
            .env("VIGIL_RETENTION_RAW", "forever")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "VIGIL_LOG",
                std::env::var("VIGIL_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("start vigil");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = self.client();
        let mut last;
        loop {
            match client.get(format!("{}/health", self.url)).send() {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("{}", r.status()),
                Err(e) => last = format!("{e:?}"),
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(status);
            }
            assert!(
                Instant::now() < deadline,
                "vigil did not become healthy: {last}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the graceful shutdown to finish.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            let status = c.wait().unwrap();
            assert!(status.success(), "vigil exited with {status} after SIGTERM");
        }
    }

    /// The value of an unlabelled metric on `/metrics` (panics if it is not there).
    pub fn metric(&self, name: &str) -> f64 {
        let body = self
            .request(reqwest::Method::GET, "/metrics")
            .send()
            .unwrap()
            .text()
            .unwrap();
        body.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// An HTTP client that trusts the server's certificate (when it has one).
    pub fn client(&self) -> reqwest::blocking::Client {
        let mut b = reqwest::blocking::Client::builder();
        if self.tls_cert.is_some() {
            // The tests' certificate is self-signed with CA:TRUE (openssl's
            // default), which webpki refuses as a server certificate while OpenSSL
            // (psql, curl) accepts it: the Postgres and Flight checks verify it.
            b = b.danger_accept_invalid_certs(true);
        }
        b.build().unwrap()
    }

    /// A request with the server's token (if it has one).
    pub fn request(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
    ) -> reqwest::blocking::RequestBuilder {
        let r = self
            .client()
            .request(method, format!("{}{}", self.url, path_and_query));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub fn write(
        &self,
        path_and_query: &str,
        body: impl Into<reqwest::blocking::Body>,
    ) -> reqwest::blocking::Response {
        self.request(reqwest::Method::POST, path_and_query)
            .body(body)
            .send()
            .unwrap()
    }

    pub fn write_lp(&self, body: &str) {
        let r = self.write("/api/v3/write_lp?db=test", body.to_string());
        assert_eq!(r.status(), 204, "{}", r.text().unwrap());
    }

    /// Runs SQL over HTTP and returns the rows as JSON objects.
    pub fn sql(&self, q: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let r = self
            .request(reqwest::Method::POST, "/api/v1/sql")
            .json(&serde_json::json!({"sql": q, "format": "json"}))
            .send()
            .unwrap();
        let status = r.status();
        let text = r.text().unwrap();
        assert!(status.is_success(), "query {q} failed: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_object().unwrap().clone())
            .collect()
    }

    /// Runs the `vigil` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.args(args).env("VIGIL_URL", &self.url);
        if let Some(t) = &self.token {
            c.env("VIGIL_TOKEN", t);
        }
        if let Some(cert) = &self.tls_cert {
            c.env("SSL_CERT_FILE", cert);
        }
        c.output().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A helper process (a broker, a mail server, an exporter) killed when the
/// test ends, passed or not.
pub struct Helper(pub Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 100 ms until it holds; fails the test after `timeout`.
pub fn wait_for(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
