//! How well each service's outbound calls are linked to the requests they serve: CLIENT
//! and PRODUCER spans counted per service by outcome, for
//! `hoptrace_parent_links_total{service_name, span_kind, outcome}` on `/metrics` and the
//! stop statistics.
//!
//! * `linked` — the span is the child of the inbound request its thread was serving;
//! * `unresolved` — several inbound requests were in flight on the thread (an event loop),
//!   or the request never completed: a root span marked `hoptrace.parent.unresolved`;
//! * `root` — the thread served nothing when the call started: a root span (a client, a
//!   batch job, a timer — or a service whose concurrency the agent cannot see).
//!
//! Bounded like the RED metrics: at most [`MAX_SERVICES`] services; later ones are
//! counted in one overflow row (`otel_metric_overflow="true"` on `/metrics`).

use hashbrown::HashMap;

use serde::Serialize;

use super::TracePipeline;
use crate::model::span::{SpanKind, SpanRecord};

/// Services with their own row; the rest share the overflow row.
pub const MAX_SERVICES: usize = 1000;

/// What became of one outbound span's parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkOutcome {
    Linked,
    Unresolved,
    Root,
}

impl LinkOutcome {
    pub const ALL: [LinkOutcome; 3] = [LinkOutcome::Linked, LinkOutcome::Unresolved, LinkOutcome::Root];

    pub fn of(linked: bool, unresolved: Option<&str>) -> LinkOutcome {
        match (linked, unresolved) {
            (true, _) => LinkOutcome::Linked,
            (false, Some(_)) => LinkOutcome::Unresolved,
            (false, None) => LinkOutcome::Root,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LinkOutcome::Linked => "linked",
            LinkOutcome::Unresolved => "unresolved",
            LinkOutcome::Root => "root",
        }
    }
}

/// Spans of one kind by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkCounts {
    pub linked: u64,
    pub unresolved: u64,
    pub root: u64,
}

impl LinkCounts {
    pub fn get(&self, o: LinkOutcome) -> u64 {
        match o {
            LinkOutcome::Linked => self.linked,
            LinkOutcome::Unresolved => self.unresolved,
            LinkOutcome::Root => self.root,
        }
    }

    fn add(&mut self, o: LinkOutcome) {
        match o {
            LinkOutcome::Linked => self.linked += 1,
            LinkOutcome::Unresolved => self.unresolved += 1,
            LinkOutcome::Root => self.root += 1,
        }
    }
}

/// One service's CLIENT and PRODUCER spans by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceLinks {
    pub client: LinkCounts,
    pub producer: LinkCounts,
}

/// Per service, bounded.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ParentLinks {
    pub services: HashMap<String, ServiceLinks>,
    /// Services beyond [`MAX_SERVICES`], together.
    pub overflow: ServiceLinks,
}

impl ParentLinks {
    /// Counts a span of `service` (CLIENT or PRODUCER; other kinds are not outbound calls).
    pub fn record(&mut self, service: &str, kind: SpanKind, outcome: LinkOutcome) {
        if !self.services.contains_key(service) && self.services.len() < MAX_SERVICES {
            self.services.insert(service.to_string(), ServiceLinks::default());
        }
        let row = self.services.get_mut(service).unwrap_or(&mut self.overflow);
        match kind {
            SpanKind::Client => row.client.add(outcome),
            SpanKind::Producer => row.producer.add(outcome),
            _ => {}
        }
    }
}

impl TracePipeline {
    /// Marks an outbound span's parent link on the span (unresolved, gap) and counts it.
    pub(super) fn mark_parent_link(
        &mut self,
        span: &mut SpanRecord,
        linked: bool,
        unresolved: Option<&'static str>,
        gap: Option<crate::gaps::GapKind>,
    ) {
        super::judge::mark_parent_link(span, unresolved, gap);
        let service = super::finish::resource_str(&span.resource, "service.name");
        self.stats.parent_links.record(service, span.kind, LinkOutcome::of(linked, unresolved));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_service_and_kind_bounded() {
        let mut p = ParentLinks::default();
        p.record("front", SpanKind::Client, LinkOutcome::Linked);
        p.record("front", SpanKind::Client, LinkOutcome::Root);
        p.record("front", SpanKind::Producer, LinkOutcome::Unresolved);
        p.record("front", SpanKind::Server, LinkOutcome::Root);
        let front = p.services["front"];
        assert_eq!(front.client, LinkCounts { linked: 1, unresolved: 0, root: 1 });
        assert_eq!(front.producer, LinkCounts { linked: 0, unresolved: 1, root: 0 });
        for i in 0..MAX_SERVICES + 5 {
            p.record(&format!("s{i}"), SpanKind::Client, LinkOutcome::Root);
        }
        assert_eq!(p.services.len(), MAX_SERVICES);
        assert_eq!(p.overflow.client.root, 6, "front plus 999 fit; six did not");
    }
}
