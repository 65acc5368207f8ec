//! The trace pipeline as a capture [`Consumer`]: capture events in, spans out to a
//! [`SpanSink`]. Shared by `hoptrace run` and `hoptrace check`.

use anyhow::Result;
use hoptrace_common::Direction;

use super::{SpanSink, TracePipeline};
use crate::capture::{
    conntrack::{Connection, TableStats},
    counters::Counters,
    driver::Consumer,
    events::{AppLog, Close, ConnectFailed, Data, Exec, Exit, Open, PyContext},
    stream::Segment,
};

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
    fn open(&mut self, _ev: &Open, _conn: Option<&Connection>) -> Result<()> {
        Ok(())
    }

    fn data(&mut self, d: &Data, conn: &Connection, segs: &[Segment]) -> Result<()> {
        self.pipeline.on_segments(conn, d.direction, segs, &mut self.sink);
        Ok(())
    }

    fn closed(&mut self, conn: &Connection, ev: Option<&Close>, flushed: &[Vec<Segment>; 2]) -> Result<()> {
        self.pipeline.on_segments(conn, Direction::Egress, &flushed[0], &mut self.sink);
        self.pipeline.on_segments(conn, Direction::Ingress, &flushed[1], &mut self.sink);
        self.pipeline.on_close(conn, ev.map(|e| e.ts_ns), &mut self.sink);
        Ok(())
    }

    fn connect_failed(&mut self, ev: &ConnectFailed, conn: Option<&Connection>) -> Result<()> {
        let (local, remote) = (ev.local, ev.remote);
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

    fn exec(&mut self, ev: &Exec) -> Result<()> {
        self.pipeline.on_exec(ev.pid, ev.ts_ns);
        Ok(())
    }

    fn exiting(&mut self, ev: &Exit) -> bool {
        self.pipeline.follows(ev.pid)
    }

    fn exited(&mut self, ev: &Exit) -> Result<()> {
        self.pipeline.forget_python(ev.pid);
        self.pipeline.on_exit(ev, &mut self.sink);
        Ok(())
    }

    fn py_context(&mut self, ev: &PyContext) -> Result<()> {
        self.pipeline.on_py_context(ev);
        Ok(())
    }

    fn app_log(&mut self, ev: &AppLog) -> Result<()> {
        let write = super::logs::app::AppWrite {
            pid: ev.pid,
            tid: ev.tid,
            stream: ev.stream,
            ts_ns: ev.ts_enter_ns,
            bytes: ev.payload,
            incomplete: ev.chunk_offset == 0 && ev.call_captured < ev.call_len,
        };
        self.pipeline.on_app_write(&write, &mut self.sink);
        Ok(())
    }

    fn tick(&mut self, _counters: &Counters, _table: &TableStats, _tracked: usize) -> Result<()> {
        self.pipeline.tick(&mut self.sink);
        Ok(())
    }
}
