//! Kernel struct field offsets read from the running kernel's BTF.
//!
//! Rust eBPF programs cannot emit CO-RE relocations, and struct layouts differ between
//! kernels (and configs), so the agent resolves every field the programs read from
//! /sys/kernel/btf/vmlinux and hands the offsets to the programs before load.

use anyhow::{anyhow, bail, Context, Result};
use btf_rs::{Btf, Member, Struct, Type};
use hoptrace_common::KernelOffsets;

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn from_file(path: &str) -> Result<Self> {
        let btf = Btf::from_file(path).with_context(|| format!("cannot parse BTF from {path}"))?;
        Ok(Self { btf })
    }

    fn named_struct(&self, name: &str) -> Result<Struct> {
        let types =
            self.btf.resolve_types_by_name(name).map_err(|e| anyhow!("struct {name} is not in the kernel BTF: {e}"))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| anyhow!("struct {name} is not in the kernel BTF"))
    }

    /// Follows typedefs and qualifiers down to a struct or union.
    fn as_struct(&self, mut t: Type) -> Option<Struct> {
        loop {
            match t {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(ref x) => t = self.btf.resolve_chained_type(x).ok()?,
                Type::Const(ref x) | Type::Volatile(ref x) | Type::Restrict(ref x) => {
                    t = self.btf.resolve_chained_type(x).ok()?
                }
                Type::TypeTag(ref x) => t = self.btf.resolve_chained_type(x).ok()?,
                _ => return None,
            }
        }
    }

    /// Finds `name` among `s`'s members, looking inside anonymous structs and unions
    /// (sock_common keeps addresses and ports in those). Returns (bit offset, member).
    fn find_member(&self, s: &Struct, name: &str) -> Option<(u32, Member)> {
        for m in &s.members {
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            if mname == name {
                return Some((m.bit_offset(), m.clone()));
            }
            if mname.is_empty() {
                let inner = self.as_struct(self.btf.resolve_chained_type(m).ok()?)?;
                if let Some((off, found)) = self.find_member(&inner, name) {
                    return Some((m.bit_offset() + off, found));
                }
            }
        }
        None
    }

    /// Byte offset of `path` ("__sk_common.skc_family") inside `struct root`.
    pub fn offset_of(&self, root: &str, path: &str) -> Result<u32> {
        let mut s = self.named_struct(root)?;
        let mut bits = 0u32;
        let segments: Vec<&str> = path.split('.').collect();
        for (i, seg) in segments.iter().enumerate() {
            let (off, member) = self
                .find_member(&s, seg)
                .ok_or_else(|| anyhow!("struct {root} has no field {path} in this kernel's BTF"))?;
            if member.bitfield_size().is_some_and(|b| b != 0) {
                bail!("{root}.{path} is a bitfield in this kernel; hoptrace needs a newer kernel");
            }
            bits += off;
            if i + 1 < segments.len() {
                let t = self.btf.resolve_chained_type(&member)?;
                s = self.as_struct(t).ok_or_else(|| anyhow!("{root}.{seg} is not a struct in this kernel's BTF"))?;
            }
        }
        if !bits.is_multiple_of(8) {
            bail!("{root}.{path} is not byte aligned in this kernel's BTF");
        }
        Ok(bits / 8)
    }

    /// Every offset the kernel programs need.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets> {
        Ok(KernelOffsets {
            task_files: self.offset_of("task_struct", "files")?,
            task_tgid: self.offset_of("task_struct", "tgid")?,
            task_real_parent: self.offset_of("task_struct", "real_parent")?,
            files_fdt: self.offset_of("files_struct", "fdt")?,
            fdt_max_fds: self.offset_of("fdtable", "max_fds")?,
            fdt_fd: self.offset_of("fdtable", "fd")?,
            file_inode: self.offset_of("file", "f_inode")?,
            file_private_data: self.offset_of("file", "private_data")?,
            inode_mode: self.offset_of("inode", "i_mode")?,
            socket_sk: self.offset_of("socket", "sk")?,
            sk_family: self.offset_of("sock", "__sk_common.skc_family")?,
            sk_protocol: self.offset_of("sock", "sk_protocol")?,
            sk_num: self.offset_of("sock", "__sk_common.skc_num")?,
            sk_dport: self.offset_of("sock", "__sk_common.skc_dport")?,
            sk_rcv_saddr: self.offset_of("sock", "__sk_common.skc_rcv_saddr")?,
            sk_daddr: self.offset_of("sock", "__sk_common.skc_daddr")?,
            sk_v6_rcv_saddr: self.offset_of("sock", "__sk_common.skc_v6_rcv_saddr")?,
            sk_v6_daddr: self.offset_of("sock", "__sk_common.skc_v6_daddr")?,
            sk_err: self.offset_of("sock", "sk_err")?,
            task_exit_code: self.offset_of("task_struct", "exit_code")?,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against this machine's real BTF: every field must resolve, and a few offsets
    /// are cross-checked against facts that hold on every kernel.
    #[test]
    fn resolves_all_offsets_from_running_kernel() {
        let btf = KernelBtf::from_file(super::super::preflight::BTF_PATH).expect("kernel BTF");
        let o = btf.kernel_offsets().expect("offsets");
        // skc_daddr and skc_rcv_saddr are the two halves of skc_addrpair, in that order.
        assert_eq!(o.sk_rcv_saddr, o.sk_daddr + 4);
        // skc_dport and skc_num are the two halves of skc_portpair.
        assert_eq!(o.sk_num, o.sk_dport + 2);
        // __sk_common is the first member of struct sock.
        assert!(o.sk_family < 64);
        assert!(btf.offset_of("sock", "no_such_field").is_err());
    }
}
