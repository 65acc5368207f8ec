//! The Kubernetes API client: LIST then WATCH the pods of this node.
//!
//! The protocol (the same one client-go's reflector follows):
//!
//! 1. `GET /api/v1/pods?fieldSelector=spec.nodeName=<node>&limit=500` (pages with
//!    `continue`), which replaces the cache and gives a `resourceVersion`;
//! 2. `GET …&watch=1&resourceVersion=<rv>&allowWatchBookmarks=true&timeoutSeconds=…`: a
//!    chunked stream of `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":…}` lines.
//!    Each event moves the resourceVersion on; a BOOKMARK does only that (its object is a
//!    pod with nothing but `metadata.resourceVersion`, never cached);
//! 3. when the server ends the watch (its timeout), watch again from the last version;
//! 4. `410 Gone` (as an ERROR event or an HTTP status): the version was compacted away,
//!    events were missed: LIST again;
//! 5. any other failure: wait (exponential backoff with jitter, 0.5 s to 30 s) and
//!    resume, from the last version when there is one.
//!
//! It runs on its own thread and current-thread runtime, like the HTTP endpoint, so a slow
//! API server never stalls capture. The bearer token is read from its file for every
//! request: bound service account tokens are rotated by the kubelet (hourly by default).

use std::{
    path::Path,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::json;

use super::{ApiTarget, Kubernetes, Pod};
use crate::util::{component::Component, logging::log};

/// A LIST page's body at most (500 pods of a few kilobytes each, with room).
const MAX_LIST_BYTES: usize = 64 << 20;
/// One watch event at most (a pod with large annotations is still far below).
const MAX_EVENT_BYTES: usize = 8 << 20;
/// The server ends a watch after this long; the agent then resumes it.
const WATCH_TIMEOUT_S: u64 = 300;
/// No byte for this long on a watch (bookmarks arrive about every minute): the connection
/// is dead without the socket knowing.
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_TIMEOUT_S + 60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ListMeta {
    resource_version: String,
    #[serde(rename = "continue")]
    continue_: Option<String>,
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

/// Why a request failed, for the counters and the next step.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    /// 410 Gone: the resourceVersion (or continue token) is too old.
    #[error("resource version expired (410 Gone)")]
    Gone,
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("request failed: {0:#}")]
    Request(anyhow::Error),
    #[error("undecodable response: {0:#}")]
    Decode(anyhow::Error),
}

/// How a watch ended.
enum WatchEnd {
    /// The server closed it (its timeout): resume from this version.
    Closed(String),
    /// 410: relist.
    Expired,
    /// A failure; resume from this version after a backoff.
    Failed(ApiError, String),
}

struct Api {
    client: HttpClient,
    target: ApiTarget,
    selector: String,
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        // The cluster's own CA only: the API server's certificate is not a public one.
        Some(path) => crate::util::tls::add_pem_roots(&mut roots, path, "the API CA file")?,
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    crate::util::tls::with_roots(roots)
}

