//! Which service a process is: its OpenTelemetry Resource.
//!
//! Ordered rules (first match wins) assign `service.name`, `zone`, `team`,
//! `service.version`, `deployment.environment.name`…; a rule matches on executable name,
//! command line, container/cgroup, or a local port the process serves. Without a rule the
//! service is named after the program: the script for interpreters (`python3 app.py` →
//! `app`), else the executable.
//!
//! In Kubernetes ([`crate::resource::k8s`]), the process's pod adds `k8s.*` attributes and those
//! configured from pod annotations/labels. Precedence, later wins: node attributes
//! (`host.name`, `resource.attributes`, `OTEL_RESOURCE_ATTRIBUTES`) < the pod's metadata
//! (annotation over label) < the first matching `services` rule < nothing else; the
//! program's name only when none of them set `service.name`.

use hashbrown::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::{
    model::span::{KeyValue, Resource},
    resource::process::ProcessInfo,
};

/// Conditions of one rule; every condition given must hold.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Executable file name, exactly (`nginx`, `python3.11`).
    pub exe: Option<String>,
    /// A substring of the command line (`uvicorn app:main`).
    pub cmdline_contains: Option<String>,
    /// A substring of the cgroup path (a pod or systemd unit).
    pub cgroup_contains: Option<String>,
    /// A port the process listens on.
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(rename = "match")]
    pub matches: Match,
    /// Resource attributes to set (`service.name`, `zone`, `team`…).
    pub attributes: std::collections::BTreeMap<String, String>,
}

