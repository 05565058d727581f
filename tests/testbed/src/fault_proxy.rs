//! A fault-injecting HTTP proxy in front of a real registry, for the copy engine's fault tests:
//! answer the next requests with chosen statuses (429 with `Retry-After`, bursts of 503), cut a
//! blob download after N bytes, flip a byte in a blob, hold blob downloads back a while (a slow
//! source, so a copy outlives a short-lived token), and count the requests that pass (with
//! when and by which User-Agent, so a test can tell which client wrote what, when).
//! Everything else is forwarded unchanged, streaming both ways.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Response, StatusCode};
use futures::StreamExt;

use crate::referrers::OCI_INDEX;

/// The faults to inject; each test sets what it needs.
#[derive(Debug, Default)]
struct Faults {
    /// The next requests get these answers instead of the registry's: (status, Retry-After).
    statuses: VecDeque<(u16, Option<u64>)>,
    /// Only requests whose path contains this are faulted (all when `None`).
    only_paths: Option<String>,
    /// Only requests with this method are faulted (all when `None`).
    only_method: Option<String>,
    /// GET of these blobs is cut after this many bytes, once each.
    cut_blobs: HashMap<String, usize>,
    /// GET of these blobs has one byte flipped, every time.
    flip_blobs: HashSet<String>,
    /// Until then, every request (matching the path filter) gets this status: an outage.
    outage: Option<(std::time::Instant, u16)>,
    /// Every blob download waits this long before it is forwarded.
    blob_delay: Option<std::time::Duration>,
    /// Every request waits this long before it is forwarded: a registry far away.
    request_delay: Option<std::time::Duration>,
    /// Tag lists are answered in pages of this many, as registries that page by default do.
    tag_page: Option<usize>,
    /// The referrers API, answered by the proxy (distribution 2.8 has none): the index of
    /// each subject digest given, an empty index for any other.
    referrers: Option<HashMap<String, Vec<u8>>>,
}

struct ProxyState {
    upstream: String,
    public: String,
    http: reqwest::Client,
    faults: Mutex<Faults>,
    requests: Mutex<Vec<String>>,
    forwarded: Mutex<Vec<Forwarded>>,
}

/// One request the proxy forwarded.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// When it arrived.
    pub at: std::time::Instant,
    /// GET, HEAD, POST, PATCH, PUT, ...
    pub method: String,
    /// The path (no query).
    pub path: String,
    /// The client's User-Agent.
    pub user_agent: String,
    /// The HTTP version the client spoke (HTTP/1.1 or, by ALPN over TLS, HTTP/2).
    pub version: axum::http::Version,
}

impl Forwarded {
    /// Whether it writes to the registry (an upload or a manifest push).
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PATCH" | "PUT")
    }

    /// The repository it addresses (`/v2/<repo>/blobs/...` or `/v2/<repo>/manifests/...`).
    pub fn repository(&self) -> Option<&str> {
        let rest = self.path.strip_prefix("/v2/")?;
        ["/blobs/", "/manifests/"]
            .iter()
            .filter_map(|m| rest.find(m))
            .min()
            .map(|i| &rest[..i])
    }
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    _server: crate::process::ServerTask,
}

impl FaultProxy {
    /// Starts a proxy for the plain-HTTP registry at `upstream_host` (`127.0.0.1:5000`) on a
    /// free port.
    pub async fn start(upstream_host: &str) -> anyhow::Result<Self> {
        Self::start_with(format!("http://{upstream_host}"), None).await
    }

    /// Starts a proxy for `registry` that speaks as it does: for an HTTPS registry, HTTPS with
    /// the registry's certificate (clients trust it through the same CA) and HTTPS upstream.
    pub async fn start_for(registry: &crate::Registry) -> anyhow::Result<Self> {
        match (registry.tls_config(), registry.ca_pem()) {
            (Some(tls), Some(ca)) => Self::start_with(registry.url(), Some((tls, ca))).await,
            _ => Self::start(&registry.host()).await,
        }
    }