impl Api {
    fn new(target: ApiTarget) -> Result<Self> {
        let _: Uri = target.url.parse().with_context(|| format!("kubernetes.api_url {:?} is not a URL", target.url))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(REQUEST_TIMEOUT));
        http.set_keepalive(Some(Duration::from_secs(30)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(target.ca_file.as_deref())?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let selector = utf8_percent_encode(&format!("spec.nodeName={}", target.node), NON_ALPHANUMERIC).to_string();
        Ok(Self { client, target, selector })
    }

    /// The token as it is now; none when the file is absent (an API without authentication).
    fn token(&self) -> Option<String> {
        let t = std::fs::read_to_string(&self.target.token_file).ok()?;
        let t = t.trim();
        (!t.is_empty()).then(|| t.to_owned())
    }

    async fn get(&self, query: &str) -> Result<http::Response<hyper::body::Incoming>, ApiError> {
        let uri = format!("{}/api/v1/pods?fieldSelector={}&{query}", self.target.url, self.selector);
        let mut req = Request::get(uri)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, concat!("hoptrace/", env!("CARGO_PKG_VERSION")));
        if let Some(t) = self.token() {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Empty::new()).map_err(|e| ApiError::Request(e.into()))?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| ApiError::Request(anyhow!("no response within {REQUEST_TIMEOUT:?}")))?
            .map_err(|e| ApiError::Request(e.into()))?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::GONE => Err(ApiError::Gone),
            s => {
                // The Status object's message says why (forbidden: RBAC, unauthorized: token).
                let body = Limited::new(resp.into_body(), 64 << 10).collect().await.map(|b| b.to_bytes());
                let message = body
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                Err(ApiError::Status { status: s.as_u16(), message })
            }
        }
    }

    /// Every pod of the node, and the version to watch from.
    async fn list(&self) -> Result<(Vec<Pod>, String), ApiError> {
        let mut pods = Vec::new();
        let mut cont: Option<String> = None;
        loop {
            let mut q = "limit=500".to_owned();
            if let Some(c) = &cont {
                q += &format!("&continue={}", utf8_percent_encode(c, NON_ALPHANUMERIC));
            }
            let resp = self.get(&q).await?;
            let body = Limited::new(resp.into_body(), MAX_LIST_BYTES)
                .collect()
                .await
                .map_err(|e| ApiError::Request(anyhow!("reading the pod list: {e}")))?
                .to_bytes();
            let page: PodList = serde_json::from_slice(&body).map_err(|e| ApiError::Decode(anyhow!("PodList: {e}")))?;
            pods.extend(page.items);
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => cont = Some(c),
                None => return Ok((pods, page.metadata.resource_version)),
            }
        }
    }

    /// Applies the events of one watch to `k` until it ends.
    async fn watch(&self, k: &Kubernetes, from: String) -> WatchEnd {
        let mut rv = from;
        let q = format!(
            "watch=1&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds={WATCH_TIMEOUT_S}",
            utf8_percent_encode(&rv, NON_ALPHANUMERIC)
        );
        let resp = match self.get(&q).await {
            Ok(r) => r,
            Err(ApiError::Gone) => return WatchEnd::Expired,
            Err(e) => return WatchEnd::Failed(e, rv),
        };
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        loop {
            let frame = match tokio::time::timeout(WATCH_IDLE, body.frame()).await {
                Err(_) => return WatchEnd::Failed(ApiError::Request(anyhow!("watch silent for {WATCH_IDLE:?}")), rv),
                Ok(None) => return WatchEnd::Closed(rv),
                Ok(Some(Err(e))) => return WatchEnd::Failed(ApiError::Request(e.into()), rv),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line = buf.split_to(nl + 1);
                let line = &line[..nl];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match self.event(k, line, &mut rv) {
                    Ok(()) => {}
                    Err(ApiError::Gone) => return WatchEnd::Expired,
                    Err(e) => return WatchEnd::Failed(e, rv),
                }
            }
            if buf.len() > MAX_EVENT_BYTES {
                buf.advance(buf.len());
                let e = anyhow!("a watch event is larger than {MAX_EVENT_BYTES} bytes");
                return WatchEnd::Failed(ApiError::Decode(e), rv);
            }
        }
    }

    /// One watch line.
    fn event(&self, k: &Kubernetes, line: &[u8], rv: &mut String) -> Result<(), ApiError> {
        let ev: WatchEvent = serde_json::from_slice(line).map_err(|e| ApiError::Decode(anyhow!("watch event: {e}")))?;
        k.stats.watch_events.fetch_add(1, Ordering::Relaxed);
        if ev.kind == "ERROR" {
            // The object is a Status: 410 when the version was compacted away.
            let code = ev.object["code"].as_u64().unwrap_or(0);
            if code == 410 {
                return Err(ApiError::Gone);
            }
            let message = ev.object["message"].as_str().unwrap_or_default().to_owned();
            return Err(ApiError::Status { status: code as u16, message });
        }
        let version = ev.object["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned();
        match ev.kind.as_str() {
            // Progress only: the object is a bare pod carrying the version.
            "BOOKMARK" => {}
            "ADDED" | "MODIFIED" | "DELETED" => {
                let pod: Pod = serde_json::from_value(ev.object)
                    .map_err(|e| ApiError::Decode(anyhow!("pod in watch event: {e}")))?;
                if ev.kind == "DELETED" {
                    k.delete(&pod.metadata.uid, Instant::now());
                } else if pod.spec.node_name == self.target.node {
                    k.upsert(&pod);
                }
            }
            other => return Err(ApiError::Decode(anyhow!("unknown watch event type {other:?}"))),
        }
        if !version.is_empty() {
            *rv = version;
        }
        Ok(())
    }
}

