//! Pushing propagation-gap alerts straight to Alertmanager (v2 API), for nodes where no
//! Prometheus scrapes the agent (plain VMs, CI runners).
//!
//! Once a second a background thread looks at the gap table: a broken hop whose count grew
//! by at least `threshold` within `window` FIRES; once it stops growing for a whole window
//! it is RESOLVED (sent once, `endsAt` = now). Firing alerts are re-sent every
//! `resend_every` with an `endsAt` a few re-sends ahead, so Alertmanager resolves them by
//! itself if the agent dies. One alert per hop: Alertmanager deduplicates on labels.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use serde_json::{json, Value};

use crate::{
    gaps::{GapEntry, GapKey, GapTable},
    util::component::Component,
    util::logging::log,
};

#[derive(Clone, Debug)]
pub struct AlertConfig {
    /// Alertmanager base URL, e.g. `http://alertmanager:9093` or `https://…`.
    pub url: String,
    /// Extra PEM CA certificates trusted for an `https` URL (besides the built-in roots).
    pub ca_file: Option<PathBuf>,
    /// Gaps within `window` that make a hop fire.
    pub threshold: u64,
    pub window: Duration,
    pub resend_every: Duration,
}

/// What to tell Alertmanager about one hop.
#[derive(Clone, Debug, PartialEq)]
pub enum AlertChange {
    Firing { key: GapKey, starts_at: SystemTime, example_trace_id: String },
    Resolved { key: GapKey, starts_at: SystemTime, ends_at: SystemTime },
}

struct Tracked {
    /// (when, cumulative count), oldest first, spanning at least `window`.
    history: VecDeque<(Instant, u64)>,
    firing_since: Option<SystemTime>,
    last_sent: Option<Instant>,
}

const MAX_TRACKED: usize = 4096;

pub struct Alerter {
    cfg: AlertConfig,
    tracked: HashMap<GapKey, Tracked>,
}

impl Alerter {
    pub fn new(cfg: AlertConfig) -> Self {
        Self { cfg, tracked: HashMap::new() }
    }

    /// Pure decision step (no I/O): what changed since the last call.
    pub fn evaluate(&mut self, rows: &[(GapKey, GapEntry)], now: Instant, wall: SystemTime) -> Vec<AlertChange> {
        let mut out = Vec::new();
        for (key, entry) in rows {
            if !self.tracked.contains_key(key) && self.tracked.len() >= MAX_TRACKED {
                continue;
            }
            let t = self.tracked.entry(key.clone()).or_insert_with(|| Tracked {
                // First sight: everything counted so far happened within this window.
                history: VecDeque::from([(now, 0)]),
                firing_since: None,
                last_sent: None,
            });
            t.history.push_back((now, entry.count));
            // Keep one sample at or before the window's start as the baseline.
            while t.history.len() > 2 && now.duration_since(t.history[1].0) >= self.cfg.window {
                t.history.pop_front();
            }
            let baseline = t.history.front().map_or(0, |(_, c)| *c);
            let increase = entry.count.saturating_sub(baseline);
            if increase >= self.cfg.threshold && self.cfg.threshold > 0 {
                let due = t.last_sent.is_none_or(|at| now.duration_since(at) >= self.cfg.resend_every);
                if t.firing_since.is_none() || due {
                    let starts_at = *t.firing_since.get_or_insert(wall);
                    t.last_sent = Some(now);
                    out.push(AlertChange::Firing {
                        key: key.clone(),
                        starts_at,
                        example_trace_id: entry.example_trace_id.clone(),
                    });
                }
            } else if let Some(starts_at) = t.firing_since.take() {
                t.last_sent = None;
                out.push(AlertChange::Resolved { key: key.clone(), starts_at, ends_at: wall });
            }
        }
        out
    }

    /// The Alertmanager v2 JSON for `changes`.
    pub fn payload(&self, changes: &[AlertChange]) -> Value {
        let alerts: Vec<Value> = changes
            .iter()
            .map(|c| {
                let (key, starts_at, ends_at, example) = match c {
                    AlertChange::Firing { key, starts_at, example_trace_id } => {
                        (key, *starts_at, SystemTime::now() + self.cfg.resend_every * 4, example_trace_id.as_str())
                    }
                    AlertChange::Resolved { key, starts_at, ends_at } => (key, *starts_at, *ends_at, ""),
                };
                json!({
                    "labels": {
                        "alertname": "HoptracePropagationGap",
                        "severity": "warning",
                        "kind": key.kind.as_str(),
                        "service": key.service,
                        "zone": key.zone,
                        "peer_service": key.peer_service,
                        "route": key.route,
                    },
                    "annotations": {
                        "summary": format!("{} -> {} on {}: trace context lost ({})", key.service, key.peer_service, key.route, key.kind.as_str()),
                        "example_trace_id": example,
                    },
                    "startsAt": humantime::format_rfc3339_millis(starts_at).to_string(),
                    "endsAt": humantime::format_rfc3339_millis(ends_at).to_string(),
                })
            })
            .collect();
        Value::Array(alerts)
    }
}