    async fn start_with(
        upstream: String,
        tls: Option<(Arc<rustls::ServerConfig>, &str)>,
    ) -> anyhow::Result<Self> {
        shared::tls::ensure_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut http = reqwest::Client::builder().no_proxy();
        if let Some((_, ca)) = &tls {
            for ca in reqwest::Certificate::from_pem_bundle(ca.as_bytes())? {
                http = http.add_root_certificate(ca);
            }
        }
        let state = Arc::new(ProxyState {
            upstream,
            public: format!("{}://{addr}", if tls.is_some() { "https" } else { "http" }),
            http: http.build()?,
            faults: Mutex::new(Faults::default()),
            requests: Mutex::new(Vec::new()),
            forwarded: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let server = match tls {
            Some((config, _)) => crate::process::ServerTask::spawn_tls(listener, app, config),
            None => crate::process::ServerTask::spawn(listener, app),
        };
        Ok(Self {
            addr,
            state,
            _server: server,
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Answers every request (matching the path filter) with `status` for `duration`: an
    /// outage of a while, however many requests come.
    pub fn fail_for(&self, status: u16, duration: std::time::Duration) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.outage = Some((std::time::Instant::now() + duration, status));
        }
    }

    /// Answers the next requests (matching the path filter) with these statuses.
    pub fn fail_next(&self, statuses: &[(u16, Option<u64>)]) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.statuses.extend(statuses.iter().copied());
        }
    }

    /// Restricts status faults to paths containing `fragment` (`/blobs/`, `/manifests/`).
    pub fn only_paths(&self, fragment: &str) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.only_paths = Some(fragment.to_string());
        }
    }

    /// Restricts status faults to requests with `method` (`PUT`: an upload's body, not its
    /// start).
    pub fn only_method(&self, method: &str) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.only_method = Some(method.to_string());
        }
    }

    /// Cuts the next download of blob `digest` after `after` bytes.
    pub fn cut_blob_once(&self, digest: &str, after: usize) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.cut_blobs.insert(digest.to_string(), after);
        }
    }

    /// Flips one byte of every download of blob `digest`.
    pub fn corrupt_blob(&self, digest: &str) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.flip_blobs.insert(digest.to_string());
        }
    }

    /// Holds every blob download back `delay` before forwarding it: a slow source.
    pub fn delay_blob_downloads(&self, delay: std::time::Duration) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.blob_delay = Some(delay);
        }
    }

    /// Holds every request back `delay` before forwarding it: a registry a round trip of
    /// `delay` away (what parallel lookups save is measured against it).
    pub fn delay_requests(&self, delay: std::time::Duration) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.request_delay = Some(delay);
        }
    }

    /// Answers every tag list with its first `n` tags and a `Link` to the next page, as
    /// registries that page tag lists by default do (`n` ≥ 1).
    pub fn page_tag_lists(&self, n: usize) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.tag_page = Some(n.max(1));
        }
    }

    /// Offers the referrers API in front of a registry without one, as zot, Harbor or ECR
    /// offer it: `GET /v2/<name>/referrers/<digest>` answers `indexes[digest]`, or an empty
    /// index for any other digest (a registry with the API never answers 404 there).
    pub fn serve_referrers(&self, indexes: HashMap<String, Vec<u8>>) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.referrers = Some(indexes);
        }
    }

    /// The requests forwarded so far, as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The requests forwarded so far, with time and User-Agent.
    pub fn forwarded(&self) -> Vec<Forwarded> {
        self.state
            .forwarded
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The repositories written by two workers at once: per (repository, User-Agent) the span
    /// from its first to its last write, and every pair of workers whose spans on one
    /// repository overlap, as `repo: agent-a and agent-b`. Empty when every image was written
    /// by one worker at a time.
    pub fn concurrent_writers(&self) -> Vec<String> {
        use std::collections::BTreeMap;
        let mut spans: BTreeMap<(String, String), (std::time::Instant, std::time::Instant)> =
            BTreeMap::new();
        for w in self.forwarded().into_iter().filter(Forwarded::is_write) {
            let Some(repo) = w.repository().map(str::to_string) else {
                continue;
            };
            let span = spans
                .entry((repo, w.user_agent.clone()))
                .or_insert((w.at, w.at));
            span.0 = span.0.min(w.at);
            span.1 = span.1.max(w.at);
        }
        let mut overlaps = Vec::new();
        for ((repo_a, agent_a), a) in &spans {
            for ((repo_b, agent_b), b) in &spans {
                if repo_a == repo_b && agent_a < agent_b && !(a.1 < b.0 || b.1 < a.0) {
                    overlaps.push(format!("{repo_a}: {agent_a} and {agent_b}"));
                }
            }
        }
        overlaps
    }

    /// Forgets the request log.
    pub fn reset_requests(&self) {
        if let Ok(mut r) = self.state.requests.lock() {
            r.clear();
        }
        if let Ok(mut f) = self.state.forwarded.lock() {
            f.clear();
        }
    }
}

fn blob_digest(path: &str) -> Option<String> {
    let (_, rest) = path.split_once("/blobs/")?;
    rest.starts_with("sha256:").then(|| rest.to_string())
}

