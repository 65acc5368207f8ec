//! Saying so when a process's TLS cannot be seen: a connection that starts with a TLS
//! handshake in a process that maps no probed library is classified by what the process
//! uses instead (Go's crypto/tls, a static OpenSSL/BoringSSL, rustls, Java, GnuTLS, NSS).

use std::path::Path;

use object::{Object, ObjectSymbol};

/// Executables larger than this are not read to classify their TLS.
const MAX_EXE_BYTES: u64 = 512 * 1024 * 1024;

/// Why a process's TLS traffic cannot be seen; metric label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotVisible {
    /// Go's crypto/tls (the executable has Go build info or crypto/tls symbols).
    GoCryptoTls,
    /// OpenSSL/BoringSSL compiled into the executable (Envoy…): `SSL_write` is its own.
    StaticallyLinkedTls,
    /// Java's JSSE (libjvm is mapped).
    JavaJsse,
    /// rustls compiled into the executable.
    Rustls,
    /// GnuTLS or NSS is mapped (not probed).
    Gnutls,
    Nss,
    /// Anything else (no libssl mapped, unknown library, libssl whose probes failed).
    NoSupportedTlsLibrary,
}

impl NotVisible {
    pub const ALL: [NotVisible; 7] = [
        Self::GoCryptoTls,
        Self::StaticallyLinkedTls,
        Self::JavaJsse,
        Self::Rustls,
        Self::Gnutls,
        Self::Nss,
        Self::NoSupportedTlsLibrary,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::GoCryptoTls => "go_crypto_tls",
            Self::StaticallyLinkedTls => "statically_linked_tls",
            Self::JavaJsse => "java_jsse",
            Self::Rustls => "rustls",
            Self::Gnutls => "gnutls",
            Self::Nss => "nss",
            Self::NoSupportedTlsLibrary => "no_supported_tls_library",
        }
    }
}

/// Counters exported on /metrics and in the capture stats.
/// True when `b` starts with a TLS handshake record header: content type 22, record
/// version 3.0–3.4 (SSL 3.0 … TLS 1.3 use 0x0301 in records), plausible length.
pub fn looks_like_tls_handshake(b: &[u8]) -> bool {
    b.len() >= 5 && b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04 && u16::from_be_bytes([b[3], b[4]]) <= 16384 + 2048
}

/// Decides why a process that speaks TLS has no probed library.
pub(super) fn classify(pid: u32, maps: &str) -> NotVisible {
    let mapped = |needle: &str| maps.lines().any(|l| l.rsplit('/').next().is_some_and(|name| name.starts_with(needle)));
    if mapped("libjvm.so") {
        return NotVisible::JavaJsse;
    }
    if let Some(reason) = classify_executable(Path::new(&format!("/proc/{pid}/exe"))) {
        return reason;
    }
    if mapped("libgnutls.so") {
        return NotVisible::Gnutls;
    }
    if mapped("libnss3.so") || mapped("libssl3.so") {
        return NotVisible::Nss;
    }
    NotVisible::NoSupportedTlsLibrary
}

/// Looks inside the executable: Go build info, its own SSL_write, rustls symbols.
pub fn classify_executable(exe: &Path) -> Option<NotVisible> {
    let len = std::fs::metadata(exe).ok()?.len();
    if len > MAX_EXE_BYTES {
        return None;
    }
    let data = std::fs::read(exe).ok()?;
    classify_elf(&data)
}

fn classify_elf(data: &[u8]) -> Option<NotVisible> {
    let file = object::File::parse(data).ok()?;
    if file.section_by_name(".go.buildinfo").is_some() {
        return Some(NotVisible::GoCryptoTls);
    }
    let mut rustls = false;
    for sym in file.symbols().chain(file.dynamic_symbols()) {
        let Ok(name) = sym.name() else { continue };
        if name.starts_with("crypto/tls.") {
            return Some(NotVisible::GoCryptoTls);
        }
        if (name == "SSL_write" || name == "SSL_write_ex") && !sym.is_undefined() {
            return Some(NotVisible::StaticallyLinkedTls);
        }
        rustls |= name.contains("6rustls");
    }
    rustls.then_some(NotVisible::Rustls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_records_are_recognised() {
        // A real TLS 1.3 ClientHello starts 16 03 01 <len>.
        assert!(looks_like_tls_handshake(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
        assert!(!looks_like_tls_handshake(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_tls_handshake(&[0x16, 0x03]));
        assert!(!looks_like_tls_handshake(&[0x17, 0x03, 0x03, 0x00, 0x10]));
        assert!(!looks_like_tls_handshake(&[0x16, 0x03, 0x09, 0x00, 0x10]));
    }

    #[test]
    fn this_test_binary_is_classified_as_rustls() {
        // The agent links rustls (OTLP export over TLS), and so does its test binary.
        let exe = std::env::current_exe().unwrap();
        assert_eq!(classify_executable(&exe), Some(NotVisible::Rustls));
    }

    #[test]
    fn a_dynamically_linked_c_program_is_not_classified() {
        // /bin/sh links libc only: nothing in its own symbols says TLS.
        assert_eq!(classify_executable(Path::new("/bin/sh")), None);
    }
}
