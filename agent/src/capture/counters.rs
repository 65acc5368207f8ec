//! Capture-path counters in one place, shaped as metric samples (name, labels, value) so
//! the metrics exporter can publish them as they are.

use hoptrace_common::{DropReason, DROP_REASONS};
use serde_json::{json, Map, Value};

use crate::{capture::conntrack::TableStats, model::sample::Sample};

#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub records_total: u64,
    pub open_records: u64,
    pub data_records: u64,
    pub close_records: u64,
    pub connect_failed_records: u64,
    pub decode_errors: u64,
    pub bytes_captured: u64,
    /// Bytes the kernel saw move but did not copy (capture cap, sendfile).
    pub bytes_not_captured: u64,
    /// Bytes whose records never arrived (holes in a stream).
    pub bytes_lost: u64,
    /// Exec records (TLS library discovery).
    pub exec_records: u64,
    /// Exit records (a process's thread-group leader exited).
    pub exit_records: u64,
    /// App log records (stdout/stderr writes of `--app-logs` processes).
    pub app_log_records: u64,
    /// Python Context records (copies and writes of selected Python processes).
    pub py_context_records: u64,
    /// Once-a-second ticks of the capture loop (eviction, expiry, publishing).
    pub loop_ticks: u64,
    /// Drains of the ring that stopped at their time budget with records left.
    pub drains_bounded: u64,
    /// OpenSSL probes: libraries attached, processes whose TLS is not visible.
    pub tls: crate::capture::tls::TlsStats,
    /// The Python Context probe: processes attached, left out, failures.
    pub python: crate::capture::python::PythonStats,
}

impl Counters {
    pub fn samples(&self, table: &TableStats, tracked: usize, kernel_drops: &[u64; DROP_REASONS]) -> Vec<Sample> {
        let s = |name, value| Sample { name, labels: vec![], value };
        let mut out = vec![
            s("hoptrace_capture_records_total", self.records_total),
            s("hoptrace_capture_decode_errors_total", self.decode_errors),
            s("hoptrace_capture_loop_ticks_total", self.loop_ticks),
            s("hoptrace_capture_drains_bounded_total", self.drains_bounded),
            s("hoptrace_capture_bytes_captured_total", self.bytes_captured),
            s("hoptrace_capture_bytes_not_captured_total", self.bytes_not_captured),
            s("hoptrace_capture_bytes_lost_total", self.bytes_lost),
            s("hoptrace_connections_tracked", tracked as u64),
            s("hoptrace_connections_opened_total", table.conns_opened),
            s("hoptrace_connections_closed_total", table.conns_closed),
            s("hoptrace_connections_evicted_idle_total", table.conns_evicted_idle),
            s("hoptrace_connections_rebuilt_from_proc_total", table.conns_rebuilt_from_proc),
        ];
        for (kind, v) in [
            ("open", self.open_records),
            ("data", self.data_records),
            ("close", self.close_records),
            ("connect_failed", self.connect_failed_records),
            ("app_log", self.app_log_records),
            ("py_context", self.py_context_records),
        ] {
            out.push(Sample { name: "hoptrace_capture_records_by_kind_total", labels: vec![("kind", kind)], value: v });
        }
        for reason in DropReason::ALL {
            out.push(Sample {
                name: "hoptrace_kernel_drops_total",
                labels: vec![("reason", reason.label())],
                value: kernel_drops[reason as usize],
            });
        }
        out.push(Sample {
            name: "hoptrace_userspace_drops_total",
            labels: vec![("reason", "conn_table_full")],
            value: table.conns_rejected_table_full,
        });
        out.push(Sample {
            name: "hoptrace_userspace_drops_total",
            labels: vec![("reason", "unattributed_data")],
            value: table.data_unattributed_records,
        });
        out.push(s("hoptrace_python_context_processes_attached", self.python.processes_attached));
        out.push(s("hoptrace_python_context_processes_unsupported_total", self.python.processes_unsupported));
        out.push(s("hoptrace_python_context_attach_errors_total", self.python.attach_errors));
        out.push(s("hoptrace_tls_libraries_attached", self.tls.libraries_attached));
        out.push(s("hoptrace_tls_library_attach_errors_total", self.tls.library_attach_errors));
        out.push(s("hoptrace_tls_handshakes_unjudged_total", self.tls.unjudged_exited));
        for reason in crate::capture::tls::NotVisible::ALL {
            out.push(Sample {
                name: "hoptrace_tls_not_visible_processes_total",
                labels: vec![("reason", reason.label())],
                value: self.tls.not_visible.get(&reason).copied().unwrap_or(0),
            });
        }
        out
    }

    /// The `stats` line of `hoptrace capture`.
    pub fn to_json(&self, table: &TableStats, tracked: usize, kernel_drops: &[u64; DROP_REASONS]) -> Value {
        let mut drops = Map::new();
        for reason in DropReason::ALL {
            drops.insert(reason.label().into(), json!(kernel_drops[reason as usize]));
        }
        drops.insert("conn_table_full".into(), json!(table.conns_rejected_table_full));
        drops.insert("unattributed_data".into(), json!(table.data_unattributed_records));
        json!({
            "event": "stats",
            "events_total": self.records_total,
            "open_records": self.open_records,
            "data_records": self.data_records,
            "close_records": self.close_records,
            "connect_failed_records": self.connect_failed_records,
            "decode_errors": self.decode_errors,
            "loop_ticks": self.loop_ticks,
            "drains_bounded": self.drains_bounded,
            "bytes_captured": self.bytes_captured,
            "bytes_not_captured": self.bytes_not_captured,
            "bytes_lost": self.bytes_lost,
            "tls_libraries_attached": self.tls.libraries_attached,
            "tls_handshakes_unjudged": self.tls.unjudged_exited,
            "tls_not_visible": self.tls.not_visible.iter().map(|(r, n)| (r.label().to_string(), json!(n))).collect::<Map<String, Value>>(),
            "connections_tracked": tracked,
            "connections": table,
            "drops": drops,
        })
    }
}
