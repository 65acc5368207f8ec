//! Application protocols spoken over captured connections, one file per protocol behind
//! one trait.
//!
//! The pipeline does not know any protocol: it shows the first bytes of a connection to
//! [`detect`], keeps the parser that claims them, feeds it each direction's
//! [`Segment`]s, and turns the [`L7Event`]s that come out into spans. Adding a protocol
//! is one new file and one line in [`DETECTORS`].
//!
//! Parsers are per connection and own all their state, so garbage on one connection can
//! only ever produce [`L7Event::ParseError`]s for that connection.

use hoptrace_common::{Direction, Role};

use crate::capture::stream::Segment;

pub mod amqp;
pub mod http1;
pub mod http2;
pub mod kafka;
pub(crate) mod mq_common;
pub mod nats;

pub use http1::{HttpExchange, Timing};

/// A parser for one connection.
pub trait Protocol: Send {
    /// Stable protocol label (metrics, span attributes).
    fn name(&self) -> &'static str;
    /// Bytes of one direction, in stream order (gaps included), as the stream delivered them.
    fn feed(&mut self, direction: Direction, segments: &[Segment], out: &mut Vec<L7Event>);
    /// The connection is gone: report what is pending (e.g. a request without response).
    fn close(&mut self, out: &mut Vec<L7Event>);
}

/// What a parser reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L7Event {
    Http(HttpExchange),
    /// A message-queue operation (AMQP, NATS, Kafka): one publish or one receive of one
    /// or more messages. The pipeline turns it into a PRODUCER or CONSUMER span.
    Messaging(MqOperation),
    /// Bytes the parser could not make sense of; `reason` is a stable snake_case label.
    /// The parser has already recovered (or is waiting to) on its own.
    ParseError {
        protocol: &'static str,
        reason: &'static str,
    },
}

/// Which way messages went, seen from the client of the broker connection (the broker
/// itself is never traced as a messaging service: its side of a connection is ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MqKind {
    /// The client sent messages to the broker (AMQP basic.publish, NATS PUB/HPUB, Kafka
    /// Produce): a PRODUCER span, `messaging.operation.type = send` (or `publish`).
    Publish,
    /// The broker handed messages to the client (AMQP basic.deliver / basic.get-ok, NATS
    /// MSG/HMSG, Kafka Fetch response): a CONSUMER span, `messaging.operation.type =
    /// receive` (pull) or `process` (push).
    Receive,
}

/// One message-queue operation as a parser reports it. Parsers keep only what may leave
/// the process: names and sizes, and of all message headers only the W3C trace context.
/// Bodies, keys and every other header value are skipped, never stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqOperation {
    /// `messaging.system`: "rabbitmq", "nats" or "kafka".
    pub system: &'static str,
    pub kind: MqKind,
    /// `messaging.operation.name` as the protocol calls it: "publish", "deliver", "get",
    /// "produce", "fetch", "PUB", "HPUB", "MSG", "HMSG".
    pub operation_name: &'static str,
    /// Syscalls that carried the operation. For request/response protocols (Kafka) the
    /// first byte is the request's and the last byte is the response's.
    pub timing: Timing,
    /// The messages, in wire order (one for a single publish or delivery; several for a
    /// Kafka batch or frames that arrived in one read).
    pub messages: Vec<MqMessage>,
    /// A broker-reported failure (Kafka error code name, AMQP channel.close reply text
    /// class), as a stable label; `None` on success.
    pub error: Option<String>,
}

/// One message of an [`MqOperation`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MqMessage {
    /// `messaging.destination.name`: AMQP exchange (empty for the default exchange),
    /// NATS subject, Kafka topic. Redacted by the pipeline before export.
    pub destination: String,
    /// AMQP routing key (`messaging.rabbitmq.destination.routing_key`).
    pub routing_key: Option<String>,
    /// Kafka partition (`messaging.destination.partition.id`).
    pub partition: Option<i32>,
    /// Kafka offset (`messaging.kafka.offset`).
    pub offset: Option<i64>,
    /// Body size in bytes (`messaging.message.body.size`); the body itself is skipped.
    pub body_size: u64,
    /// Raw `traceparent` header value, if the message carried one.
    pub traceparent: Option<Vec<u8>>,
    /// Raw `tracestate` header values, in order.
    pub tracestate: Vec<Vec<u8>>,
}

/// Looks at the first bytes of a connection (seen in `direction`) and returns a parser
/// if they belong to this protocol. Detection only looks: the pipeline then feeds the
/// same bytes to the parser. `None` may also mean "not enough bytes to tell".
pub type Detector = fn(Role, Direction, &[u8]) -> Option<Box<dyn Protocol>>;

/// Every known protocol, most specific first (NATS before HTTP: `CONNECT {` would
/// otherwise pass for an HTTP CONNECT request). HTTP/2 last: without its preface (a
/// connection joined mid-flight) it is recognised by frame heads, the least specific test.
pub const DETECTORS: &[Detector] = &[amqp::detect, nats::detect, http1::detect, kafka::detect, http2::detect];

/// Registry: the first protocol whose `detect` accepts the first bytes of a connection wins.
pub fn detect(role: Role, direction: Direction, first_bytes: &[u8]) -> Option<Box<dyn Protocol>> {
    DETECTORS.iter().find_map(|d| d(role, direction, first_bytes))
}

/// The other direction of the same connection.
pub fn opposite(direction: Direction) -> Direction {
    match direction {
        Direction::Egress => Direction::Ingress,
        Direction::Ingress => Direction::Egress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_finds_http1_and_rejects_the_rest() {
        let p = detect(Role::Server, Direction::Ingress, b"GET / HTTP/1.1\r\n").expect("http");
        assert_eq!(p.name(), "http1");
        assert!(detect(Role::Server, Direction::Ingress, b"\x16\x03\x01\x02\x00").is_none());
        assert!(detect(Role::Unknown, Direction::Egress, b"").is_none());
    }
}
