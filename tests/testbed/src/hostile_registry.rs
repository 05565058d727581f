//! A registry that behaves as a hostile or broken one would, for the copy engine's hardening
//! tests and the hostile-mode RSS benchmark: endless bodies (manifest, token answer, error
//! body), absurd token lifetimes, digests that try to walk out of their repository, drip-fed
//! blobs, declared sizes that overflow, indexes that list one child thousands of times.
//!
//! It serves one repository (any path) whose image is a small, valid OCI image unless the mode
//! says otherwise, and counts every body byte it sends, so a test can assert that the client
//! stopped reading at its cap. Never point anything but the client under test at it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Response, StatusCode, header};
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

/// What the registry does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The manifest is an endless chunked stream without Content-Length.
    EndlessManifest,
    /// Bearer auth whose token service answers with an endless body.
    EndlessToken,
    /// Bearer auth whose token claims a lifetime of 2^64-1 seconds; the image is fine.
    HugeTokenLifetime,
    /// Blob GETs answer 400 with an endless error body.
    EndlessErrorBody,
    /// A layer digest that walks out of the repository (`sha256:x/../../…`).
    TraversalDigest,
    /// The layer is sent one byte every 100 ms.
    DripBlob,
    /// The manifest declares layer sizes whose sum overflows 64 bits.
    OversizeDeclared,
    /// An index that lists the same child manifest 8,000 times; otherwise fine.
    RepeatedChild,
}

impl Mode {
    /// Every mode, for benchmarks.
    pub const ALL: [Mode; 8] = [
        Mode::EndlessManifest,
        Mode::EndlessToken,
        Mode::HugeTokenLifetime,
        Mode::EndlessErrorBody,
        Mode::TraversalDigest,
        Mode::DripBlob,
        Mode::OversizeDeclared,
        Mode::RepeatedChild,
    ];
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The honest parts of the image every mode starts from.
struct Image {
    config: Bytes,
    layer: Bytes,
    manifest: Bytes,
    index: Bytes,
}

impl Image {
    fn new(mode: Mode) -> Self {
        let config = Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#);
        let layer = Bytes::from(vec![7u8; 4096]);
        let (layer_digest, layer_size, config_size) = match mode {
            Mode::TraversalDigest => (
                format!("sha256:x/../../../../v2/other/blobs/{}", sha256(&layer)),
                layer.len() as i64,
                config.len() as i64,
            ),
            Mode::OversizeDeclared => (sha256(&layer), i64::MAX, i64::MAX),
            _ => (sha256(&layer), layer.len() as i64, config.len() as i64),
        };
        let layer_entry = |digest: String, size: i64| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                               "digest": digest, "size": size})
        };
        let mut layers = vec![layer_entry(layer_digest, layer_size)];
        if mode == Mode::OversizeDeclared {
            // Three times 2^63-1 passes 2^64.
            layers.push(layer_entry(sha256(b"another"), i64::MAX));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(&config), "size": config_size},
            "layers": layers,
        });
        let manifest = Bytes::from(serde_json::to_vec(&manifest).unwrap_or_default());
        let child = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": sha256(&manifest),
            "size": manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}});
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": vec![child; 8000],
        });
        let index = Bytes::from(serde_json::to_vec(&index).unwrap_or_default());
        Self {
            config,
            layer,
            manifest,
            index,
        }
    }
}

struct HostileState {
    mode: Mode,
    image: Image,
    public: String,
    served: AtomicU64,
    requests: Mutex<Vec<String>>,
    child_gets: AtomicUsize,
}

/// A running hostile registry; stops when dropped.
pub struct HostileRegistry {
    addr: SocketAddr,
    state: Arc<HostileState>,
    _server: crate::process::ServerTask,
}