pub struct ResourceResolver {
    rules: Vec<Rule>,
    /// Node-wide attributes (host.name, OTEL_RESOURCE_ATTRIBUTES).
    node: Vec<KeyValue>,
    cache: HashMap<(u32, u64), Arc<Resource>>,
    /// Pods of this node, when Kubernetes metadata is on.
    k8s: Option<Arc<crate::resource::k8s::Kubernetes>>,
    /// The pod index's generation the cache was built at: a pod change rebuilds it.
    k8s_generation: u64,
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k2=v2`, values percent-encoded).
pub fn parse_resource_attributes(s: &str) -> Vec<KeyValue> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let (k, v) = (k.trim(), v.trim());
            (!k.is_empty()).then(|| KeyValue::str(k.to_string(), percent_decode(v)))
        })
        .collect()
}

/// `%XY` → the byte; anything else as is. Over bytes: a `%` followed by a multi-byte
/// character must not slice the `str` inside that character (a process's environment is
/// anyone's to set).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Default service name: the script for interpreters, else the executable.
pub fn default_service_name(p: &ProcessInfo) -> String {
    if p.runtime.is_some() {
        let mut args = p.cmdline.split(' ').skip(1);
        while let Some(a) = args.next() {
            if a == "-m" {
                if let Some(m) = args.next() {
                    return m.to_string();
                }
            }
            if a.starts_with('-') {
                continue;
            }
            let file = a.rsplit('/').next().unwrap_or(a);
            let stem = file.split('.').next().unwrap_or(file);
            if !stem.is_empty() {
                return stem.to_string();
            }
        }
    }
    if p.exe_name.is_empty() {
        "unknown_service".into()
    } else {
        p.exe_name.clone()
    }
}

impl ResourceResolver {
    pub fn new(rules: Vec<Rule>, node: Vec<KeyValue>) -> Self {
        Self { rules, node, cache: HashMap::new(), k8s: None, k8s_generation: 0 }
    }

    /// Decorates resources with the metadata of the process's pod.
    pub fn with_kubernetes(mut self, k8s: Option<Arc<crate::resource::k8s::Kubernetes>>) -> Self {
        self.k8s = k8s;
        self
    }

    /// Node attributes from the environment: host.name and OTEL_RESOURCE_ATTRIBUTES.
    pub fn node_attributes_from_env() -> Vec<KeyValue> {
        let mut node = Vec::new();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        node.push(KeyValue::str("host.name", host.trim().to_string()));
        if let Ok(v) = std::env::var("OTEL_RESOURCE_ATTRIBUTES") {
            node.extend(parse_resource_attributes(&v));
        }
        node
    }

    /// The `service.name` a rule matching only on `port` gives: how a peer that is not on
    /// this node is named by its address (service-graph virtual nodes).
    pub fn service_for_port(&self, port: u16) -> Option<&str> {
        self.rules.iter().find_map(|r| {
            let m = &r.matches;
            let only_port = m.port == Some(port) && m.exe.is_none() && m.cmdline_contains.is_none();
            (only_port && m.cgroup_contains.is_none())
                .then(|| r.attributes.get("service.name"))
                .flatten()
                .map(String::as_str)
        })
    }

    fn rule_matches(m: &Match, p: &ProcessInfo) -> bool {
        m.exe.as_ref().is_none_or(|e| *e == p.exe_name)
            && m.cmdline_contains.as_ref().is_none_or(|c| p.cmdline.contains(c.as_str()))
            && m.cgroup_contains.as_ref().is_none_or(|c| p.cgroup.contains(c.as_str()))
            && m.port.is_none_or(|port| crate::resource::procnet::listening_ports(p.pid).contains(&port))
    }

    /// Drops what is cached about `pid` (it exec'd another program: same pid and start
    /// time, another identity). Scans the cache: for rare events only.
    pub fn forget(&mut self, pid: u32) {
        self.cache.retain(|&(p, _), _| p != pid);
    }

    /// Whether a `services` rule names process `p` (app logs select only such processes).
    pub fn named_by_rule(&self, p: &ProcessInfo) -> bool {
        self.rules.iter().any(|r| Self::rule_matches(&r.matches, p))
    }

    pub fn resolve(&mut self, pid: u32, info: Option<&ProcessInfo>) -> Arc<Resource> {
        let key = (pid, info.map_or(0, |i| i.start_time));
        if let Some(k) = &self.k8s {
            let g = k.generation();
            if g != self.k8s_generation {
                self.cache.clear();
                self.k8s_generation = g;
            }
        }
        if let Some(r) = self.cache.get(&key) {
            return r.clone();
        }
        let mut attrs: Vec<KeyValue> = self.node.clone();
        let mut set = |k: &str, v: String| {
            attrs.retain(|a| a.key != k);
            attrs.push(KeyValue::str(k.to_string(), v));
        };
        set("telemetry.distro.name", "hoptrace".into());
        set("telemetry.distro.version", env!("CARGO_PKG_VERSION").into());
        let mut service = None;
        if let Some(p) = info {
            set("process.executable.name", p.exe_name.clone());
            if let Some(rt) = p.runtime {
                set("process.runtime.name", rt.into());
            }
            if let Some(c) = &p.container_id {
                set("container.id", c.clone());
            }
            for (k, v) in self.k8s.as_ref().and_then(|k| k.lookup_process(p)).unwrap_or_default() {
                if k == "service.name" {
                    service = Some(v.clone());
                }
                set(&k, v);
            }
            if let Some(rule) = self.rules.iter().find(|r| Self::rule_matches(&r.matches, p)) {
                for (k, v) in &rule.attributes {
                    if k == "service.name" {
                        service = Some(v.clone());
                    }
                    set(k, v.clone());
                }
            }
            if service.is_none() {
                set("service.name", default_service_name(p));
            }
        } else if service.is_none() {
            set("service.name", "unknown_service".into());
        }
        attrs.push(KeyValue::int("process.pid", pid as i64));
        let r = Arc::new(Resource { attributes: attrs });
        if self.cache.len() > 65536 {
            self.cache.clear();
        }
        self.cache.insert(key, r.clone());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(exe: &str, cmdline: &str) -> ProcessInfo {
        ProcessInfo {
            pid: 42,
            exe_name: exe.into(),
            cmdline: cmdline.into(),
            runtime: crate::resource::process::runtime_of(exe),
            start_time: 1,
            ..Default::default()
        }
    }

    fn get<'a>(r: &'a Resource, k: &str) -> Option<&'a crate::model::span::AnyValue> {
        r.attributes.iter().find(|a| a.key == k).map(|a| &a.value)
    }

    #[test]
    fn rules_first_match_wins_and_defaults_name_the_program() {
        let rules = vec![Rule {
            matches: Match { exe: Some("nginx".into()), ..Default::default() },
            attributes: [("service.name".into(), "gateway".into()), ("zone".into(), "Z1".into())].into(),
        }];
        let mut r =
            ResourceResolver::new(rules, parse_resource_attributes("deployment.environment.name=prod,team=a%20b"));
        let gw = r.resolve(1, Some(&proc("nginx", "nginx: worker process")));
        assert_eq!(get(&gw, "service.name"), Some(&crate::model::span::AnyValue::Str("gateway".into())));
        assert_eq!(get(&gw, "zone"), Some(&crate::model::span::AnyValue::Str("Z1".into())));
        assert_eq!(get(&gw, "team"), Some(&crate::model::span::AnyValue::Str("a b".into())));
        let py = r.resolve(2, Some(&proc("python3.11", "python3 -u /srv/app.py --port 1")));
        assert_eq!(get(&py, "service.name"), Some(&crate::model::span::AnyValue::Str("app".into())));
        assert_eq!(get(&py, "process.runtime.name"), Some(&crate::model::span::AnyValue::Str("python".into())));
        let m = r.resolve(3, Some(&proc("python3", "python3 -m uvicorn main:app")));
        assert_eq!(get(&m, "service.name"), Some(&crate::model::span::AnyValue::Str("uvicorn".into())));
    }

    #[test]
    fn a_process_that_execs_is_named_again_once_forgotten() {
        let rules = vec![Rule {
            matches: Match { exe: Some("nginx".into()), ..Default::default() },
            attributes: [("service.name".into(), "gateway".into())].into(),
        }];
        let mut r = ResourceResolver::new(rules, Vec::new());
        let shell = proc("sh", "sh -c exec nginx");
        assert!(!r.named_by_rule(&shell));
        let before = r.resolve(42, Some(&shell));
        assert_eq!(get(&before, "service.name"), Some(&crate::model::span::AnyValue::Str("sh".into())));
        // Same pid and start time after exec: the cache answers until told to forget.
        let nginx = proc("nginx", "nginx: worker process");
        assert!(r.named_by_rule(&nginx));
        assert_eq!(r.resolve(42, Some(&nginx)), before);
        r.forget(42);
        let after = r.resolve(42, Some(&nginx));
        assert_eq!(get(&after, "service.name"), Some(&crate::model::span::AnyValue::Str("gateway".into())));
    }

    #[test]
    fn percent_before_non_ascii_is_kept_not_a_panic() {
        // `&s[i + 1..i + 3]` sliced inside the `é` and panicked.
        let attrs = parse_resource_attributes("a=%é,b=x%C3%A9%,c=%2,d=%zz,e=%41%");
        let v: Vec<(&str, String)> = attrs
            .iter()
            .map(|kv| match &kv.value {
                crate::model::span::AnyValue::Str(s) => (kv.key.as_str(), s.to_string()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            v,
            [("a", "%é".into()), ("b", "xé%".into()), ("c", "%2".into()), ("d", "%zz".into()), ("e", "A%".into())]
        );
    }
}
