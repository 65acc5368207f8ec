//! Routes: request targets templated (ids and PII become placeholders) and bounded per
//! service, so a scan of a million distinct paths cannot blow up memory, spans or metric
//! labels.

use super::{http, TracePipeline};

/// The route every request past a service's route cap is reported under.
pub const ROUTE_OVERFLOW: &str = "/{overflow}";

/// Paths whose template is remembered at most; full, the cache starts over.
const ROUTE_CACHE_MAX: usize = 4096;

impl TracePipeline {
    /// The templated route of a request target, bounded per service: past
    /// `max_routes_per_service` distinct routes, new ones share one overflow bucket.
    pub(super) fn route(&mut self, service: &str, target: &[u8]) -> String {
        let path = target.split(|&b| b == b'?' || b == b'#').next().unwrap_or_default();
        let route = match self.route_cache.get(path) {
            Some(r) => r.clone(),
            None => {
                let r = http::route_template(path, &self.redactor);
                if self.route_cache.len() >= ROUTE_CACHE_MAX {
                    self.route_cache.clear();
                }
                self.route_cache.insert(path.into(), r.clone());
                r
            }
        };
        let max = self.cfg.max_routes_per_service;
        if !self.routes.contains_key(service) {
            self.routes.insert(service.to_string(), Default::default());
        }
        let known = self.routes.get_mut(service).expect("inserted above");
        if known.contains(&route) {
            return route;
        }
        if known.len() < max {
            known.insert(route.clone());
            return route;
        }
        self.stats.routes_overflowed += 1;
        ROUTE_OVERFLOW.to_string()
    }
}