impl HostileRegistry {
    /// Starts one on a free loopback port.
    pub async fn start(mode: Mode) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(HostileState {
            mode,
            image: Image::new(mode),
            public: format!("http://{addr}"),
            served: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            child_gets: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        Ok(Self {
            addr,
            state,
            _server: crate::process::ServerTask::spawn(listener, app),
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Body bytes sent so far, over every request.
    pub fn bytes_served(&self) -> u64 {
        self.state.served.load(Ordering::Relaxed)
    }

    /// The requests so far, as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// How often the (repeated) child manifest was fetched.
    pub fn child_gets(&self) -> usize {
        self.state.child_gets.load(Ordering::Relaxed)
    }
}

/// A body of `bytes`, counted.
fn counted(state: &Arc<HostileState>, bytes: Bytes) -> Body {
    state
        .served
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Body::from(bytes)
}

/// An endless body of 64 KiB chunks, each counted as it is taken.
fn endless(state: &Arc<HostileState>) -> Body {
    let state = state.clone();
    let chunk = Bytes::from(vec![b'{'; 64 * 1024]);
    Body::from_stream(futures::stream::repeat_with(move || {
        state
            .served
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok::<_, std::io::Error>(chunk.clone())
    }))
}

/// `bytes`, one byte every 100 ms.
fn drip(state: &Arc<HostileState>, bytes: Bytes) -> Body {
    let state = state.clone();
    Body::from_stream(futures::stream::unfold(0usize, move |i| {
        let (state, bytes) = (state.clone(), bytes.clone());
        async move {
            if i >= bytes.len() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            state.served.fetch_add(1, Ordering::Relaxed);
            Some((Ok::<_, std::io::Error>(bytes.slice(i..i + 1)), i + 1))
        }
    }))
}

fn answer(status: StatusCode, headers: &[(&str, String)], body: Body) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (k, v) in headers {
        builder = builder.header(*k, v);
    }
    builder.body(body).unwrap_or_default()
}

fn uses_bearer(mode: Mode) -> bool {
    matches!(mode, Mode::EndlessToken | Mode::HugeTokenLifetime)
}

async fn handle(State(state): State<Arc<HostileState>>, req: Request) -> Response<Body> {
    let path = req.uri().path().to_string();
    if let Ok(mut r) = state.requests.lock() {
        r.push(format!("{} {path}", req.method()));
    }
    let mode = state.mode;
    if path == "/token" {
        return match mode {
            Mode::EndlessToken => answer(StatusCode::OK, &[], endless(&state)),
            _ => {
                let body = format!(r#"{{"token":"t0ken","expires_in":{}}}"#, u64::MAX);
                answer(StatusCode::OK, &[], counted(&state, Bytes::from(body)))
            }
        };
    }
    if uses_bearer(mode) && req.headers().get(header::AUTHORIZATION).is_none() {
        let challenge = format!(r#"Bearer realm="{}/token",service="hostile""#, state.public);
        return answer(
            StatusCode::UNAUTHORIZED,
            &[("www-authenticate", challenge)],
            Body::empty(),
        );
    }
    if path == "/v2/" {
        return answer(StatusCode::OK, &[], Body::empty());
    }
    let head = req.method() == axum::http::Method::HEAD;
    let image = &state.image;
    if let Some((_, reference)) = path.split_once("/manifests/") {
        // The image is tag `1`; other tags (cosign's, the referrers tag schema) do not exist.
        if !reference.starts_with("sha256:") && reference != "1" {
            return answer(StatusCode::NOT_FOUND, &[], Body::from("manifest unknown"));
        }
        let (bytes, media_type) = if reference.starts_with("sha256:") {
            if mode == Mode::RepeatedChild {
                state.child_gets.fetch_add(1, Ordering::Relaxed);
            }
            (image.manifest.clone(), OCI_MANIFEST)
        } else if mode == Mode::RepeatedChild {
            (image.index.clone(), OCI_INDEX)
        } else {
            (image.manifest.clone(), OCI_MANIFEST)
        };
        if mode == Mode::EndlessManifest {
            return answer(
                StatusCode::OK,
                &[("content-type", OCI_MANIFEST.into())],
                endless(&state),
            );
        }
        let headers = [
            ("content-type", media_type.to_string()),
            ("docker-content-digest", sha256(&bytes)),
            ("content-length", bytes.len().to_string()),
        ];
        let body = if head {
            Body::empty()
        } else {
            counted(&state, bytes)
        };
        return answer(StatusCode::OK, &headers, body);
    }
    if let Some((_, digest)) = path.split_once("/blobs/") {
        if mode == Mode::EndlessErrorBody {
            return answer(StatusCode::BAD_REQUEST, &[], endless(&state));
        }
        let bytes = if digest == sha256(&image.config) {
            image.config.clone()
        } else if digest == sha256(&image.layer) {
            image.layer.clone()
        } else {
            return answer(StatusCode::NOT_FOUND, &[], Body::empty());
        };
        let headers = [
            ("content-length", bytes.len().to_string()),
            ("docker-content-digest", digest.to_string()),
        ];
        let body = match (head, mode) {
            (true, _) => Body::empty(),
            (false, Mode::DripBlob) if bytes == image.layer => drip(&state, bytes),
            (false, _) => counted(&state, bytes),
        };
        return answer(StatusCode::OK, &headers, body);
    }
    answer(StatusCode::NOT_FOUND, &[], Body::empty())
}
