//! The agent's HTTP endpoint: `GET /gaps` (the table of broken hops, JSON), `GET /metrics`
//! (Prometheus text), `GET /healthz` (503 when the capture loop has stopped ticking),
//! `GET /readyz`.
//!
//! It runs on its own thread and current-thread runtime and only reads shared state
//! (the gap table, and a metrics snapshot the capture loop refreshes every second), so a
//! slow scraper can never stall capture. It protects itself too: at most
//! `MAX_CONNECTIONS` connections (the oldest is closed for a new one), a request head
//! must arrive within `HEADER_READ_TIMEOUT` (idle and slowloris connections are cut),
//! and failed accepts back off instead of spinning; all counted on /metrics.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::sync::Notify;

use crate::{
    capture::heartbeat::{Heartbeat, DEFAULT_STALL_TIMEOUT},
    gaps::GapTable,
    model::sample::Sample,
    util::component::Component,
    util::logging::{log, RateLimiter},
};

/// What `/healthz` decides from: the capture loop's heartbeat and how old its last tick
/// may be.
pub struct Health {
    pub heartbeat: Arc<Heartbeat>,
    pub stall_timeout: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self { heartbeat: Arc::default(), stall_timeout: DEFAULT_STALL_TIMEOUT }
    }
}

/// What the endpoint serves.
#[derive(Default)]
pub struct EndpointState {
    /// `/healthz`: the capture loop is ticking.
    pub health: Health,
    pub gaps: Arc<Mutex<GapTable>>,
    /// Counter samples, refreshed by the capture loop.
    pub samples: Mutex<Vec<Sample>>,
    /// Probes attached and exporter configured.
    pub ready: AtomicBool,
    /// RED metrics and the self-metrics with dynamic labels (`crate::traces::red`).
    pub metrics: crate::ops::metrics::selfstats::EndpointMetrics,
}

/// Prometheus label values: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Prometheus text exposition of the samples and the gap counter; `om`: OpenMetrics
/// (a counter's `# TYPE` names the family without `_total`).
pub fn render_metrics(samples: &[Sample], gaps: &GapTable, om: bool) -> String {
    let mut out = String::new();
    let mut last = "";
    let family = |name: &'static str, kind: &str| {
        if om && kind == "counter" {
            name.strip_suffix("_total").unwrap_or(name)
        } else {
            name
        }
    };
    for s in samples {
        if s.name != last {
            let kind = if s.name.ends_with("_total") { "counter" } else { "gauge" };
            let _ = writeln!(out, "# TYPE {} {kind}", family(s.name, kind));
            last = s.name;
        }
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
        if labels.is_empty() {
            let _ = writeln!(out, "{} {}", s.name, s.value);
        } else {
            let _ = writeln!(out, "{}{{{}}} {}", s.name, labels.join(","), s.value);
        }
    }
    let gaps_family = family("hoptrace_propagation_gaps_total", "counter");
    let _ = writeln!(out, "# HELP {gaps_family} Hops where trace context was lost.");
    let _ = writeln!(out, "# TYPE {gaps_family} counter");
    for (k, e) in gaps.rows() {
        let _ = writeln!(
            out,
            "hoptrace_propagation_gaps_total{{kind=\"{}\",service=\"{}\",zone=\"{}\",peer_service=\"{}\",route=\"{}\"}} {}",
            k.kind.as_str(),
            escape(&k.service),
            escape(&k.zone),
            escape(&k.peer_service),
            escape(&k.route),
            e.count
        );
    }
    let _ = writeln!(out, "# TYPE {} counter", family("hoptrace_propagation_gaps_untabled_total", "counter"));
    let _ = writeln!(out, "hoptrace_propagation_gaps_untabled_total {}", gaps.overflow);
    out
}

