//! [`SpanRecord`]s → OTLP protobuf bytes, written directly.
//!
//! [`super::otlp::to_request`] builds the generated `ExportTraceServiceRequest` first,
//! which copies every string and attribute of every span into fresh allocations (≈20 per
//! span) only to serialize and free them. The OTLP/HTTP path needs nothing but the bytes,
//! so this module writes the same message straight from the records: one size pass, one
//! write pass into a buffer of the exact size. Grouping (one `ResourceSpans` per distinct
//! resource content, one `ScopeSpans` naming this agent) is the same as `to_request`'s,
//! and the tests decode the output with the generated types and compare.
//!
//! Field numbers are those of opentelemetry-proto's `trace.proto`, `common.proto` and
//! `resource.proto`; proto3 defaults (empty strings, zeros) are omitted like prost does.

use std::sync::Arc;

use prost::encoding::{encoded_len_varint, key_len, WireType};

use super::otlp::{SCOPE_NAME, SCOPE_VERSION};
use crate::model::span::{AnyValue, KeyValue, Resource, SpanEvent, SpanLink, SpanRecord};

/// The serialized `ExportTraceServiceRequest` of `spans`.
pub fn encode_request(spans: &[SpanRecord]) -> Vec<u8> {
    // Few distinct resources per batch: a linear scan, as in `to_request`.
    let mut groups: Vec<(&Arc<Resource>, Vec<&SpanRecord>)> = Vec::new();
    for span in spans {
        match groups.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &span.resource) || ***r == *span.resource) {
            Some((_, g)) => g.push(span),
            None => groups.push((&span.resource, vec![span])),
        }
    }
    // Sizes first (per span, reused by the write pass).
    let sizes: Vec<Vec<usize>> = groups.iter().map(|(_, g)| g.iter().map(|s| span_len(s)).collect()).collect();
    let rs_lens: Vec<(usize, usize, usize)> = groups
        .iter()
        .zip(&sizes)
        .map(|((r, _), sz)| {
            let resource = attrs_len(1, &r.attributes);
            let scope = scope_len();
            let scope_spans = msg_len(1, scope) + sz.iter().map(|&n| msg_len(2, n)).sum::<usize>();
            (resource, scope_spans, msg_len(1, resource) + msg_len(2, scope_spans))
        })
        .collect();
    let total: usize = rs_lens.iter().map(|&(_, _, n)| msg_len(1, n)).sum();
    let mut buf = Vec::with_capacity(total);
    for (((resource, spans), sz), &(r_len, ss_len, rs_len)) in groups.iter().zip(&sizes).zip(&rs_lens) {
        header(&mut buf, 1, rs_len);
        header(&mut buf, 1, r_len);
        attrs(&mut buf, 1, &resource.attributes);
        header(&mut buf, 2, ss_len);
        header(&mut buf, 1, scope_len());
        string(&mut buf, 1, SCOPE_NAME);
        string(&mut buf, 2, SCOPE_VERSION);
        for (span, &n) in spans.iter().zip(sz) {
            header(&mut buf, 2, n);
            write_span(&mut buf, span);
        }
    }
    debug_assert_eq!(buf.len(), total);
    buf
}

// ---- sizes ----

#[inline]
pub(super) fn msg_len(tag: u32, inner: usize) -> usize {
    key_len(tag) + encoded_len_varint(inner as u64) + inner
}

#[inline]
pub(super) fn str_len(tag: u32, s: &[u8]) -> usize {
    if s.is_empty() {
        0
    } else {
        msg_len(tag, s.len())
    }
}

pub(super) fn scope_len() -> usize {
    str_len(1, SCOPE_NAME.as_bytes()) + str_len(2, SCOPE_VERSION.as_bytes())
}

#[inline]
pub(super) fn any_len(v: &AnyValue) -> usize {
    match v {
        // A oneof member is written even when it holds its type's default.
        AnyValue::Str(s) => msg_len(1, s.len()),
        AnyValue::Bool(_) => key_len(2) + 1,
        AnyValue::Int(i) => key_len(3) + encoded_len_varint(*i as u64),
        AnyValue::Double(_) => key_len(4) + 8,
    }
}

#[inline]
fn kv_len(kv: &KeyValue) -> usize {
    str_len(1, kv.key.as_bytes()) + msg_len(2, any_len(&kv.value))
}

pub(super) fn attrs_len(tag: u32, kvs: &[KeyValue]) -> usize {
    kvs.iter().map(|kv| msg_len(tag, kv_len(kv))).sum()
}

