//! The HTTP side of the front door: HTTP/1.1 and HTTP/2 from clients on one listener
//! (hyper-util's auto builder), HTTP/1.1 with pooled keep-alive connections to the
//! instances. A request that could not even connect is retried on another instance
//! when it is idempotent and has no body; an upgrade (WebSocket) becomes a tunnel
//! counted against its instance until it closes or a drain cuts it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};

use super::{claim_for, Claim, InFlight, Pool};

type Body = BoxBody<Bytes, hyper::Error>;

/// Hop-by-hop headers (RFC 9110, 7.6.1): they describe one connection, not the request.
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// Every HTTP connection the agent serves, to close them gracefully when it leaves
/// (hyper-util's `GracefulShutdown`: an idle keep-alive connection closes at once, a
/// busy one once its response is sent, HTTP/2 ones get GOAWAY).
#[derive(Clone, Default)]
pub struct Graceful {
    state: Arc<std::sync::Mutex<Closing>>,
}

#[derive(Default)]
enum Closing {
    #[default]
    No,
    Serving(GracefulShutdown),
    /// Asked: the connections' ends, awaited.
    Asked(Option<tokio::task::JoinHandle<()>>),
}

impl Graceful {
    fn lock(&self) -> std::sync::MutexGuard<'_, Closing> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What a new connection is watched with; `None` once the agent leaves.
    fn watcher(&self) -> Option<Watcher> {
        let mut state = self.lock();
        match &mut *state {
            Closing::No => {
                let shutdown = GracefulShutdown::new();
                let watcher = shutdown.watcher();
                *state = Closing::Serving(shutdown);
                Some(watcher)
            }
            Closing::Serving(shutdown) => Some(shutdown.watcher()),
            Closing::Asked(_) => None,
        }
    }

    /// Asks every connection to close.
    pub fn begin(&self) {
        let mut state = self.lock();
        let ended = match std::mem::replace(&mut *state, Closing::Asked(None)) {
            Closing::Serving(shutdown) => Some(tokio::spawn(shutdown.shutdown())),
            _ => None,
        };
        *state = Closing::Asked(ended);
    }

    /// Resolves once every connection asked to close has.
    pub async fn end(&self) {
        let ended = match &mut *self.lock() {
            Closing::Asked(ended) => ended.take(),
            _ => None,
        };
        if let Some(ended) = ended {
            let _ = ended.await;
        }
    }
}

/// A request carrying this header goes to the instances being previewed (a new
/// release before its switch), when there are any.
const PREVIEW: &str = "ferry-preview";

/// Serves the connections of one listener.
#[derive(Clone)]
pub struct Server {
    client: Client<HttpConnector, Body>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Graceful,
}

