//! Routes: request targets templated (ids and PII become placeholders) and bounded per
//! service, so a scan of a million distinct paths cannot blow up memory, spans or metric
//! labels. The bound forgets: a route unused for [`ROUTE_IDLE_NS`] (ten minutes) gives its place to a new
//! one (least recently used first), so a service's routes after a deploy or a past scan
//! are not refused forever.

use hashbrown::HashMap;

use super::{http, TracePipeline};
use crate::model::span::Str;

/// The route every request past a service's route cap is reported under.
pub const ROUTE_OVERFLOW: &str = "/{overflow}";

/// Paths whose template is remembered at most; full, the cache starts over.
const ROUTE_CACHE_MAX: usize = 4096;

/// How long a route must go unused before a new one may take its place at the cap.
const ROUTE_IDLE_NS: u64 = 600_000_000_000;

/// One service's routes, each with when it was last used (coarse monotonic ns: per
/// request, a precise clock read would cost more than the lookup).
#[derive(Debug, Default)]
pub(super) struct RouteSet {
    last_used: HashMap<String, u64>,
    /// At the cap: no route can have been idle for [`ROUTE_IDLE`] before this (it is the
    /// least recent use plus the idle time), so no scan runs before it. A flood of new
    /// routes at the cap costs a comparison each, not a scan each.
    no_scan_before: Option<u64>,
}

impl RouteSet {
    /// Whether `route` may be reported as itself at `now`: known, or there is room, or the
    /// least recently used route has been idle for [`ROUTE_IDLE_NS`] (it is forgotten).
    pub(super) fn admit(&mut self, route: &str, max: usize, now: u64) -> bool {
        if let Some(t) = self.last_used.get_mut(route) {
            *t = now;
            return true;
        }
        if self.last_used.len() >= max {
            if self.no_scan_before.is_some_and(|t| now < t) {
                return false;
            }
            let Some((oldest, at)) = self.last_used.iter().min_by_key(|(_, t)| **t).map(|(r, t)| (r.clone(), *t))
            else {
                return false;
            };
            if now.saturating_sub(at) < ROUTE_IDLE_NS {
                self.no_scan_before = Some(at + ROUTE_IDLE_NS);
                return false;
            }
            self.last_used.remove(&oldest);
            self.no_scan_before = None;
        }
        self.last_used.insert(route.to_string(), now);
        true
    }
}

/// The route of a request whose path the agent could not decode (HTTP/2 joined
/// mid-connection).
pub const UNKNOWN_ROUTE: &str = "{unknown}";

impl TracePipeline {
    /// The templated route of a request target, bounded per service: past
    /// `max_routes_per_service` distinct routes in use, new ones share one overflow bucket.
    ///
    /// Returned shared (`Str`): a span carries the route twice (`http.route`, `url.path`)
    /// and in its name, all pointing at the cached text.
    pub(super) fn route(&mut self, service: &str, target: &[u8]) -> Str {
        // Only an HTTP/2 `:path` that could not be decoded is empty: said, not guessed.
        if target.is_empty() {
            return Str::from(UNKNOWN_ROUTE);
        }
        let path = target.split(|&b| b == b'?' || b == b'#').next().unwrap_or_default();
        let route = match self.route_cache.get(path) {
            Some(r) => r.clone(),
            None => {
                let r = Str::from(http::route_template(path, &self.redactor));
                if self.route_cache.len() >= ROUTE_CACHE_MAX {
                    self.route_cache.clear();
                }
                self.route_cache.insert(path.into(), r.clone());
                r
            }
        };
        let max = self.cfg.max_routes_per_service;
        let known = self.routes.entry_ref(service).or_default();
        if known.admit(&route, max, crate::util::clock::coarse_monotonic_ns()) {
            return route;
        }
        self.stats.routes_overflowed += 1;
        Str::from(ROUTE_OVERFLOW)
    }

    /// `"{method} {route}"`, the HTTP span name, shared from a bounded cache: building it
    /// per span was an allocation and a formatting pass per request.
    pub(super) fn span_name(&mut self, method: &Str, route: &Str) -> Str {
        if let Some(name) = self.span_names.get(&(method.clone(), route.clone())) {
            return name.clone();
        }
        if self.span_names.len() >= ROUTE_CACHE_MAX {
            self.span_names.clear();
        }
        let name = Str::from(format!("{method} {route}"));
        self.span_names.insert((method.clone(), route.clone()), name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_new_routes_overflow_until_the_least_recent_has_been_idle() {
        let mut s = RouteSet::default();
        let t0 = 1_000_000_000_000u64;
        let at = |secs: u64| t0 + secs * 1_000_000_000;
        assert!(s.admit("/a", 2, at(0)));
        assert!(s.admit("/b", 2, at(100)));
        // Full: a new route is refused while both are in use…
        assert!(!s.admit("/c", 2, at(200)));
        assert_eq!(s.no_scan_before, Some(at(600)));
        assert!(s.admit("/a", 2, at(300)), "known routes stay");
        assert!(!s.admit("/c", 2, at(650)), "/a was used at 300: the next scan finds /b, idle 550 s");
        // …and admitted in place of the least recently used once it has been idle long enough.
        assert!(s.admit("/c", 2, at(700)));
        assert!(!s.last_used.contains_key("/b"));
        assert!(s.admit("/a", 2, at(701)) && s.admit("/c", 2, at(702)));
        assert!(!s.admit("/b", 2, at(703)), "/b was forgotten: new again, and the set is full");
    }
}
