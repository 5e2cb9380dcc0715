//! Health checks from `fly.toml`, run against one instance: every HTTP and TCP check
//! must pass. Polls tightly (the check's `interval` paces Fly's monitoring, not how
//! fast a deploy notices health) and fails fast when the instance's process exits.
//! Never blocks a thread; all waiting goes through `tokio::time`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

use crate::config::{CheckKind, Config};

/// Pause between two rounds of checks while an instance is not yet healthy.
pub const POLL_EVERY: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
enum Probe {
    Http {
        name: String,
        method: reqwest::Method,
        path: String,
        headers: Vec<(String, String)>,
        tls: bool,
        timeout: Duration,
    },
    Tcp {
        name: String,
        timeout: Duration,
    },
}

/// The checks an instance must pass, resolved once per deploy.
#[derive(Debug, Clone)]
pub struct Checks {
    probes: Vec<Probe>,
    client: reqwest::Client,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The process exited before it became healthy.
    Exited,
    /// Not healthy within the deadline; the last check error.
    TimedOut { after: Duration, last_error: String },
    /// The host could not be asked whether the process is alive.
    Lost(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Exited => write!(f, "the process exited before it became healthy"),
            Failure::TimedOut { after, last_error } => {
                write!(f, "not healthy after {}: {last_error}", humantime::format_duration(*after))
            }
            Failure::Lost(message) => write!(f, "lost contact with the host: {message}"),
        }
    }
}

impl Checks {
    /// Checks from the config; without any, a TCP connect to the instance port. A
    /// check on a fixed port other than the service's is skipped with a warning,
    /// since ferry gives every instance its own `$PORT`.
    pub fn from_config(config: &Config, warnings: &mut Vec<String>) -> Self {
        let mut probes = Vec::new();
        for check in &config.checks {
            if let (Some(port), Some(internal)) = (check.port, config.internal_port) {
                if port != internal {
                    warnings.push(format!(
                        "check `{}` targets port {port}, not the service's internal_port {internal}; ferry checks each instance on its own $PORT, so this check is skipped",
                        check.name
                    ));
                    continue;
                }
            }
            let timeout = check.timeout.max(Duration::from_millis(100));
            probes.push(match &check.kind {
                CheckKind::Http { method, path, headers, tls } => Probe::Http {
                    name: check.name.clone(),
                    method: reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET),
                    path: if path.starts_with('/') { path.clone() } else { format!("/{path}") },
                    headers: headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    tls: *tls,
                    timeout,
                },
                CheckKind::Tcp => Probe::Tcp { name: check.name.clone(), timeout },
            });
        }
        if probes.is_empty() {
            probes.push(Probe::Tcp { name: "tcp".into(), timeout: Duration::from_secs(2) });
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .danger_accept_invalid_certs(true)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default();
        Self { probes, client }
    }

    /// Runs every check once against `addr`, an SSH forward when `forwarded`.
    pub async fn check(&self, addr: SocketAddr, forwarded: bool) -> Result<(), String> {
        for probe in &self.probes {
            self.run_probe(probe, addr, forwarded).await?;
        }
        Ok(())
    }

