//! Test fixture: an HTTPS client whose TLS is rustls, compiled into the executable — a
//! library the OpenSSL probes cannot see. The e2e test checks that the agent says so.
//!
//! Usage: `rustls_client HOST:PORT CA_PEM PATH COUNT`. Makes COUNT requests (one
//! connection each), prints each response's status line, then waits for stdin to close so
//! the test decides when the process exits (the agent reads /proc/PID to classify it).

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
};

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, ca, path, count] = &args[..] else {
        eprintln!("usage: rustls_client HOST:PORT CA_PEM PATH COUNT");
        std::process::exit(2);
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA PEM") {
        roots.add(cert.expect("certificate")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let config = Arc::new(config);
    for _ in 0..count.parse::<u32>().expect("COUNT") {
        let name = ServerName::try_from("localhost").expect("server name");
        let mut conn = rustls::ClientConnection::new(config.clone(), name).expect("TLS client");
        let mut sock = TcpStream::connect(addr).expect("connect");
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        write!(tls, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("write");
        let mut response = Vec::new();
        // nginx closes after the response (Connection: close); a missing close_notify is
        // not an error for this fixture.
        let _ = tls.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response);
        println!("{}", text.lines().next().unwrap_or("<no response>"));
    }
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}