/// Changes not yet accepted by Alertmanager: only the latest state per hop. A failed push
/// is retried with whatever happened since merged in, so a resolve is never lost behind an
/// older fire of the same hop (nor the reverse). Bounded: the keys are the `Alerter`'s
/// tracked hops, at most `MAX_TRACKED`.
#[derive(Default)]
pub struct Pending {
    latest: HashMap<GapKey, AlertChange>,
}

impl Pending {
    /// Merges `changes` (newer than everything held) in.
    pub fn merge(&mut self, changes: Vec<AlertChange>) {
        for change in changes {
            let key = match &change {
                AlertChange::Firing { key, .. } | AlertChange::Resolved { key, .. } => key.clone(),
            };
            self.latest.insert(key, change);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    /// What to send now, one change per hop.
    pub fn changes(&self) -> Vec<AlertChange> {
        self.latest.values().cloned().collect()
    }

    pub fn clear(&mut self) {
        self.latest.clear();
    }
}

/// The Alertmanager client: plain HTTP or HTTPS (rustls) by the URL's scheme.
pub struct Push {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: hyper::Uri,
}

impl Push {
    /// Checks the URL and the CA file now, so a typo stops the agent at startup.
    pub fn new(cfg: &AlertConfig) -> Result<Self> {
        let uri: hyper::Uri = format!("{}/api/v2/alerts", cfg.url.trim_end_matches('/'))
            .parse()
            .with_context(|| format!("--alertmanager {:?} is not a URL", cfg.url))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some() => {}
            _ => bail!("--alertmanager {:?} must be an http:// or https:// URL with a host", cfg.url),
        }
        if cfg.ca_file.is_some() && uri.scheme_str() != Some("https") {
            bail!("--alertmanager-ca-file is given but --alertmanager {:?} is not https", cfg.url);
        }
        let tls = crate::util::tls::client_config(cfg.ca_file.as_deref()).context("--alertmanager-ca-file")?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(PUSH_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Ok(Self { client, uri })
    }

    /// POSTs `body` to `<url>/api/v2/alerts` within `PUSH_TIMEOUT`.
    async fn post(&self, body: String) -> Result<()> {
        let req = hyper::Request::post(self.uri.clone())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = tokio::time::timeout(PUSH_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| anyhow!("alertmanager did not answer within {PUSH_TIMEOUT:?}"))??;
        if !resp.status().is_success() {
            return Err(anyhow!("alertmanager answered {}", resp.status()));
        }
        Ok(())
    }
}

const PUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Evaluates the shared gap table every second and pushes changes through `push` (made by
/// `Push::new(&cfg)` while the configuration is checked), on its own thread.
pub fn spawn(cfg: AlertConfig, push: Push, gaps: Arc<Mutex<GapTable>>) -> Result<Component> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let component = Component::spawn("alerts", move |stop| {
        let mut alerter = Alerter::new(cfg);
        let mut pending = Pending::default();
        while !stop.wait(Duration::from_secs(1)) {
            let rows = match gaps.lock() {
                Ok(t) => t.rows(),
                Err(_) => return,
            };
            pending.merge(alerter.evaluate(&rows, Instant::now(), SystemTime::now()));
            if pending.is_empty() {
                continue;
            }
            let body = alerter.payload(&pending.changes()).to_string();
            match runtime.block_on(push.post(body)) {
                Ok(()) => pending.clear(),
                Err(e) => log("warn", "alert push to alertmanager failed", json!({ "error": format!("{e:#}") })),
            }
        }
    })?;
    Ok(component)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gaps::GapKind;

    fn cfg() -> AlertConfig {
        AlertConfig {
            url: "http://x".into(),
            ca_file: None,
            threshold: 2,
            window: Duration::from_secs(60),
            resend_every: Duration::from_secs(10),
        }
    }

    fn key(peer: &str) -> GapKey {
        GapKey {
            kind: GapKind::DroppedOutboundContext,
            service: "checkout".into(),
            zone: "Z1".into(),
            peer_service: peer.into(),
            route: "/items/{id}".into(),
        }
    }

    fn row(count: u64) -> Vec<(GapKey, GapEntry)> {
        rows(&["inventory"], count)
    }

    fn rows(peers: &[&str], count: u64) -> Vec<(GapKey, GapEntry)> {
        peers.iter().map(|p| (key(p), entry(count))).collect()
    }

    fn entry(count: u64) -> GapEntry {
        GapEntry {
            count,
            first_seen_unix_ns: 1,
            last_seen_unix_ns: 1,
            example_trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            detail: String::new(),
        }
    }

    fn states(p: &Pending) -> Vec<(String, &'static str)> {
        let mut v: Vec<_> = p
            .changes()
            .into_iter()
            .map(|c| match c {
                AlertChange::Firing { key, .. } => (key.peer_service, "firing"),
                AlertChange::Resolved { key, .. } => (key.peer_service, "resolved"),
            })
            .collect();
        v.sort();
        v
    }

    /// Alertmanager down while a hop fires and then resolves: the retry carries the
    /// resolve, not the stale fire (the old queue kept both and could cut the newest).
    #[test]
    fn a_failed_push_keeps_the_latest_state_per_hop() {
        let mut a = Alerter::new(cfg());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let w = SystemTime::now();
        let mut pending = Pending::default();
        pending.merge(a.evaluate(&rows(&["inventory", "billing"], 2), at(1), w));
        assert_eq!(states(&pending), [("billing".into(), "firing"), ("inventory".into(), "firing")]);
        // Push failed; billing keeps growing (re-sent), inventory goes quiet for a window.
        let mut r = rows(&["inventory"], 2);
        r.extend(rows(&["billing"], 9));
        pending.merge(a.evaluate(&r, at(80), w));
        assert_eq!(states(&pending), [("billing".into(), "firing"), ("inventory".into(), "resolved")]);
        let body = a.payload(&pending.changes());
        assert_eq!(body.as_array().unwrap().len(), 2, "one alert per hop: {body}");
        // And a hop that fires again after a pending resolve is sent as firing.
        let mut r = rows(&["inventory"], 5);
        r.extend(rows(&["billing"], 9));
        pending.merge(a.evaluate(&r, at(81), w));
        assert_eq!(states(&pending), [("billing".into(), "firing"), ("inventory".into(), "firing")]);
        pending.clear();
        assert!(pending.is_empty());
    }

    /// However long Alertmanager stays down, the retry holds one change per tracked hop.
    #[test]
    fn pending_changes_stay_bounded_by_the_tracked_hops() {
        let mut a = Alerter::new(cfg());
        let names: Vec<String> = (0..MAX_TRACKED + 50).map(|i| format!("peer-{i}")).collect();
        let peers: Vec<&str> = names.iter().map(String::as_str).collect();
        let t0 = Instant::now();
        let mut pending = Pending::default();
        for round in 0..30u64 {
            let now = t0 + Duration::from_secs(round * 11);
            pending.merge(a.evaluate(&rows(&peers, 2 + round), now, SystemTime::now()));
        }
        assert_eq!(pending.changes().len(), MAX_TRACKED);
    }

    #[test]
    fn fires_at_threshold_dedups_resends_and_resolves_once() {
        let mut a = Alerter::new(cfg());
        let t0 = Instant::now();
        let w = SystemTime::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(a.evaluate(&row(1), at(0), w).is_empty(), "below threshold");
        let fired = a.evaluate(&row(2), at(1), w);
        assert!(matches!(fired.as_slice(), [AlertChange::Firing { .. }]), "{fired:?}");
        assert!(a.evaluate(&row(3), at(5), w).is_empty(), "no duplicate before resend_every");
        assert_eq!(a.evaluate(&row(3), at(12), w).len(), 1, "re-sent after resend_every");
        // No new gaps for a whole window: resolved, once.
        let resolved = a.evaluate(&row(3), at(80), w);
        assert!(matches!(resolved.as_slice(), [AlertChange::Resolved { .. }]), "{resolved:?}");
        assert!(a.evaluate(&row(3), at(81), w).is_empty());
        let body = a.payload(&fired);
        assert_eq!(body[0]["labels"]["kind"], "dropped_outbound_context");
        assert_eq!(body[0]["annotations"]["example_trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