/// The `/gaps` document.
pub fn gaps_json(gaps: &GapTable) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = gaps
        .rows()
        .into_iter()
        .map(|(k, e)| {
            json!({
                "kind": k.kind, "service": k.service, "zone": k.zone, "peer_service": k.peer_service,
                "route": k.route, "count": e.count, "first_seen_unix_ns": e.first_seen_unix_ns,
                "last_seen_unix_ns": e.last_seen_unix_ns, "example_trace_id": e.example_trace_id,
                "detail": e.detail,
            })
        })
        .collect();
    json!({ "gaps": rows, "total": gaps.total, "untabled": gaps.overflow })
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn handle(req: &Request<Incoming>, state: &EndpointState) -> Response<Full<Bytes>> {
    let accept = req.headers().get(hyper::header::ACCEPT).and_then(|v| v.to_str().ok());
    respond(req.method(), req.uri().path(), accept, state)
}

/// The endpoint's answer to `GET path` with an `Accept` header.
pub fn respond(
    method: &hyper::Method,
    path: &str,
    accept: Option<&str>,
    state: &EndpointState,
) -> Response<Full<Bytes>> {
    if method != hyper::Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match path {
        "/gaps" => {
            let body = state.gaps.lock().map(|g| gaps_json(&g).to_string()).unwrap_or_default();
            reply(StatusCode::OK, "application/json", body)
        }
        "/metrics" => {
            use crate::ops::metrics::render;
            // OpenMetrics when asked (Prometheus asks first): the format with exemplars.
            let om = render::wants_openmetrics(accept);
            let samples = state.samples.lock().map(|s| s.clone()).unwrap_or_default();
            let mut body = state.gaps.lock().map(|g| render_metrics(&samples, &g, om)).unwrap_or_default();
            state.metrics.render(om, &mut body);
            if om {
                body.push_str("# EOF\n");
            }
            let ct = if om { render::OPENMETRICS_CONTENT_TYPE } else { render::TEXT_CONTENT_TYPE };
            reply(StatusCode::OK, ct, body)
        }
        "/cardinality" => {
            let body = match state.metrics.red.get() {
                Some(red) => crate::ops::cardinality::json(&red.snapshot(), &red.graph_snapshot(), None).to_string(),
                None => serde_json::json!({ "series": [], "attributes": [] }).to_string(),
            };
            reply(StatusCode::OK, "application/json", body)
        }
        "/healthz" => healthz(&state.health, Instant::now()),
        "/readyz" if state.ready.load(Ordering::SeqCst) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".into()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /gaps, /metrics, /cardinality, /healthz, /readyz\n".into(),
        ),
    }
}

/// 200 while the capture loop ticks; 503 once its last tick is older than the stall
/// timeout, so a wedged agent is restarted rather than left blind.
fn healthz(health: &Health, now: Instant) -> Response<Full<Bytes>> {
    match health.heartbeat.check_at(now, health.stall_timeout) {
        Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        Err(age) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!(
                "capture loop stalled: last tick {:.1} s ago (capture.stall_timeout_s: {} s)\n",
                age.as_secs_f64(),
                health.stall_timeout.as_secs()
            ),
        ),
    }
}

/// Binds `addr` and serves on a background thread until stopped; returns the bound
/// address and the thread.
pub fn spawn(addr: SocketAddr, state: Arc<EndpointState>) -> Result<(SocketAddr, Component)> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let component = Component::spawn("http", move |mut stop| {
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            tokio::select! {
                _ = serve(listener, state) => {}
                _ = stop.stopped() => {}
            }
        });
    })?;
    Ok((local, component))
}

/// Connections served at once. At the cap the oldest connection is closed to admit the
/// new one, so a pile of idle or slow connections cannot lock Prometheus out (only a
/// client that keeps reconnecting could, which is what the NetworkPolicy is for).
const MAX_CONNECTIONS: usize = 64;
/// A connection must send a complete request head within this long after it opens or
/// after its previous response; idle and slowloris connections are cut.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Back-off after a failed accept (EMFILE, ENOBUFS…), doubling up to the maximum, so an
/// exhausted process does not spin on the listener.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// The open connections, oldest first, each with the signal that closes it.
type Live = Arc<Mutex<BTreeMap<u64, Arc<Notify>>>>;