async fn handle(State(state): State<Arc<ProxyState>>, request: Request) -> Response<Body> {
    let method = request.method().clone();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let path = request.uri().path().to_string();
    let injected = {
        let mut f = match state.faults.lock() {
            Ok(f) => f,
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "poisoned"),
        };
        let applies = f
            .only_paths
            .as_ref()
            .is_none_or(|p| path.contains(p.as_str()))
            && f.only_method.as_ref().is_none_or(|m| m == method.as_str());
        let outage = f
            .outage
            .filter(|(until, _)| std::time::Instant::now() < *until)
            .map(|(_, status)| (status, None));
        if !applies {
            None
        } else if outage.is_some() {
            outage
        } else {
            f.statuses.pop_front()
        }
    };
    if let Some((status, retry_after)) = injected {
        let mut resp = error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "injected fault",
        );
        if let Some(s) = retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert("retry-after", v);
        }
        return resp;
    }
    if let Ok(mut r) = state.requests.lock() {
        r.push(format!("{method} {path_and_query}"));
    }
    if let Ok(mut f) = state.forwarded.lock() {
        f.push(Forwarded {
            at: std::time::Instant::now(),
            method: method.to_string(),
            path: path.clone(),
            user_agent: request
                .headers()
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            version: request.version(),
        });
    }
    let served = match (state.faults.lock(), path.split_once("/referrers/")) {
        (Ok(f), Some((_, digest))) if method == axum::http::Method::GET => {
            f.referrers.as_ref().map(|indexes| {
                indexes.get(digest).cloned().unwrap_or_else(|| {
                    serde_json::json!({
                        "schemaVersion": 2,
                        "mediaType": OCI_INDEX,
                        "manifests": [],
                    })
                    .to_string()
                    .into_bytes()
                })
            })
        }
        _ => None,
    };
    if let Some(index) = served {
        let mut resp = Response::new(Body::from(index));
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static(OCI_INDEX));
        return resp;
    }
    let delay = match state.faults.lock() {
        Ok(f) if method == axum::http::Method::GET && blob_digest(&path).is_some() => {
            f.blob_delay.or(f.request_delay)
        }
        Ok(f) => f.request_delay,
        _ => None,
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let url = format!("{}{path_and_query}", state.upstream);
    let mut upstream = state.http.request(method.clone(), &url);
    for (name, value) in request.headers() {
        if name != "host" {
            upstream = upstream.header(name, value);
        }
    }
    let body = reqwest::Body::wrap_stream(request.into_body().into_data_stream());
    let resp = match upstream.body(body).send().await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let tag_page = state.faults.lock().ok().and_then(|f| f.tag_page);
    if let Some(n) = tag_page.filter(|_| path.ends_with("/tags/list") && resp.status().is_success())
    {
        return first_page(&path, resp, n).await;
    }
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        if name == "location" {
            let rewritten = value
                .to_str()
                .unwrap_or("")
                .replace(&state.upstream, &state.public);
            builder = builder.header(name, rewritten);
        } else {
            builder = builder.header(name, value);
        }
    }
    let digest = (method == axum::http::Method::GET)
        .then(|| blob_digest(&path))
        .flatten();
    let (cut, flip) = match (&digest, state.faults.lock()) {
        (Some(d), Ok(mut f)) => (f.cut_blobs.remove(d), f.flip_blobs.contains(d)),
        _ => (None, false),
    };
    let mut sent = 0usize;
    let mut flipped = false;
    let stream = resp.bytes_stream().map(move |chunk| {
        let mut chunk = chunk.map_err(std::io::Error::other)?;
        if flip && !flipped && !chunk.is_empty() {
            let mut v = chunk.to_vec();
            let i = v.len().min(10) - 1;
            v[i] ^= 0xFF;
            chunk = bytes::Bytes::from(v);
            flipped = true;
        }
        if let Some(limit) = cut
            && sent + chunk.len() > limit
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected cut",
            ));
        }
        sent += chunk.len();
        Ok(chunk)
    });
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(StatusCode::BAD_GATEWAY, "bad response"))
}

/// The first `n` tags of a tag list and a `Link` to the rest, as a registry that pages its tag
/// lists answers (distribution 2.8 ignores `?n=` on tag lists, so the proxy pages for it).
async fn first_page(path: &str, resp: reqwest::Response, n: usize) -> Response<Body> {
    let Ok(mut list) = resp.json::<serde_json::Value>().await else {
        return error(StatusCode::BAD_GATEWAY, "tag list is not JSON");
    };
    let tags: Vec<serde_json::Value> = list["tags"].as_array().cloned().unwrap_or_default();
    let mut resp = Response::new(Body::empty());
    if tags.len() > n {
        let last = tags[n - 1].as_str().unwrap_or_default().to_string();
        list["tags"] = serde_json::Value::Array(tags[..n].to_vec());
        if let Ok(v) = HeaderValue::from_str(&format!("<{path}?n={n}&last={last}>; rel=\"next\"")) {
            resp.headers_mut().insert("link", v);
        }
    }
    *resp.body_mut() = Body::from(list.to_string());
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({"errors": [{"code": "TESTBED", "message": message}]}).to_string();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp
}
