//! Routes: request targets templated (ids and PII become placeholders) and bounded per
//! service, so a scan of a million distinct paths cannot blow up memory, spans or metric
//! labels.

use super::{http, TracePipeline};
use crate::model::span::Str;

/// The route every request past a service's route cap is reported under.
pub const ROUTE_OVERFLOW: &str = "/{overflow}";

/// Paths whose template is remembered at most; full, the cache starts over.
const ROUTE_CACHE_MAX: usize = 4096;

impl TracePipeline {
    /// The templated route of a request target, bounded per service: past
    /// `max_routes_per_service` distinct routes, new ones share one overflow bucket.
    ///
    /// Returned shared (`Str`): a span carries the route twice (`http.route`, `url.path`)
    /// and in its name, all pointing at the cached text.
    pub(super) fn route(&mut self, service: &str, target: &[u8]) -> Str {
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
