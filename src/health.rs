//! Health checks from `fly.toml`, run against one instance: every HTTP and TCP check
//! must pass. [`Checks`] travel to the host's agent, which runs them there: tightly
//! while an instance starts (fast first, backing off towards a few a second, so a
//! failing deploy never floods the app's log), then at each check's `interval` for as
//! long as it runs. Requests carry a recognisable `User-Agent`. Never blocks a thread;
//! all waiting goes through `tokio::time`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

use crate::config::{CheckKind, Config};

/// The `User-Agent` of ferry's health checks (apps can leave them out of their logs).
pub const USER_AGENT: &str = concat!("ferry-health-check/", env!("CARGO_PKG_VERSION"));

/// The first pause between two rounds of checks while an instance starts.
pub const FIRST_POLL: Duration = Duration::from_millis(5);
/// The longest pause between two rounds while an instance starts: at most a few
/// requests a second reach an app that answers but is not healthy.
pub const SLOWEST_POLL: Duration = Duration::from_millis(400);

/// Why a round of checks did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    pub message: String,
    /// Something accepted the connection: the app is up and answered (or hung). A
    /// refused connection reaches no app, so it costs the app nothing to try again soon.
    pub reached: bool,
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The pause after a round of checks that did not pass, while an instance starts:
/// [`FIRST_POLL`] while nothing listens yet (booting apps are noticed within a few
/// milliseconds of listening), doubling towards [`SLOWEST_POLL`] while the app
/// answers but fails, so a failing app's log gets a few lines a second.
pub fn next_pause(pause: Duration, miss: &Miss) -> Duration {
    if miss.reached {
        (pause * 2).clamp(FIRST_POLL, SLOWEST_POLL)
    } else {
        FIRST_POLL
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Probe {
    Http {
        name: String,
        /// Uppercase: `GET`, `HEAD`, ...
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        tls: bool,
        timeout: Duration,
        interval: Duration,
        grace_period: Duration,
        /// The `internal_port` of the service it checks when that is not the first
        /// one's: probed on the port the instance got for it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service_port: Option<u16>,
    },
    Tcp {
        name: String,
        timeout: Duration,
        interval: Duration,
        grace_period: Duration,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service_port: Option<u16>,
    },
}

impl Probe {
    pub fn interval(&self) -> Duration {
        match self {
            Probe::Http { interval, .. } | Probe::Tcp { interval, .. } => *interval,
        }
    }

    pub fn grace_period(&self) -> Duration {
        match self {
            Probe::Http { grace_period, .. } | Probe::Tcp { grace_period, .. } => *grace_period,
        }
    }

    pub fn service_port(&self) -> Option<u16> {
        match self {
            Probe::Http { service_port, .. } | Probe::Tcp { service_port, .. } => *service_port,
        }
    }

    /// The request line an HTTP check sends (`GET /health`), to tell its lines in an
    /// app's log from the app's own.
    pub fn request_line(&self) -> Option<String> {
        match self {
            Probe::Http { method, path, .. } => Some(format!("{method} {path}")),
            Probe::Tcp { .. } => None,
        }
    }
}

/// The checks an instance must pass, resolved once per deploy.
// The unsafe clippy sees is `tokio::select!`'s in `wait_healthy`, no invariant of these
// fields.
#[allow(clippy::unsafe_derive_deserialize)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checks {
    probes: Vec<Probe>,
    #[serde(skip, default = "client")]
    client: reqwest::Client,
}

impl PartialEq for Checks {
    fn eq(&self, other: &Self) -> bool {
        self.probes == other.probes
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .pool_max_idle_per_host(0)
        .user_agent(USER_AGENT)
        .build()
        .unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "failure", rename_all = "snake_case")]
pub enum Failure {
    /// The process exited before it became healthy (how, when known).
    Exited { how: Option<String> },
    /// Not healthy within the deadline; the last check error.
    TimedOut { after: Duration, last_error: String },
    /// Healthy, then it exited within `min_healthy_time` (how, when known).
    DiedAfterHealthy { after: Duration, how: Option<String> },
    /// The host could not be asked whether the process is alive.
    Lost { message: String },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = |how: &Option<String>| how.as_ref().map(|h| format!(" ({h})")).unwrap_or_default();
        match self {
            Failure::Exited { how: h } => write!(f, "the process exited before it became healthy{}", how(h)),
            Failure::TimedOut { after, last_error } => {
                write!(f, "not healthy after {}: {last_error}", humantime::format_duration(*after))
            }
            Failure::DiedAfterHealthy { after, how: h } => write!(
                f,
                "the process exited {} after it became healthy{}, within min_healthy_time",
                humantime::format_duration(*after),
                how(h)
            ),
            Failure::Lost { message } => write!(f, "lost contact with the host: {message}"),
        }
    }
}