async fn serve(listener: tokio::net::TcpListener, state: Arc<EndpointState>) {
    let live: Live = Arc::default();
    let mut next_id = 0u64;
    let mut backoff = Duration::ZERO;
    let mut logs = RateLimiter::new(Duration::from_secs(60));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(e) => {
                state.metrics.http.accept_errors.fetch_add(1, Ordering::Relaxed);
                backoff = (backoff * 2).clamp(ACCEPT_BACKOFF.0, ACCEPT_BACKOFF.1);
                if let Some(suppressed) = logs.allow("accept") {
                    log(
                        "warn",
                        "http endpoint: accept failed, backing off",
                        json!({
                        "error": e.to_string(), "backoff_ms": backoff.as_millis() as u64, "suppressed": suppressed }),
                    );
                }
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let cut = Arc::new(Notify::new());
        if let Ok(mut open) = live.lock() {
            if open.len() >= MAX_CONNECTIONS {
                if let Some((_, oldest)) = open.pop_first() {
                    // A stored permit: works even before that task first waits.
                    oldest.notify_one();
                    state.metrics.http.evicted.fetch_add(1, Ordering::Relaxed);
                }
            }
            open.insert(next_id, cut.clone());
            state.metrics.http.open.store(open.len() as u64, Ordering::Relaxed);
        }
        tokio::spawn(connection(stream, state.clone(), cut, (live.clone(), next_id)));
        next_id += 1;
    }
}

/// Serves one connection until it ends, times out reading a request head, or is evicted.
async fn connection(
    stream: tokio::net::TcpStream,
    state: Arc<EndpointState>,
    cut: Arc<Notify>,
    (live, id): (Live, u64),
) {
    let svc_state = state.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let resp = handle(&req, &svc_state);
        async move { Ok::<_, Infallible>(resp) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::select! {
        done = http.serve_connection(TokioIo::new(stream), svc) => {
            if done.is_err_and(|e| e.is_timeout()) {
                state.metrics.http.header_timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ = cut.notified() => {}
    }
    if let Ok(mut open) = live.lock() {
        open.remove(&id);
        state.metrics.http.open.store(open.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gaps::{Gap, GapKey, GapKind};

    #[test]
    fn healthz_is_503_once_the_last_tick_is_older_than_the_stall_timeout() {
        let health = Health { heartbeat: Arc::default(), stall_timeout: Duration::from_secs(3) };
        let now = Instant::now();
        assert_eq!(healthz(&health, now).status(), StatusCode::OK);
        assert_eq!(healthz(&health, now + Duration::from_secs(2)).status(), StatusCode::OK);
        assert_eq!(healthz(&health, now + Duration::from_secs(4)).status(), StatusCode::SERVICE_UNAVAILABLE);
        health.heartbeat.beat();
        assert_eq!(healthz(&health, Instant::now() + Duration::from_secs(2)).status(), StatusCode::OK);
    }

    #[test]
    fn metrics_text_escapes_and_lists_gaps() {
        let mut t = GapTable::default();
        t.record(&Gap {
            key: GapKey {
                kind: GapKind::DroppedOutboundContext,
                service: "front".into(),
                zone: "Z1".into(),
                peer_service: "a\"b".into(),
                route: "/items/{id}".into(),
            },
            time_unix_ns: 1,
            trace_id: "t".into(),
            span_id: "s".into(),
            detail: String::new(),
        });
        let samples = vec![Sample { name: "hoptrace_x_total", labels: vec![("reason", "r")], value: 3 }];
        let text = render_metrics(&samples, &t, false);
        assert!(text.contains("hoptrace_x_total{reason=\"r\"} 3"), "{text}");
        assert!(text.contains(
            "hoptrace_propagation_gaps_total{kind=\"dropped_outbound_context\",service=\"front\",zone=\"Z1\",peer_service=\"a\\\"b\",route=\"/items/{id}\"} 1"
        ), "{text}");
        assert_eq!(gaps_json(&t)["gaps"][0]["count"], 1);
    }
}