impl Server {
    pub fn new(graceful: Graceful) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            // Below the 5 s most servers keep an idle connection (Node's default): a
            // pooled connection is given up before the instance closes it.
            .pool_idle_timeout(Duration::from_secs(4))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self { client, builder: Arc::new(auto::Builder::new(TokioExecutor::new())), graceful }
    }

    /// Serves one accepted connection on a task of its own (its TLS handshake first,
    /// on a TLS door).
    pub fn connection(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        claims: Arc<Vec<Claim>>,
        shape: &super::Shape,
    ) {
        let server = self.clone();
        // Taken here, as it is accepted: a connection the agent accepted before it
        // began to leave is closed gracefully with the others.
        let watcher = self.graceful.watcher();
        let acceptor = shape.acceptor.as_ref().map(super::tls::Acceptor::get);
        let door = Door {
            local,
            scheme: if acceptor.is_some() { "https" } else { "http" },
            redirect_https: shape.redirect_https,
        };
        tokio::spawn(async move {
            match acceptor {
                // A TLS door without a configuration yet (cannot happen once opened).
                Some(None) => {}
                Some(Some(acceptor)) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(super::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    server.serve_io(TokioIo::new(stream), peer, door, claims, watcher).await;
                }
                None => server.serve_io(TokioIo::new(stream), peer, door, claims, watcher).await,
            }
        });
    }

    async fn serve_io<I>(self, io: I, peer: SocketAddr, door: Door, claims: Arc<Vec<Claim>>, watcher: Option<Watcher>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let this = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let (server, claims) = (this.clone(), Arc::clone(&claims));
            async move { Ok::<_, Infallible>(server.handle(req, peer, door, &claims).await) }
        });
        let connection = self.builder.serve_connection_with_upgrades(io, service);
        match watcher {
            Some(watcher) => {
                let _ = watcher.watch(connection).await;
            }
            // Accepted as the agent left: served until the process exits.
            None => {
                let _ = connection.await;
            }
        }
    }

    async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        door: Door,
        claims: &[Claim],
    ) -> Response<Body> {
        let local = door.local;
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(ToString::to_string));
        let Some(claim) = claim_for(claims, host.as_deref()) else {
            return text(StatusCode::MISDIRECTED_REQUEST, "ferry: no app here answers for this host name\n");
        };
        if let Some(port) = door.redirect_https {
            return redirect(&req, host.as_deref(), port);
        }
        let site = &claim.site;
        let upgrading = req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE);
        let preview = req.headers().contains_key(PREVIEW);
        // The preview header still reaches the app: how an operator looks at it
        // during the maintenance.
        if let (Some(message), false) = (site.maintenance_message(), preview) {
            return maintenance_page(&message);
        }
        // A canary takes its share of clients, each kept on its side by a cookie.
        let (pool, new_bucket) = match (preview, site.canary_weight()) {
            (true, _) => (Pool::Preview, None),
            (false, None) => (Pool::Table, None),
            (false, Some((weight, left))) => {
                let (bucket, fresh) = bucket_of(req.headers()).map_or_else(|| (new_bucket(), true), |b| (b, false));
                (if bucket < weight { Pool::Canary } else { Pool::Table }, fresh.then_some((bucket, left)))
            }
        };
        let client_side = upgrading.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers.clone();
        let hop = Hop { peer, local, scheme: door.scheme, region: &claim.region, version: parts.version, upgrading };
        forwarded(&mut headers, host.as_deref(), &hop);
        // A refused connection sent nothing: a request without a body can go to another
        // instance whatever its method; one with a body could, if idempotent, but its
        // body is gone.
        let bodiless = hyper::body::Body::is_end_stream(&body);
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let mut body = Some(body.boxed());
        let mut tried = Vec::new();
        loop {
            let Some(backend) = site.pick_held(&tried, pool, &claim.groups).await else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ferry: no instance of this app is ready to answer (starting, or failing its checks)\n",
                );
            };
            tried.push(backend.id.clone());
            let Some(addr) = backend.addr(claim.target) else { continue };
            let flight = backend.begin();
            let mut out = Request::new(body.take().unwrap_or_else(empty));
            *out.method_mut() = parts.method.clone();
            *out.headers_mut() = headers.clone();
            *out.version_mut() = Version::HTTP_11;
            match format!("http://{addr}{path}").parse() {
                Ok(uri) => *out.uri_mut() = uri,
                Err(_) => return text(StatusCode::BAD_REQUEST, "ferry: the request's path cannot be forwarded\n"),
            }
            match self.client.request(out).await {
                Ok(mut response) => {
                    backend.answered(response.status().is_server_error());
                    if let Some((bucket, left)) = new_bucket {
                        // Kept at least as long as the canary lasts.
                        let age = left.as_secs().max(3600);
                        if let Ok(cookie) = HeaderValue::from_str(&format!(
                            "{CANARY_COOKIE}={bucket}; Path=/; Max-Age={age}; HttpOnly; SameSite=Lax"
                        )) {
                            response.headers_mut().append(header::SET_COOKIE, cookie);
                        }
                    }
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                        if let Some(client_side) = client_side {
                            let instance_side = hyper::upgrade::on(&mut response);
                            let cut = backend.cut.subscribe();
                            tokio::spawn(tunnel(client_side, instance_side, flight, cut));
                            return response.map(|_| empty());
                        }
                    }
                    strip_hop_by_hop(response.headers_mut());
                    response.headers_mut().append(header::VIA, HeaderValue::from_static("1.1 ferry"));
                    return response.map(|inner| Tracked { inner, _flight: flight }.boxed());
                }
                Err(e) if e.is_connect() => {
                    backend.answered(true);
                    backend.refused();
                    if !bodiless {
                        return text(StatusCode::BAD_GATEWAY, "ferry: the instance refused the connection\n");
                    }
                }
                Err(_) => {
                    backend.answered(true);
                    return text(
                        StatusCode::BAD_GATEWAY,
                        "ferry: the instance closed the connection without an answer\n",
                    );
                }
            }
        }
    }
}

/// The cookie that keeps a client on one side of a canary: a bucket from 0 to 99,
/// below the canary's weight for its clients.
const CANARY_COOKIE: &str = "ferry_canary";

/// The client's bucket, from its cookie.
fn bucket_of(headers: &HeaderMap) -> Option<u8> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(CANARY_COOKIE)?.strip_prefix('='))
        .find_map(|n| n.trim().parse::<u8>().ok().filter(|n| *n < 100))
}

/// A bucket for a client without one.
fn new_bucket() -> u8 {
    u8::try_from(unique() % 100).unwrap_or(0)
}

/// A number no earlier call gave and no one can guess: a counter hashed with a seed
/// drawn once per process.
fn unique() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    let mut hasher = SEED.get_or_init(std::collections::hash_map::RandomState::new).build_hasher();
    hasher.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// The listener a connection came in on.
#[derive(Clone, Copy)]
struct Door {
    local: SocketAddr,
    scheme: &'static str,
    redirect_https: Option<u16>,
}

/// The hop a request makes through the front door.
struct Hop<'a> {
    peer: SocketAddr,
    local: SocketAddr,
    scheme: &'static str,
    region: &'a str,
    version: Version,
    upgrading: bool,
}

