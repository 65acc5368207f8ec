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

use crate::stream::Segment;

pub mod http1;

pub use http1::HttpExchange;

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
    /// Bytes the parser could not make sense of; `reason` is a stable snake_case label.
    /// The parser has already recovered (or is waiting to) on its own.
    ParseError {
        protocol: &'static str,
        reason: &'static str,
    },
}

/// Looks at the first bytes of a connection (seen in `direction`) and returns a parser
/// if they belong to this protocol. Detection only looks: the pipeline then feeds the
/// same bytes to the parser. `None` may also mean "not enough bytes to tell".
pub type Detector = fn(Role, Direction, &[u8]) -> Option<Box<dyn Protocol>>;

/// Every known protocol, most specific first.
pub const DETECTORS: &[Detector] = &[http1::detect];

/// Registry: the first protocol whose `detect` accepts the first bytes of a connection wins.
pub fn detect(role: Role, direction: Direction, first_bytes: &[u8]) -> Option<Box<dyn Protocol>> {
    DETECTORS
        .iter()
        .find_map(|d| d(role, direction, first_bytes))
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
