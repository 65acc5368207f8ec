//! [`LogRecord`]s → OTLP protobuf bytes (`ExportLogsServiceRequest`), written directly, as
//! [`super::encode`] does for spans: the OTLP/HTTP path needs only the bytes, and building
//! the generated message first costs an allocation per string and attribute. Grouping is
//! [`super::logs::to_logs_request`]'s; the tests decode the output with the generated types
//! and compare. Field numbers are those of opentelemetry-proto's `logs.proto`.

use std::sync::Arc;

use prost::encoding::{key_len, WireType};

use super::encode::{
    attrs, attrs_len, bytes, encode_key, fixed64, fixed64_len, header, msg_len, scope_len, str_len, string, varint,
    varint_len,
};
use super::otlp::{SCOPE_NAME, SCOPE_VERSION};
use crate::model::log::LogRecord;
use crate::model::span::Resource;

/// The serialized `ExportLogsServiceRequest` of `records`.
pub fn encode_logs_request(records: &[LogRecord]) -> Vec<u8> {
    let mut groups: Vec<(&Arc<Resource>, Vec<&LogRecord>)> = Vec::new();
    for r in records {
        match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, &r.resource) || ***g == *r.resource) {
            Some((_, g)) => g.push(r),
            None => groups.push((&r.resource, vec![r])),
        }
    }
    let sizes: Vec<Vec<usize>> = groups.iter().map(|(_, g)| g.iter().map(|r| record_len(r)).collect()).collect();
    let lens: Vec<(usize, usize, usize)> = groups
        .iter()
        .zip(&sizes)
        .map(|((res, _), sz)| {
            let resource = attrs_len(1, &res.attributes);
            let scope_logs = msg_len(1, scope_len()) + sz.iter().map(|&n| msg_len(2, n)).sum::<usize>();
            (resource, scope_logs, msg_len(1, resource) + msg_len(2, scope_logs))
        })
        .collect();
    let total: usize = lens.iter().map(|&(_, _, n)| msg_len(1, n)).sum();
    let mut buf = Vec::with_capacity(total);
    for (((res, recs), sz), &(r_len, sl_len, rl_len)) in groups.iter().zip(&sizes).zip(&lens) {
        header(&mut buf, 1, rl_len);
        header(&mut buf, 1, r_len);
        attrs(&mut buf, 1, &res.attributes);
        header(&mut buf, 2, sl_len);
        header(&mut buf, 1, scope_len());
        string(&mut buf, 1, SCOPE_NAME);
        string(&mut buf, 2, SCOPE_VERSION);
        for (r, &n) in recs.iter().zip(sz) {
            header(&mut buf, 2, n);
            write_record(&mut buf, r);
        }
    }
    debug_assert_eq!(buf.len(), total);
    buf
}

fn traced(r: &LogRecord) -> bool {
    r.trace_id != [0; 16]
}

/// The body: an `AnyValue` holding the string, absent when empty.
fn body_len(r: &LogRecord) -> usize {
    if r.body.is_empty() {
        0
    } else {
        msg_len(5, msg_len(1, r.body.len()))
    }
}

fn record_len(r: &LogRecord) -> usize {
    let t = traced(r);
    fixed64_len(1, r.time_unix_ns)
        + varint_len(2, r.severity as u64)
        + str_len(3, r.severity_text.as_bytes())
        + body_len(r)
        + attrs_len(6, &r.attributes)
        + if t && r.flags != 0 { key_len(8) + 4 } else { 0 }
        + if t { msg_len(9, 16) + msg_len(10, 8) } else { 0 }
        + fixed64_len(11, r.observed_unix_ns)
        + str_len(12, r.event_name.as_bytes())
}

fn write_record(buf: &mut Vec<u8>, r: &LogRecord) {
    let t = traced(r);
    fixed64(buf, 1, r.time_unix_ns);
    varint(buf, 2, r.severity as u64);
    string(buf, 3, &r.severity_text);
    if !r.body.is_empty() {
        header(buf, 5, msg_len(1, r.body.len()));
        string(buf, 1, &r.body);
    }
    attrs(buf, 6, &r.attributes);
    if t && r.flags != 0 {
        encode_key(8, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&u32::from(r.flags).to_le_bytes());
    }
    if t {
        bytes(buf, 9, &r.trace_id);
        bytes(buf, 10, &r.span_id);
    }
    fixed64(buf, 11, r.observed_unix_ns);
    string(buf, 12, &r.event_name);
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use prost::Message;

    use super::*;
    use crate::export::logs::to_logs_request;
    use crate::export::otlp::tests::resource;
    use crate::model::log::Severity;
    use crate::model::span::{AnyValue, KeyValue};

    fn record(res: &Arc<Resource>, n: u8) -> LogRecord {
        LogRecord {
            resource: res.clone(),
            time_unix_ns: 1_700_000_000_000_000_000 + u64::from(n),
            observed_unix_ns: 1_700_000_000_000_000_500,
            severity: Severity::Error,
            severity_text: "ERROR".into(),
            body: format!("line {n} {}", "x".repeat(200)).into(),
            attributes: vec![
                KeyValue::int("seq", i64::from(n)),
                KeyValue::int("neg", -5),
                KeyValue { key: "d".into(), value: AnyValue::Double(0.5) },
                KeyValue::bool("b", false),
                KeyValue::str("s", ""),
            ],
            event_name: "http.server.access".into(),
            trace_id: [n; 16],
            span_id: [n; 8],
            flags: 1,
        }
    }

    #[test]
    fn same_message_as_the_generated_types() {
        let (a, b) = (resource("a"), resource("b"));
        let mut untraced = record(&a, 0);
        untraced.body = "".into();
        untraced.severity = Severity::Unspecified;
        untraced.severity_text = "".into();
        untraced.event_name = "".into();
        untraced.time_unix_ns = 0;
        let mut no_flags = record(&b, 9);
        no_flags.flags = 0;
        let records = vec![record(&a, 1), record(&b, 2), untraced, no_flags, record(&a, 3)];
        let bytes = encode_logs_request(&records);
        let decoded = ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, to_logs_request(&records));
        assert_eq!(bytes, to_logs_request(&records).encode_to_vec());
        assert!(encode_logs_request(&[]).is_empty());
    }
}