/// `force_https`: the same URL on HTTPS (301 for GET and HEAD; 308 otherwise, so
/// the method and body are kept).
fn redirect<B>(req: &Request<B>, host: Option<&str>, port: u16) -> Response<Body> {
    let Some(host) = host else {
        return text(StatusCode::BAD_REQUEST, "ferry: HTTPS is required and the request names no host\n");
    };
    let name = host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map_or(host, |(h, _)| h);
    let authority = if port == 443 { name.to_string() } else { format!("{name}:{port}") };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let status = if matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut response = text(status, "ferry: this app is served over HTTPS\n");
    if let Ok(location) = HeaderValue::from_str(&format!("https://{authority}{path}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The headers an instance sees: hop-by-hop ones dropped (kept for an upgrade), and
/// the standard forwarding headers plus Fly's.
fn forwarded(headers: &mut HeaderMap, host: Option<&str>, hop: &Hop<'_>) {
    let Hop { peer, local, scheme, region, version, upgrading } = *hop;
    if !upgrading {
        strip_hop_by_hop(headers);
    }
    // HTTP/2 sends each cookie as a field of its own; an HTTP/1.1 instance expects one
    // `Cookie` line (RFC 9113, 8.2.3).
    if version == Version::HTTP_2 && headers.get_all(header::COOKIE).iter().nth(1).is_some() {
        let joined: Vec<&[u8]> = headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
        if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            headers.insert(header::COOKIE, value);
        }
    }
    let ip = peer.ip().to_canonical().to_string();
    let chain = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) => format!("{before}, {ip}"),
        None => ip.clone(),
    };
    let new_id = !headers.contains_key("fly-request-id");
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("x-forwarded-for", &chain);
    set("x-forwarded-proto", scheme);
    set("x-forwarded-port", &local.port().to_string());
    set("fly-client-ip", &ip);
    set("fly-forwarded-port", &local.port().to_string());
    if !region.is_empty() {
        set("fly-region", region);
    }
    if let Some(host) = host {
        set("x-forwarded-host", host);
        set("host", host);
    }
    if new_id {
        set("fly-request-id", &request_id(region));
    }
    let via = if version == Version::HTTP_2 { "2 ferry" } else { "1.1 ferry" };
    headers.append(header::VIA, HeaderValue::from_static(via));
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()))
        .filter(|n| !n.is_empty())
        .collect();
    for name in HOP_BY_HOP.iter().copied().chain(named.iter().map(String::as_str)) {
        headers.remove(name);
    }
}

/// A request id unique enough to follow one request through logs: 16 hex digits and
/// the region, as Fly writes them.
fn request_id(region: &str) -> String {
    let id = format!("{:016x}", unique());
    if region.is_empty() {
        id
    } else {
        format!("{id}-{region}")
    }
}

/// Relays an upgraded connection until either side closes it or a drain cuts it.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    instance: hyper::upgrade::OnUpgrade,
    flight: InFlight,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    let (Ok(client), Ok(instance)) = tokio::join!(client, instance) else { return };
    let (mut client, mut instance) = (TokioIo::new(client), TokioIo::new(instance));
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut instance) => {}
        _ = cut.wait_for(|cut| *cut) => {}
    }
    drop(flight);
}

/// The answer to every request while the app is in maintenance: 503, `Retry-After`,
/// and a small page with the operator's message.
fn maintenance_page(message: &str) -> Response<Body> {
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;");
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Down for maintenance</title></head>\n\
         <body style=\"font-family: sans-serif; max-width: 40em; margin: 4em auto\"><h1>Down for maintenance</h1>\n\
         <p>{escaped}</p></body></html>\n"
    );
    let mut response = Response::new(Full::new(Bytes::from(page)).map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response =
        Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// An instance's response body, counted in flight until it is sent or dropped.
struct Tracked {
    inner: Incoming,
    _flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_headers_extend_the_chain_and_drop_hop_by_hop_ones() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        headers.insert("connection", HeaderValue::from_static("keep-alive, x-secret-hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        let peer: SocketAddr = "127.0.0.9:5000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let hop = Hop { peer, local, scheme: "http", region: "syd", version: Version::HTTP_11, upgrading: false };
        forwarded(&mut headers, Some("example.com"), &hop);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(headers["x-forwarded-host"], "example.com");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["fly-region"], "syd");
        assert_eq!(headers["via"], "1.1 ferry");
        assert!(headers["fly-request-id"].to_str().unwrap().ends_with("-syd"));
        assert!(!headers.contains_key("connection") && !headers.contains_key("x-secret-hop"));
        assert!(!headers.contains_key("keep-alive"));
    }

    #[test]
    fn an_upgrade_keeps_its_connection_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("upgrade"));
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let hop =
            Hop { peer: addr, local: addr, scheme: "http", region: "", version: Version::HTTP_11, upgrading: true };
        forwarded(&mut headers, None, &hop);
        assert_eq!(headers["upgrade"], "websocket");
        assert!(!headers.contains_key("fly-region"));
    }
}
