//! What a round measures: wrk's figures, the agent's CPU time, memory and BPF run time.

use super::*;

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Wrk {
    pub(super) requests: f64,
    pub(super) rps: f64,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
}

pub(super) fn run_wrk(cpus: &str, port: u16, connections: u32, secs: u64) -> Result<Wrk> {
    let out = Command::new("taskset")
        .args(["-c", cpus, "wrk", "-t1", &format!("-c{connections}"), &format!("-d{secs}s"), "--latency"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("cannot parse wrk output:\n{text}"))
}

pub(super) fn duration_us(s: &str) -> Option<f64> {
    let i = s.find(|c: char| c.is_ascii_alphabetic())?;
    let v: f64 = s[..i].parse().ok()?;
    Some(match &s[i..] {
        "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        "m" => v * 60e6,
        _ => return None,
    })
}

pub(super) fn parse_wrk(text: &str) -> Option<Wrk> {
    let mut w = Wrk::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["50%", v] => w.p50_us = duration_us(v)?,
            ["99%", v] => w.p99_us = duration_us(v)?,
            ["Requests/sec:", v] => w.rps = v.parse().ok()?,
            [n, "requests", "in", ..] => w.requests = n.parse().ok()?,
            _ => {}
        }
    }
    (w.requests > 0.0 && w.p99_us > 0.0).then_some(w)
}

/// CPU time (ns) of every thread of `pid`.
pub(super) fn cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

pub(super) fn status_kib(pid: u32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// name → (run_time_ns, run_cnt) of the BPF programs `pid` holds.
pub(super) fn bpf_stats(pid: u32) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| -> Option<u64> {
            text.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse().ok())
        };
        let (Some(id), Some(t), Some(n)) = (field("prog_id:"), field("run_time_ns:"), field("run_cnt:")) else {
            continue;
        };
        let name = prog_name(id as u32).unwrap_or_else(|| format!("prog{id}"));
        // The same program may be held by several fds (one per attachment): count it once.
        out.insert(name, (t, n));
    }
    out
}

/// A program's name from its id: BPF_PROG_GET_FD_BY_ID, then BPF_OBJ_GET_INFO_BY_FD for
/// the first 80 bytes of `struct bpf_prog_info` (uapi; `name[16]` is at byte 64).
pub(super) fn prog_name(id: u32) -> Option<String> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: the bpf syscall reads `attr` (zero-padded, size given) and writes nothing back.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return None;
    }
    let mut info = [0u8; 80];
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: the kernel writes at most info_len (80) bytes into `info`.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), attr.len()) };
    // SAFETY: fd came from the syscall above.
    unsafe { libc::close(fd as i32) };
    if r != 0 {
        return None;
    }
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(16);
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(super) fn metric_sum(m: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    m.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
}

pub(super) fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_latency_output() {
        let text = "Running 10s test @ http://127.0.0.1:8080/\n  1 threads and 50 connections\n\
  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   1.02ms  300.00us   9.00ms   90.00%\n\
  Latency Distribution\n     50%  812.00us\n     75%    1.10ms\n     90%    1.30ms\n     99%    2.50ms\n\
  412345 requests in 10.00s, 60.00MB read\nRequests/sec:  41234.50\nTransfer/sec:      6.00MB\n";
        let w = parse_wrk(text).unwrap();
        assert_eq!((w.requests, w.rps, w.p50_us, w.p99_us), (412345.0, 41234.5, 812.0, 2500.0));
    }
}