/// The `internal_port`s of `group`'s TCP services after the first service: each of its
/// instances gets a port of its own for each (`FERRY_PORT_<internal_port>`).
pub fn extra_ports(config: &Config, group: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = config
        .services
        .iter()
        .filter(|s| s.protocol == "tcp" && Some(s.internal_port) != config.internal_port)
        .filter(|s| config.applies(&s.processes, group))
        .map(|s| s.internal_port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

impl Checks {
    /// Checks from the config; without any, a TCP connect to the instance port. A
    /// check on a fixed port other than the service's is skipped with a warning,
    /// since ferry gives every instance its own `$PORT`.
    pub fn from_config(config: &Config, warnings: &mut Vec<String>) -> Self {
        Self::of_group(config, &config.default_group(), true, warnings)
    }

    /// The checks of process group `group`. Without any, a TCP connect to the
    /// instance port when something should listen there (a service routes to the
    /// group, or it is the default group); otherwise none: a running process is
    /// healthy, as on Fly for a machine with no checks (a worker).
    pub fn of_group(config: &Config, group: &str, listens: bool, warnings: &mut Vec<String>) -> Self {
        let mut probes = Vec::new();
        let extra = extra_ports(config, group);
        for check in config.checks.iter().filter(|c| config.applies(&c.processes, group)) {
            // A check of another service's port is made on the instance's port for it.
            let service_port = check.port.filter(|p| extra.contains(p));
            if let (Some(port), Some(internal), None) = (check.port, config.internal_port, service_port) {
                if port != internal {
                    let warning = format!(
                        "check `{}` targets port {port}, not the service's internal_port {internal}; ferry checks each instance on its own $PORT, so this check is skipped",
                        check.name
                    );
                    if !warnings.contains(&warning) {
                        warnings.push(warning);
                    }
                    continue;
                }
            }
            let timeout = check.timeout.max(Duration::from_millis(100));
            let (interval, grace_period) = (check.interval.max(Duration::from_secs(1)), check.grace_period);
            probes.push(match &check.kind {
                CheckKind::Http { method, path, headers, tls } => Probe::Http {
                    name: check.name.clone(),
                    method: if method.is_empty() { "GET".into() } else { method.to_uppercase() },
                    path: if path.starts_with('/') { path.clone() } else { format!("/{path}") },
                    headers: headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    tls: *tls,
                    timeout,
                    interval,
                    grace_period,
                    service_port,
                },
                CheckKind::Tcp => {
                    Probe::Tcp { name: check.name.clone(), timeout, interval, grace_period, service_port }
                }
            });
        }
        // A default group no service routes to is probed only as it always was: when the
        // app has no service at all.
        if probes.is_empty() && (listens || (group == config.default_group() && config.services.is_empty())) {
            probes.push(Probe::Tcp {
                name: "tcp".into(),
                timeout: Duration::from_secs(2),
                interval: Duration::from_secs(15),
                grace_period: Duration::ZERO,
                service_port: None,
            });
        }
        Self { probes, client: client() }
    }

    pub fn probes(&self) -> &[Probe] {
        &self.probes
    }

    /// The shortest `interval` of the checks: how often a running instance is checked.
    pub fn interval(&self) -> Duration {
        self.probes.iter().map(Probe::interval).min().unwrap_or(Duration::from_secs(15))
    }

    /// The longest `grace_period`: while it lasts after a start, failing checks mean
    /// "starting", not "failing".
    pub fn grace_period(&self) -> Duration {
        self.probes.iter().map(Probe::grace_period).max().unwrap_or_default()
    }

    /// The request lines of the HTTP checks (`GET /health`).
    pub fn request_lines(&self) -> Vec<String> {
        self.probes.iter().filter_map(Probe::request_line).collect()
    }

    /// Runs every check once against `addr`.
    pub async fn check(&self, addr: SocketAddr) -> Result<(), Miss> {
        self.check_ports(addr, &BTreeMap::new()).await
    }

    /// Runs every check once against `addr`, or, for a check of another service, the
    /// instance's port for that service (`ports`: internal port -> the instance's).
    pub async fn check_ports(&self, addr: SocketAddr, ports: &BTreeMap<u16, u16>) -> Result<(), Miss> {
        for probe in &self.probes {
            let addr = match probe.service_port() {
                None => addr,
                Some(internal) => match ports.get(&internal) {
                    Some(port) => SocketAddr::new(addr.ip(), *port),
                    None => {
                        return Err(Miss {
                            message: format!("no port of this instance serves internal_port {internal}"),
                            reached: false,
                        })
                    }
                },
            };
            self.run_probe(probe, addr).await?;
        }
        Ok(())
    }

    async fn run_probe(&self, probe: &Probe, addr: SocketAddr) -> Result<(), Miss> {
        let missed = |message: String, reached: bool| Err(Miss { message, reached });
        match probe {
            Probe::Tcp { name, timeout: limit, .. } => match timeout(*limit, TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => missed(format!("check `{name}`: connect to {addr}: {e}"), false),
                Err(_) => missed(format!("check `{name}`: connect to {addr} timed out"), false),
            },
            Probe::Http { name, method, path, headers, tls, timeout: limit, .. } => {
                let scheme = if *tls { "https" } else { "http" };
                let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
                let mut request =
                    self.client.request(method.clone(), format!("{scheme}://{addr}{path}")).timeout(*limit);
                for (key, value) in headers {
                    request = request.header(key, value);
                }
                match request.send().await {
                    Ok(response) if response.status().is_success() => Ok(()),
                    Ok(response) => {
                        missed(format!("check `{name}`: {method} {path} answered {}", response.status()), true)
                    }
                    Err(e) => missed(format!("check `{name}`: {method} {path}: {}", root_cause(&e)), !e.is_connect()),
                }
            }
        }
    }

    /// Waits until every check passes, the process exits (`exited` resolves with how
    /// it ended), or `deadline` passes, pacing the rounds by [`next_pause`]. Returns
    /// how long it took.
    pub async fn wait_healthy<F>(&self, addr: SocketAddr, deadline: Duration, exited: F) -> Result<Duration, Failure>
    where
        F: Future<Output = Option<String>>,
    {
        let started = Instant::now();
        let mut last_error = String::from("no check has run yet");
        let poll = async {
            let mut pause = FIRST_POLL;
            loop {
                match self.check(addr).await {
                    Ok(()) => return started.elapsed(),
                    Err(miss) => {
                        pause = next_pause(pause, &miss);
                        last_error = miss.message;
                    }
                }
                sleep(pause).await;
            }
        };
        tokio::select! {
            elapsed = poll => Ok(elapsed),
            how = exited => Err(Failure::Exited { how }),
            () = sleep(deadline) => Err(Failure::TimedOut { after: deadline, last_error: last_error.clone() }),
        }
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
            probes: vec![Probe::Tcp {
                name: "tcp".into(),
                timeout: Duration::from_millis(500),
                interval: Duration::from_secs(1),
                grace_period: Duration::ZERO,
                service_port: None,
            }],
            client: client(),
        }
    }

    fn http(path: &str) -> Checks {
        Checks {
            probes: vec![Probe::Http {
                name: "web".into(),
                method: "GET".into(),
                path: path.into(),
                headers: vec![],
                tls: false,
                timeout: Duration::from_millis(500),
                interval: Duration::from_secs(1),
                grace_period: Duration::ZERO,
                service_port: None,
            }],
            client: client(),
        }
    }

    /// Answers every request with `status`, and sends each request's head to `heads`.
    async fn serve(status: &'static str) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn http_check_passes_on_200_and_says_who_it_is() {
        let (addr, mut heads) = serve("200 OK").await;
        assert!(http("/health").check(addr).await.is_ok());
        let head = heads.recv().await.unwrap().to_lowercase();
        assert!(head.contains(&format!("user-agent: {}", USER_AGENT.to_lowercase())), "{head}");
    }

    #[tokio::test]
    async fn http_check_fails_on_503() {
        let (addr, _heads) = serve("503 Service Unavailable").await;
        let err = http("/health").check(addr).await.unwrap_err();
        assert!(err.message.contains("503"), "{err}");
    }

    #[tokio::test]
    async fn wait_fails_fast_when_the_process_exits() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9)); // nothing listens on discard
        let result = tcp_only().wait_healthy(addr, Duration::from_mins(1), async { Some("exit 3".into()) }).await;
        assert_eq!(result, Err(Failure::Exited { how: Some("exit 3".into()) }));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_times_out_with_the_last_error() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let result = tcp_only().wait_healthy(addr, Duration::from_secs(3), std::future::pending()).await;
        let Err(Failure::TimedOut { after, last_error }) = result else { panic!("{result:?}") };
        assert_eq!(after, Duration::from_secs(3));
        assert!(last_error.contains("connect to 127.0.0.1:9"), "{last_error}");
    }

    #[tokio::test]
    async fn wait_returns_once_healthy() {
        let (addr, _heads) = serve("200 OK").await;
        let result = http("/").wait_healthy(addr, Duration::from_secs(5), std::future::pending()).await;
        assert!(result.is_ok());
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_at_once_an_answer_backs_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = listener.local_addr().unwrap();
        drop(listener);
        let miss = http("/health").check(closed).await.unwrap_err();
        assert!(!miss.reached, "{miss}");
        assert_eq!(next_pause(Duration::from_millis(320), &miss), FIRST_POLL);
        let (addr, _heads) = serve("503 Service Unavailable").await;
        let miss = http("/health").check(addr).await.unwrap_err();
        assert!(miss.reached && miss.message.contains("503"), "{miss}");
        assert_eq!(next_pause(Duration::from_millis(320), &miss), SLOWEST_POLL);
        assert_eq!(next_pause(FIRST_POLL, &miss), FIRST_POLL * 2);
    }

    #[tokio::test]
    async fn a_failing_start_gets_a_few_checks_a_second_not_hundreds() {
        let (addr, mut heads) = serve("503 Service Unavailable").await;
        let result = http("/health").wait_healthy(addr, Duration::from_secs(3), std::future::pending()).await;
        assert!(matches!(result, Err(Failure::TimedOut { .. })));
        let mut count = 0;
        while heads.try_recv().is_ok() {
            count += 1;
        }
        // 5, 10, 20, ... 320 ms, then every 400 ms: about a dozen in 3 s.
        assert!((5..=20).contains(&count), "{count} checks in 3 s");
    }
}
