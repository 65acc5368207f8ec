//! The servers the tests trace (nginx, the Python fixture servers) and curl as a client.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{fixture, python, run, signal, venv, wait_until, Running, TempDir, TIMEOUT};

/// A response as printed by `curl -i`, plus the pid curl ran as (to match agent events).
#[derive(Debug)]
pub struct HttpResponse {
    pub pid: u32,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// Case-insensitive header lookup.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One GET with curl on its own connection.
pub fn curl_get(url: &str) -> HttpResponse {
    let done = run(Command::new("curl").args(["-sS", "-i", "--max-time", "10", url]), TIMEOUT).expect_success();
    let (head, body) =
        done.stdout.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header block in curl output: {done:#?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in curl output: {done:#?}"));
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    HttpResponse { pid: done.pid, status, headers, body: body.to_string() }
}

/// Default server config for tests that only need a fixed answer.
pub const NGINX_HELLO: &str = r#"location / { return 200 "hello\n"; }"#;

/// nginx with 2 pre-forked workers on 127.0.0.1:`port`, everything it writes kept in a temp
/// dir. Dropping it stops nginx.
pub struct Nginx {
    // Dropped in order: the processes go before their temp dir.
    master: Running,
    dir: TempDir,
    port: u16,
}

/// Marks a server configuration for [`Nginx::start_http2`] (private to this file).
const HTTP2_MARK: &str = "#http2\n";

impl Nginx {
    const WORKERS: usize = 2;

    /// Starts nginx with `server_config` inside its `server {}` block and waits until both
    /// workers exist and the port accepts connections. That readiness probe is a real TCP
    /// connection: start nginx before the agent if it must not show up in the capture.
    pub fn start(port: u16, server_config: &str) -> Nginx {
        Self::start_with(port, server_config, false)
    }

    /// Like [`Nginx::start`], terminating TLS on the port with a fresh self-signed
    /// certificate (`cert.pem` in the nginx dir, see [`Nginx::cert`]).
    pub fn start_tls(port: u16, server_config: &str) -> Nginx {
        Self::start_with(port, server_config, true)
    }

    /// Like [`Nginx::start`] or [`Nginx::start_tls`], speaking HTTP/2 on the port
    /// (`listen … http2`, the nginx 1.22 syntax): without TLS that is h2c with prior
    /// knowledge only; with TLS, HTTP/2 by ALPN.
    pub fn start_http2(port: u16, server_config: &str, tls: bool) -> Nginx {
        let cfg = format!("{HTTP2_MARK}{server_config}");
        Self::start_with(port, &cfg, tls)
    }

    /// The TLS variant's certificate (PEM), for clients that verify it.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn start_with(port: u16, server_config: &str, tls: bool) -> Nginx {
        let dir = TempDir::new("nginx");
        let template = fs::read_to_string(fixture("nginx.conf.template")).expect("read nginx template");
        let mut server_config = server_config.to_string();
        let mut template = template;
        let listen = "listen 127.0.0.1:{{PORT}};";
        if let Some(rest) = server_config.strip_prefix(HTTP2_MARK) {
            server_config = rest.to_string();
            assert!(template.contains(listen), "nginx template has no `{listen}` line");
            template = template.replace(listen, "listen 127.0.0.1:{{PORT}} http2;");
        }
        if tls {
            self_signed_cert(&dir.join("cert.pem"), &dir.join("key.pem"));
            let listen = "listen 127.0.0.1:{{PORT}}";
            assert!(template.contains(listen), "nginx template has no `{listen}` line");
            template = template.replace(listen, "listen 127.0.0.1:{{PORT}} ssl");
            server_config = format!(
                "ssl_certificate {}; ssl_certificate_key {}; {server_config}",
                dir.join("cert.pem").display(),
                dir.join("key.pem").display()
            );
        }
        let conf = template
            .replace("{{DIR}}", dir.arg())
            .replace("{{PORT}}", &port.to_string())
            .replace("{{SERVER_CONFIG}}", &server_config);
        fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
        // `-e` and `-p` keep nginx away from /var/log/nginx and /usr/share/nginx even before it
        // has parsed the config.
        let master = Running::spawn(
            Command::new("nginx")
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .args(["-g", "daemon off;"]),
        );
        let mut nginx = Nginx { master, dir, port };
        let ready = wait_until(TIMEOUT, || {
            nginx.worker_pids().len() == Self::WORKERS && TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !ready {
            let exited = nginx.master.exited();
            panic!(
                "nginx on port {port} not ready (exit status: {exited:?}, workers: {:?})\nstderr:\n{}\nerror.log:\n{}",
                nginx.worker_pids(),
                nginx.master.stderr(),
                fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default()
            );
        }
        nginx
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn master_pid(&self) -> u32 {
        self.master.pid()
    }

    /// The master's children, read from /proc now.
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.master_pid())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Fast shutdown; `Running`'s drop then SIGKILLs whatever is left of the group.
        signal(self.master_pid() as i32, libc::SIGTERM);
        wait_until(Duration::from_secs(5), || matches!(self.master.try_exited(), Ok(Some(_))));
    }
}

/// A self-signed certificate for `localhost` / 127.0.0.1 (RSA 2048, 2 days), made with the
/// openssl CLI.
pub fn self_signed_cert(cert: &Path, key: &Path) {
    run(
        Command::new("openssl").args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]).args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            // An end-entity certificate (not a CA), so strict verifiers (rustls) accept it.
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ]),
        TIMEOUT,
    )
    .expect_success();
}

/// Pids whose parent is `ppid`, from /proc/*/stat.
fn children_of(ppid: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            // The comm field may contain spaces and parentheses: the ppid is the second
            // field after the last ')'.
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after_comm.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(ppid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// A Python fixture server that prints `READY <port>` once listening. Dropping it kills its
/// whole process group, forked children included.
pub struct PyServer {
    process: Running,
    port: u16,
}

impl PyServer {
    /// Runs `python3 tests/fixtures/<script> <args>` and waits for its READY line.
    pub fn start(script: &str, args: &[&str]) -> PyServer {
        PyServer::start_cmd(python(script).args(args))
    }

    /// Runs `tests/fixtures/<script> <args>` with the venv's interpreter (see [`venv`]).
    pub fn start_venv(script: &str, args: &[&str]) -> PyServer {
        PyServer::start_cmd(venv(script).args(args))
    }

    /// Runs `cmd` (a fixture printing `READY <port>`) and waits for its READY line.
    pub fn start_cmd(cmd: &mut Command) -> PyServer {
        let mut process = Running::spawn(cmd);
        let line = process.wait_for_line("READY ", TIMEOUT);
        let port = line["READY ".len()..].parse().unwrap_or_else(|_| panic!("bad READY line from {cmd:?}: {line:?}"));
        PyServer { process, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The main (listening) process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
