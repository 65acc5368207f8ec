//! TCP socket tables from /proc: listening sockets (to tell servers from clients on
//! connections that predate the agent) and socket inodes (to rebuild a connection's tuple
//! when its open record was lost).
//!
//! Read through /proc/<pid>/net so each process is looked up in its own network namespace.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

pub const TCP_LISTEN: u8 = 0x0A;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
}

fn parse_addr(hex: &str) -> Option<SocketAddr> {
    let (addr, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.to_le_bytes())),
        32 => {
            // Four 32-bit words, each printed in host (little-endian) order.
            let mut b = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?;
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses the text of /proc/net/tcp or tcp6.
pub fn parse_tcp_table(text: &str) -> Vec<TcpEntry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(TcpEntry {
                local: parse_addr(f.get(1)?)?,
                remote: parse_addr(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// Both TCP tables as seen by `pid` (its network namespace).
pub fn tcp_table(pid: u32) -> Vec<TcpEntry> {
    tcp_table_of(&pid.to_string())
}

/// Both TCP tables as seen by `/proc/<who>` (a pid, or `self`).
fn tcp_table_of(who: &str) -> Vec<TcpEntry> {
    let mut out = Vec::new();
    for file in ["tcp", "tcp6"] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{who}/net/{file}")) {
            out.extend(parse_tcp_table(&text));
        }
    }
    out
}

/// Socket inode behind a descriptor, from the /proc/<pid>/fd/<fd> link ("socket:[123]").
pub fn socket_inode(pid: u32, fd: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Every socket inode the process holds a descriptor on.
pub fn socket_inodes(pid: u32) -> std::collections::HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
    };
    dir.filter_map(|e| {
        let link = std::fs::read_link(e.ok()?.path()).ok()?;
        link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    })
    .collect()
}

/// Ports the process itself listens on. (/proc/<pid>/net/tcp lists the whole network
/// namespace, so ownership is checked through the process's socket inodes.)
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let mine = socket_inodes(pid);
    tcp_table(pid)
        .into_iter()
        .filter(|e| e.state == TCP_LISTEN && mine.contains(&e.inode))
        .map(|e| e.local.port())
        .collect()
}

fn netns_of_self() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
}

fn netns_of(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net")).ok().map(|m| m.ino())
}

/// Listening sockets per network namespace, refreshed at most once a second per namespace.
#[derive(Default)]
pub struct Listeners {
    by_netns: HashMap<u64, (Instant, Vec<SocketAddr>)>,
}

impl Listeners {
    /// Is `local` a port some socket listens on, in `pid`'s network namespace?
    /// A short-lived process may be gone before its first record is handled: then its
    /// namespace is assumed to be the agent's own (the host's, for a DaemonSet with
    /// hostPID or a VM service). `None` when not even that can be read.
    pub fn is_listening(&mut self, pid: u32, local: SocketAddr) -> Option<bool> {
        let (ns, who) = match netns_of(pid) {
            Some(ns) => (ns, pid.to_string()),
            None => (netns_of_self()?, "self".to_string()),
        };
        let fresh = |t: &Instant| t.elapsed() < Duration::from_secs(1);
        let entry = self.by_netns.entry(ns).or_insert_with(|| (Instant::now(), Vec::new()));
        let matches = |l: &Vec<SocketAddr>| {
            l.iter().any(|a| a.port() == local.port() && (a.ip().is_unspecified() || a.ip() == local.ip()))
        };
        if matches(&entry.1) && fresh(&entry.0) {
            return Some(true);
        }
        // Unknown port or stale view: read the table again (bounded to once a second).
        if !fresh(&entry.0) || entry.1.is_empty() {
            entry.1 = tcp_table_of(&who).into_iter().filter(|e| e.state == TCP_LISTEN).map(|e| e.local).collect();
            entry.0 = Instant::now();
        }
        Some(matches(&entry.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_and_ipv6_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 23456 1 0000000000000000 20 4 30 10 -1
";
        let t = parse_tcp_table(v4);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t[0].state, TCP_LISTEN);
        assert_eq!(t[1].remote, "127.0.0.1:54321".parse().unwrap());
        assert_eq!(t[1].inode, 23456);
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
";
        let t = parse_tcp_table(v6);
        assert_eq!(t[0].local, "[::1]:8080".parse().unwrap());
    }

    #[test]
    fn sees_a_real_listener_in_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut listeners = Listeners::default();
        assert_eq!(listeners.is_listening(std::process::id(), addr), Some(true));
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(listeners.is_listening(std::process::id(), other), Some(false));
        assert!(listening_ports(std::process::id()).contains(&addr.port()));
        assert!(!listening_ports(1).contains(&addr.port()), "another process's port counted as ours");
        // A process already gone: judged in the agent's own namespace.
        let gone = 4_000_000; // above any pid in use here
        assert_eq!(listeners.is_listening(gone, addr), Some(true));
        assert_eq!(listeners.is_listening(gone, other), Some(false));
    }
}