    async fn run_probe(&self, probe: &Probe, addr: SocketAddr, forwarded: bool) -> Result<(), String> {
        match probe {
            Probe::Tcp { name, timeout: limit } => match timeout(*limit, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) if forwarded => {
                    forwarded_stays_open(stream).await.map_err(|e| format!("check `{name}`: {e}"))
                }
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("check `{name}`: connect to {addr}: {e}")),
                Err(_) => Err(format!("check `{name}`: connect to {addr} timed out")),
            },
            Probe::Http { name, method, path, headers, tls, timeout: limit } => {
                let scheme = if *tls { "https" } else { "http" };
                let mut request =
                    self.client.request(method.clone(), format!("{scheme}://{addr}{path}")).timeout(*limit);
                for (key, value) in headers {
                    request = request.header(key, value);
                }
                match request.send().await {
                    Ok(response) if response.status().is_success() => Ok(()),
                    Ok(response) => Err(format!("check `{name}`: {method} {path} answered {}", response.status())),
                    Err(e) => Err(format!("check `{name}`: {method} {path}: {}", root_cause(&e))),
                }
            }
        }
    }

    /// Waits until every check passes, the process exits (`exited` resolves to
    /// `Ok(true)`), or `deadline` passes. Returns how long it took.
    pub async fn wait_healthy<F>(
        &self,
        addr: SocketAddr,
        forwarded: bool,
        deadline: Duration,
        exited: F,
    ) -> Result<Duration, Failure>
    where
        F: Future<Output = Result<bool, String>>,
    {
        let started = Instant::now();
        let mut last_error = String::from("no check has run yet");
        let poll = async {
            loop {
                match self.check(addr, forwarded).await {
                    Ok(()) => return started.elapsed(),
                    Err(e) => last_error = e,
                }
                sleep(POLL_EVERY).await;
            }
        };
        let exit = async {
            match exited.await {
                Ok(true) => Failure::Exited,
                Ok(false) => std::future::pending().await,
                Err(message) => Failure::Lost(message),
            }
        };
        tokio::select! {
            elapsed = poll => Ok(elapsed),
            failure = exit => Err(failure),
            () = sleep(deadline) => Err(Failure::TimedOut { after: deadline, last_error: last_error.clone() }),
        }
    }
}

/// How long a TCP check through an SSH forward watches the connection.
const FORWARD_SETTLE: Duration = Duration::from_millis(100);

/// The local end of an SSH forward accepts every connection and closes it at once
/// when nothing listens on the host; a server keeps it open (silent, or with a banner).
async fn forwarded_stays_open(mut stream: TcpStream) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    match timeout(FORWARD_SETTLE, stream.read(&mut byte)).await {
        Ok(Ok(0)) => Err("nothing accepted the connection on the host (closed through the forward)".into()),
        Ok(Err(e)) => Err(format!("connection through the forward failed: {e}")),
        Ok(Ok(_)) | Err(_) => Ok(()),
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn tcp_only() -> Checks {
        Checks {
            probes: vec![Probe::Tcp { name: "tcp".into(), timeout: Duration::from_millis(500) }],
            client: reqwest::Client::new(),
        }
    }

    fn http(path: &str) -> Checks {
        Checks {
            probes: vec![Probe::Http {
                name: "web".into(),
                method: reqwest::Method::GET,
                path: path.into(),
                headers: vec![],
                tls: false,
                timeout: Duration::from_millis(500),
            }],
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    async fn serve(status: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_check_passes_on_200() {
        let addr = serve("200 OK").await;
        assert!(http("/health").check(addr, false).await.is_ok());
    }

    #[tokio::test]
    async fn http_check_fails_on_503() {
        let addr = serve("503 Service Unavailable").await;
        let err = http("/health").check(addr, false).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
    }

    #[tokio::test]
    async fn tcp_through_a_forward_needs_the_connection_to_stay_open() {
        // What an SSH forward does when nothing listens on the host: accept, then close.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        assert!(tcp_only().check(addr, true).await.is_err());
        assert!(tcp_only().check(addr, false).await.is_ok(), "directly, a connect is enough");
        let silent = serve_silently().await;
        assert!(tcp_only().check(silent, true).await.is_ok());
    }

    async fn serve_silently() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        addr
    }

    #[tokio::test]
    async fn wait_fails_fast_when_the_process_exits() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9)); // nothing listens on discard
        let result = tcp_only().wait_healthy(addr, false, Duration::from_mins(1), async { Ok(true) }).await;
        assert_eq!(result, Err(Failure::Exited));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_times_out_with_the_last_error() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let result = tcp_only().wait_healthy(addr, false, Duration::from_secs(3), std::future::pending()).await;
        assert!(matches!(result, Err(Failure::TimedOut { .. })), "{result:?}");
    }

    #[tokio::test]
    async fn wait_returns_once_healthy() {
        let addr = serve("200 OK").await;
        let result = http("/").wait_healthy(addr, false, Duration::from_secs(5), std::future::pending()).await;
        assert!(result.is_ok());
    }
}
