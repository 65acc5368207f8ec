//! What a process's cgroup path says about it: the container it runs in and, under
//! Kubernetes, its pod. A leaf: both the process reader and the pod watcher use it.

/// Recognises a container id (64 hex chars) in a cgroup path, as Docker, containerd,
/// CRI-O and Kubernetes lay them out (`…/docker-<id>.scope`, `…/cri-containerd-<id>.scope`,
/// `…/<id>`).
pub fn container_id(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        let path = line.rsplit(':').next().unwrap_or("");
        for part in path.split('/').rev() {
            let part = part.strip_suffix(".scope").unwrap_or(part);
            let id = part.rsplit(['-', ':']).next().unwrap_or(part);
            if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(id.to_ascii_lowercase());
            }
        }
    }
    None
}

/// A pod UID from a kubelet cgroup path: `kubepods-burstable-pod<uid, _ for ->.slice`
/// (systemd driver) or `/kubepods/burstable/pod<uid>/` (cgroupfs driver), on any line of
/// /proc/<pid>/cgroup. With a private cgroup namespace the path is relative (`/../..`),
/// which does not matter here.
pub fn pod_uid(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or(line);
        for seg in path.split('/').rev() {
            let seg = seg.strip_suffix(".slice").unwrap_or(seg);
            let Some(i) = seg.rfind("pod") else { continue };
            let uid = &seg[i + 3..];
            let ok = uid.len() == 36
                && uid.bytes().filter(|b| matches!(b, b'-' | b'_')).count() == 4
                && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
            if ok && (i == 0 || seg[..i].ends_with('-')) {
                return Some(uid.replace('_', "-").to_ascii_lowercase());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_from_common_cgroup_layouts() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for cg in [
            format!("0::/system.slice/docker-{id}.scope"),
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"),
            format!("12:memory:/docker/{id}"),
            format!("0::/kubepods/besteffort/pod5f1c/{id}"),
            format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/crio-{id}.scope"),
            format!("4:pids:/kubepods/burstable/pod0b7e2a3c-1d2e-4f5a-8b9c-0d1e2f3a4b5c/{id}\n0::/"),
            format!("0::/../../kubepods-pod1.slice/cri-containerd-{id}.scope"),
        ] {
            assert_eq!(container_id(&cg).as_deref(), Some(id), "{cg}");
        }
        assert_eq!(container_id("0::/user.slice/session-1.scope"), None);
    }
}
