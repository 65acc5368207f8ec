//! The processes of a benchmark round: nginx, the OTLP sink standing in for a collector, and
//! the agent under test.

use super::*;

pub(super) struct Nginx {
    pub(super) child: Child,
    pub(super) dir: PathBuf,
    pub(super) port: u16,
}

impl Nginx {
    pub(super) fn start(cpus: &str) -> Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("hoptrace-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        // One worker, no access log (a file write per request would be the benchmark's
        // own noise), a fixed body served from memory.
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/cb;\n  proxy_temp_path {d}/px;\n\
               fastcgi_temp_path {d}/fc;\n  uwsgi_temp_path {d}/uw;\n  scgi_temp_path {d}/sc;\n\
               keepalive_requests 1000000;\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{ default_type text/plain; return 200 \"hello from nginx\\n\"; }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new("taskset")
            .args(["-c", cpus, "nginx", "-c"])
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start: {}", std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, dir, port })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of master and worker.
        let _ = Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// OTLP/HTTP collector stand-in: accepts POSTs, discards the bodies, answers 200 with an
/// empty (valid) ExportTraceServiceResponse.
pub(super) struct OtlpSink {
    pub(super) port: u16,
    /// Export requests received.
    pub(super) requests: Arc<AtomicU64>,
    pub(super) bytes: Arc<AtomicU64>,
    pub(super) stop: Arc<AtomicBool>,
}

impl OtlpSink {
    pub(super) fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, b, s) = (requests.clone(), bytes.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (r, b) = (r.clone(), b.clone());
                thread::spawn(move || {
                    let _ = serve_otlp(conn, &r, &b);
                });
            }
        });
        Ok(Self { port, requests, bytes, stop })
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

pub(super) fn serve_otlp(conn: TcpStream, requests: &AtomicU64, bytes: &AtomicU64) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let mut body = Vec::new();
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
        requests.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len as u64, Ordering::Relaxed);
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")?;
    }
}

pub(super) struct Agent {
    pub(super) child: Child,
    pub(super) listen: u16,
}

impl Agent {
    pub(super) fn start(bin: &Path, nginx_port: u16, sink: Option<&OtlpSink>, log: &Path) -> Result<Self> {
        let listen = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--port", &nginx_port.to_string(), "--listen", &format!("127.0.0.1:{listen}")]);
        match sink {
            Some(s) => {
                cmd.env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", format!("http://127.0.0.1:{}/v1/traces", s.port));
                cmd.env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf");
            }
            None => {
                cmd.args(["--output", "/dev/null"]);
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut agent = Self { child, listen };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = agent.child.try_wait()? {
                bail!("agent exited ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
            }
            if http_get(listen, "/readyz").is_some_and(|b| b.starts_with("ready")) {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!("agent not ready after 60 s");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn metrics(&self) -> BTreeMap<String, f64> {
        let text = http_get(self.listen, "/metrics").unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    pub(super) fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

pub(super) fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (_, body) = out.split_once("\r\n\r\n")?;
    Some(body.to_string())
}
