//! The trace pipeline as a capture [`Consumer`]: capture events in, spans out to a
//! [`SpanSink`]. Shared by `hoptrace run` and `hoptrace check`.

use anyhow::Result;
use hoptrace_common::{CloseEvent, ConnectFailedEvent, DataHeader, Direction, OpenEvent};

use super::{SpanSink, TracePipeline};
use crate::capture::{
    conntrack::{Connection, TableStats},
    counters::Counters,
    driver::Consumer,
    stream::Segment,
};

fn direction(d: u8) -> Direction {
    if d == Direction::Ingress as u8 {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

/// Capture events into the trace pipeline, spans into `sink`. Shared by `run` and `check`.
pub struct TraceConsumer<S: SpanSink> {
    pub pipeline: TracePipeline,
    pub sink: S,
}

impl<S: SpanSink> TraceConsumer<S> {
    pub fn new(pipeline: TracePipeline, sink: S) -> Self {
        Self { pipeline, sink }
    }

    /// Shutdown: held calls go out.
    pub fn flush(&mut self) {
        self.pipeline.flush(&mut self.sink);
    }

    pub fn exchanges(&self) -> u64 {
        self.pipeline.stats.exchanges
    }
}

impl<S: SpanSink> Consumer for TraceConsumer<S> {
    fn open(&mut self, _ev: &OpenEvent, _conn: Option<&Connection>) -> Result<()> {
        Ok(())
    }

    fn data(&mut self, h: &DataHeader, _payload: &[u8], conn: &Connection, segs: &[Segment]) -> Result<()> {
        self.pipeline.on_segments(conn, direction(h.direction), segs, &mut self.sink);
        Ok(())
    }

    fn closed(&mut self, conn: &Connection, ev: Option<&CloseEvent>, flushed: &[Vec<Segment>; 2]) -> Result<()> {
        self.pipeline.on_segments(conn, Direction::Egress, &flushed[0], &mut self.sink);
        self.pipeline.on_segments(conn, Direction::Ingress, &flushed[1], &mut self.sink);
        self.pipeline.on_close(conn, ev.map(|e| e.ts_ns), &mut self.sink);
        Ok(())
    }

    fn connect_failed(&mut self, ev: &ConnectFailedEvent, conn: Option<&Connection>) -> Result<()> {
        let (local, remote) = crate::capture::conntrack::failed_tuple(ev);
        let error = crate::capture::conntrack::errno_name(ev.error);
        match conn {
            // connect() had returned: the owner is known, the running thread is not.
            Some(c) => {
                self.pipeline.on_connect_failed(c.pid, None, &c.comm, local, remote, error, ev.ts_ns, &mut self.sink)
            }
            // Failed inside connect(): the running thread is the connecting one.
            None => self.pipeline.on_connect_failed(
                ev.pid,
                Some(ev.tid),
                "",
                local,
                remote,
                error,
                ev.ts_ns,
                &mut self.sink,
            ),
        }
        Ok(())
    }

    fn tick(&mut self, _counters: &Counters, _table: &TableStats, _tracked: usize) -> Result<()> {
        self.pipeline.tick(&mut self.sink);
        Ok(())
    }
}
