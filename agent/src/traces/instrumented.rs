//! Services that instrument themselves (an OpenTelemetry SDK in the process, seen in its
//! environment, or seen creating trace context: outbound context that is not the inbound
//! one passed through) already emit their own SERVER/CLIENT spans; by default the agent
//! does not duplicate them, and counts what it suppressed. Their gaps are still judged.

use super::{context, judge::outbound_context, Call, Held, TracePipeline};
use crate::traces::context::TraceParent;

/// Processes remembered as instrumenting themselves.
const MAX_INSTRUMENTED: usize = 65536;

/// Why the agent believes a process instruments itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Instrumented {
    SdkEnvironment,
    CreatesContext,
}

/// Same trace and same parent: the inbound context passed through unchanged.
fn passed_through(out: &TraceParent, inbound: Option<&TraceParent>) -> bool {
    inbound.is_some_and(|i| i.trace_id == out.trace_id && i.parent_id == out.parent_id)
}

impl TracePipeline {
    pub(super) fn mark_instrumented(&mut self, pid: u32, why: Instrumented) {
        let start = self.processes.get(pid).map_or(0, |p| p.start_time);
        if self.instrumented.len() >= MAX_INSTRUMENTED && !self.instrumented.contains_key(&pid) {
            // Verdicts are cheap to learn again; forgetting them only risks duplicates.
            self.instrumented.clear();
        }
        self.instrumented.insert(pid, (why, start));
    }

    pub(super) fn is_instrumented(&mut self, pid: u32) -> bool {
        let info = self.processes.get(pid);
        if let Some(&(_why, start)) = self.instrumented.get(&pid) {
            // Unknown now (the process is gone, /proc unreadable): keep the verdict.
            if info.as_ref().is_none_or(|p| p.start_time == start) {
                return true;
            }
            // The pid belongs to another process now.
            self.instrumented.remove(&pid);
        }
        if info.is_some_and(|p| p.otel_sdk_env) {
            self.mark_instrumented(pid, Instrumented::SdkEnvironment);
            return true;
        }
        false
    }

    /// A process that sends trace context it did not receive creates spans itself.
    pub(super) fn learn_from_children(&mut self, pid: u32, children: &[Held], inbound: Option<&TraceParent>) {
        for child in children {
            let own = match &child.call {
                Call::Mq(op) => op
                    .messages
                    .iter()
                    .filter_map(|m| m.traceparent.as_deref())
                    .find_map(|v| context::parse_traceparent(v).ok()),
                Call::Http(x) => outbound_context(x),
                Call::Failed { .. } => None,
            };
            if own.is_some_and(|o| !passed_through(&o, inbound)) {
                self.mark_instrumented(pid, Instrumented::CreatesContext);
            }
        }
    }
}
