//! Descriptor → socket resolution: is descriptor `fd` of the current process a TCP
//! socket, and which `struct sock`? Answers are cached in `FDS` (maps in `maps::fds`).
//!
//! The walk reads kernel structs through offsets that the agent computed from the running
//! kernel's BTF and wrote into `CONFIG` before load.

use hoptrace_common::DropReason;

use crate::{
    config::config,
    helpers::{current_task, kread},
    maps::{
        drops::count_drop,
        fds::{current_gen, fd_entry, fd_key, set_fd_entry, FdEntry},
    },
};

pub(crate) const AF_INET: u16 = 2;
pub(crate) const AF_INET6: u16 = 10;
pub(crate) const IPPROTO_TCP: u16 = 6;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

pub(crate) enum Resolved {
    /// A TCP socket (IPv4 or IPv6); the `struct sock` address.
    Tcp(u64),
    /// Anything else: file, pipe, unix or UDP socket, or an fd that is not open.
    Other,
    /// A kernel read failed; do not cache anything.
    Fault,
}

/// Walks current->files->fdt->fd[fd] to the struct sock, if the descriptor is a TCP socket.
#[inline(always)]
pub(crate) fn resolve_fd(fd: i32) -> Resolved {
    if fd < 0 {
        return Resolved::Other;
    }
    let o = &config().offsets;
    let task = current_task();
    let Some(files) = kread::<u64>(task + o.task_files as u64) else { return Resolved::Fault };
    let Some(fdt) = kread::<u64>(files + o.files_fdt as u64) else { return Resolved::Fault };
    let Some(max_fds) = kread::<u32>(fdt + o.fdt_max_fds as u64) else { return Resolved::Fault };
    if fd as u32 >= max_fds {
        return Resolved::Other;
    }
    let Some(fd_array) = kread::<u64>(fdt + o.fdt_fd as u64) else { return Resolved::Fault };
    let Some(file) = kread::<u64>(fd_array + 8 * fd as u64) else { return Resolved::Fault };
    if file == 0 {
        return Resolved::Other;
    }
    let Some(inode) = kread::<u64>(file + o.file_inode as u64) else { return Resolved::Fault };
    let Some(mode) = kread::<u16>(inode + o.inode_mode as u64) else { return Resolved::Fault };
    if mode & S_IFMT != S_IFSOCK {
        return Resolved::Other;
    }
    let Some(socket) = kread::<u64>(file + o.file_private_data as u64) else { return Resolved::Fault };
    let Some(sk) = kread::<u64>(socket + o.socket_sk as u64) else { return Resolved::Fault };
    if sk == 0 {
        return Resolved::Other;
    }
    let Some(family) = kread::<u16>(sk + o.sk_family as u64) else { return Resolved::Fault };
    if family != AF_INET && family != AF_INET6 {
        return Resolved::Other;
    }
    let Some(proto) = kread::<u16>(sk + o.sk_protocol as u64) else { return Resolved::Fault };
    if proto != IPPROTO_TCP {
        return Resolved::Other;
    }
    Resolved::Tcp(sk)
}

/// The captured socket behind descriptor `fd` of process `tgid`, from the cache or by
/// walking the descriptor table (a non-socket is cached as such). Returns `(sk, known)`:
/// `sk == 0` when not captured; `known` is false when this process's descriptor was not
/// recorded yet (its connection must be attached before use).
#[inline(always)]
pub(crate) fn socket_of(tgid: u32, fd: i32) -> (u64, bool) {
    let key = fd_key(tgid, fd);
    let gen = current_gen(tgid);
    match fd_entry(key) {
        Some(e) if e.gen == gen => (e.sk, true),
        _ => match resolve_fd(fd) {
            Resolved::Tcp(sk) => (sk, false),
            Resolved::Other => {
                set_fd_entry(key, FdEntry { sk: 0, gen });
                (0, true)
            }
            Resolved::Fault => {
                count_drop(DropReason::KernelReadFault, 1);
                (0, true)
            }
        },
    }
}

/// The inode of descriptor `fd` of the current process, 0 when it is not open (or a
/// kernel read failed).
#[inline(always)]
fn file_inode(fd: i32) -> u64 {
    let o = &config().offsets;
    let task = current_task();
    let Some(files) = kread::<u64>(task + o.task_files as u64) else { return 0 };
    let Some(fdt) = kread::<u64>(files + o.files_fdt as u64) else { return 0 };
    let Some(max_fds) = kread::<u32>(fdt + o.fdt_max_fds as u64) else { return 0 };
    if fd < 0 || fd as u32 >= max_fds {
        return 0;
    }
    let Some(fd_array) = kread::<u64>(fdt + o.fdt_fd as u64) else { return 0 };
    let Some(file) = kread::<u64>(fd_array + 8 * fd as u64) else { return 0 };
    if file == 0 {
        return 0;
    }
    kread::<u64>(file + o.file_inode as u64).unwrap_or(0)
}

/// Which standard stream descriptor `fd` writes to: 1 or 2 for the descriptors
/// themselves, or for another descriptor open on the same inode (nginx's
/// `access_log /dev/stdout` opens the pipe again); 0 otherwise.
#[inline(always)]
pub(crate) fn std_stream(fd: i32) -> u8 {
    if fd == 1 || fd == 2 {
        return fd as u8;
    }
    let inode = file_inode(fd);
    if inode == 0 {
        return 0;
    }
    if inode == file_inode(1) {
        1
    } else if inode == file_inode(2) {
        2
    } else {
        0
    }
}