/// Exponential, with ±25 % jitter so that a node pool's agents do not reconnect in step.
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = BACKOFF_MIN.saturating_mul(1 << self.0.min(16)).min(BACKOFF_MAX);
        self.0 += 1;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        base.mul_f64(0.75 + f64::from(nanos % 1000) / 2000.0)
    }
}

fn count_error(k: &Kubernetes, e: &ApiError) {
    let c = match e {
        ApiError::Gone => return,
        ApiError::Status { .. } => &k.stats.errors_status,
        ApiError::Request(_) => &k.stats.errors_request,
        ApiError::Decode(_) => &k.stats.errors_decode,
    };
    c.fetch_add(1, Ordering::Relaxed);
}

async fn run(api: Api, k: Arc<Kubernetes>) {
    let mut backoff = Backoff(0);
    let mut rv: Option<String> = None;
    // Deleted pods leave once their grace has passed, whatever the watch is doing.
    let sweeper = k.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            sweeper.sweep(Instant::now());
        }
    });
    loop {
        let from = match rv.take() {
            Some(v) => v,
            None => match api.list().await {
                Ok((pods, version)) => {
                    k.replace_all(&pods, Instant::now());
                    k.stats.lists.fetch_add(1, Ordering::Relaxed);
                    log(
                        "info",
                        "kubernetes pods listed",
                        json!({ "node": k.node, "pods": pods.len(), "resource_version": version }),
                    );
                    version
                }
                Err(e) => {
                    count_error(&k, &e);
                    let wait = backoff.next();
                    log(
                        "warn",
                        "kubernetes pod list failed",
                        json!({ "error": e.to_string(), "retry_in_ms": wait.as_millis() as u64 }),
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
            },
        };
        let started = Instant::now();
        match api.watch(&k, from).await {
            WatchEnd::Closed(v) => {
                k.stats.restarts_closed.fetch_add(1, Ordering::Relaxed);
                rv = Some(v);
                // A server that closes at once every time must not be hammered.
                if started.elapsed() < Duration::from_secs(1) {
                    tokio::time::sleep(backoff.next()).await;
                } else {
                    backoff = Backoff(0);
                }
            }
            WatchEnd::Expired => {
                k.stats.restarts_expired.fetch_add(1, Ordering::Relaxed);
                log("info", "kubernetes watch expired (410 Gone): listing again", json!({ "node": k.node }));
            }
            WatchEnd::Failed(e, v) => {
                k.stats.restarts_error.fetch_add(1, Ordering::Relaxed);
                count_error(&k, &e);
                let wait = backoff.next();
                log(
                    "warn",
                    "kubernetes watch failed",
                    json!({ "error": e.to_string(), "retry_in_ms": wait.as_millis() as u64 }),
                );
                rv = Some(v);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Starts the watcher thread. Configuration problems (URL, CA file) fail here, at start.
pub fn spawn(target: ApiTarget, k: Arc<Kubernetes>) -> Result<Component> {
    log(
        "info",
        "kubernetes metadata enabled",
        json!({ "api": target.url, "node": target.node, "token_file": target.token_file.display().to_string() }),
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let api = runtime.block_on(async { Api::new(target) })?;
    Component::spawn("k8s", move |mut stop| {
        runtime.block_on(async move {
            tokio::select! {
                _ = run(api, k) => {}
                _ = stop.stopped() => {}
            }
        })
    })
    .context("starting the Kubernetes watcher thread")
}