fn event_len(e: &SpanEvent) -> usize {
    fixed64_len(1, e.time_unix_ns) + str_len(2, e.name.as_bytes()) + attrs_len(3, &e.attributes)
}

fn link_len(l: &SpanLink) -> usize {
    msg_len(1, 16) + msg_len(2, 8) + str_len(3, l.trace_state.as_bytes()) + attrs_len(4, &l.attributes)
}

#[inline]
pub(super) fn fixed64_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + 8
    }
}

#[inline]
pub(super) fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn status_len(s: &SpanRecord) -> usize {
    str_len(2, s.status.message.as_bytes()) + varint_len(3, s.status.code as u64)
}

fn span_len(s: &SpanRecord) -> usize {
    msg_len(1, 16)
        + msg_len(2, 8)
        + str_len(3, s.trace_state.as_bytes())
        + if s.is_root() { 0 } else { msg_len(4, 8) }
        + if s.flags == 0 { 0 } else { key_len(16) + 4 }
        + str_len(5, s.name.as_bytes())
        + varint_len(6, s.kind as u64)
        + fixed64_len(7, s.start_unix_ns)
        + fixed64_len(8, s.end_unix_ns)
        + attrs_len(9, &s.attributes)
        + s.events.iter().map(|e| msg_len(11, event_len(e))).sum::<usize>()
        + s.links.iter().map(|l| msg_len(13, link_len(l))).sum::<usize>()
        + msg_len(15, status_len(s))
}

// ---- writing ----

/// A varint. Most are keys and short lengths (one byte): that case is a single push,
/// where prost's generic `encode_varint` loops through its `BufMut`.
#[inline(always)]
pub(super) fn encode_varint(mut v: u64, buf: &mut Vec<u8>) {
    if v < 0x80 {
        buf.push(v as u8);
        return;
    }
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline(always)]
pub(super) fn encode_key(tag: u32, wire_type: WireType, buf: &mut Vec<u8>) {
    encode_varint(u64::from(tag << 3 | wire_type as u32), buf);
}

#[inline]
pub(super) fn header(buf: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

#[inline]
pub(super) fn bytes(buf: &mut Vec<u8>, tag: u32, b: &[u8]) {
    if !b.is_empty() {
        header(buf, tag, b.len());
        buf.extend_from_slice(b);
    }
}

#[inline]
pub(super) fn string(buf: &mut Vec<u8>, tag: u32, s: &str) {
    bytes(buf, tag, s.as_bytes());
}

#[inline]
pub(super) fn fixed64(buf: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

#[inline]
pub(super) fn varint(buf: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

pub(super) fn attrs(buf: &mut Vec<u8>, tag: u32, kvs: &[KeyValue]) {
    for kv in kvs {
        attr(buf, tag, kv);
    }
}

/// One `KeyValue` message. Attributes are most of a span's and an access record's bytes,
/// and writing them byte by byte through `Vec::push` (a capacity check per byte) cost more
/// than the bytes themselves (callgrind, `pipeline_ir`): the message is written with plain
/// stores into capacity reserved once for it.
#[inline]
fn attr(buf: &mut Vec<u8>, tag: u32, kv: &KeyValue) {
    let key = kv.key.as_bytes();
    let value_len = any_len(&kv.value);
    let inner = str_len(1, key) + msg_len(2, value_len);
    let total = msg_len(tag, inner);
    buf.reserve(total);
    let len = buf.len();
    let mut out = Out { slots: &mut buf.spare_capacity_mut()[..total], n: 0 };
    out.header(tag, inner);
    if !key.is_empty() {
        out.header(1, key.len());
        out.slice(key);
    }
    out.header(2, value_len);
    match &kv.value {
        AnyValue::Str(s) => {
            out.header(1, s.len());
            out.slice(s.as_bytes());
        }
        AnyValue::Bool(b) => {
            out.key(2, WireType::Varint);
            out.byte(u8::from(*b));
        }
        AnyValue::Int(i) => {
            out.key(3, WireType::Varint);
            out.varint(*i as u64);
        }
        AnyValue::Double(d) => {
            out.key(4, WireType::SixtyFourBit);
            out.slice(&d.to_le_bytes());
        }
    }
    debug_assert_eq!(out.n, total);
    let written = out.n;
    // SAFETY: `Out` writes its slots in order from the first and counts them, so the
    // `written` bytes after `len` are initialized; slicing `slots` to `total` (within the
    // capacity reserved above) bounds `written` by the capacity.
    unsafe { buf.set_len(len + written) };
}

/// A cursor over reserved, not yet initialized bytes of a buffer (see [`attr`]).
struct Out<'a> {
    slots: &'a mut [std::mem::MaybeUninit<u8>],
    n: usize,
}

impl Out<'_> {
    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.slots[self.n].write(b);
        self.n += 1;
    }

    #[inline(always)]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte((v as u8) | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    #[inline(always)]
    fn key(&mut self, tag: u32, wire_type: WireType) {
        self.varint(u64::from(tag << 3 | wire_type as u32));
    }

    #[inline(always)]
    fn header(&mut self, tag: u32, len: usize) {
        self.key(tag, WireType::LengthDelimited);
        self.varint(len as u64);
    }

    #[inline(always)]
    fn slice(&mut self, b: &[u8]) {
        self.slots[self.n..self.n + b.len()].write_copy_of_slice(b);
        self.n += b.len();
    }
}

fn write_span(buf: &mut Vec<u8>, s: &SpanRecord) {
    bytes(buf, 1, &s.trace_id);
    bytes(buf, 2, &s.span_id);
    string(buf, 3, &s.trace_state);
    // OTLP wants an empty parent id for a root span, not eight zero bytes.
    if !s.is_root() {
        bytes(buf, 4, &s.parent_span_id);
    }
    if s.flags != 0 {
        encode_key(16, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&u32::from(s.flags).to_le_bytes());
    }
    string(buf, 5, &s.name);
    varint(buf, 6, s.kind as u64);
    fixed64(buf, 7, s.start_unix_ns);
    fixed64(buf, 8, s.end_unix_ns);
    attrs(buf, 9, &s.attributes);
    for e in &s.events {
        header(buf, 11, event_len(e));
        fixed64(buf, 1, e.time_unix_ns);
        string(buf, 2, &e.name);
        attrs(buf, 3, &e.attributes);
    }
    for l in &s.links {
        header(buf, 13, link_len(l));
        bytes(buf, 1, &l.trace_id);
        bytes(buf, 2, &l.span_id);
        string(buf, 3, &l.trace_state);
        attrs(buf, 4, &l.attributes);
    }
    header(buf, 15, status_len(s));
    string(buf, 2, &s.status.message);
    varint(buf, 3, s.status.code as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::otlp::tests::{resource, span};
    use crate::export::otlp::to_request;
    use crate::model::span::{SpanKind, Status, StatusCode};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    fn rich(r: &Arc<Resource>, n: u8) -> SpanRecord {
        let mut s = span(r, n);
        s.parent_span_id = [9; 8];
        s.trace_state = "vendor=x".into();
        s.kind = SpanKind::Client;
        s.status = Status { code: StatusCode::Error, message: "boom".into() };
        s.attributes.push(KeyValue { key: "ratio".into(), value: AnyValue::Double(0.5) });
        s.attributes.push(KeyValue::bool("retry", false));
        s.attributes.push(KeyValue::int("negative", -3));
        s.attributes.push(KeyValue::str("empty", ""));
        s.events.push(SpanEvent {
            name: "dlp_redacted".into(),
            time_unix_ns: 42,
            attributes: vec![KeyValue::str("hoptrace.dlp.detector", "email")],
        });
        s.links.push(SpanLink { trace_id: [3; 16], span_id: [4; 8], trace_state: String::new(), attributes: vec![] });
        s
    }

    #[test]
    fn decodes_to_the_same_request_as_the_generated_types() {
        let a = resource("checkout");
        let a_copy = Arc::new((*a).clone());
        let b = resource("payments");
        let mut root = span(&b, 5);
        root.flags = 0;
        root.start_unix_ns = 0;
        let spans = vec![span(&a, 1), rich(&b, 2), rich(&a_copy, 3), root, span(&a, 200)];
        let ours = encode_request(&spans);
        let decoded = ExportTraceServiceRequest::decode(ours.as_slice()).expect("valid protobuf");
        assert_eq!(decoded, to_request(&spans));
        // Same size as prost's own encoding (nothing extra, nothing missing).
        assert_eq!(ours.len(), to_request(&spans).encode_to_vec().len());
    }

    #[test]
    fn empty_batch_is_an_empty_request() {
        assert!(encode_request(&[]).is_empty());
    }
}
