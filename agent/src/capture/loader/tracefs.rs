//! Syscall tracepoint record layouts, checked against tracefs before load.
//!
//! The programs read syscall arguments at fixed offsets of the tracepoint record (the
//! kernel's `trace_event_raw_sys_enter`: args start at byte 16, 8 bytes each; the return
//! value of `sys_exit_*` at byte 16). That layout is described by each tracepoint's
//! `format` file; if a kernel ever disagrees, refuse to load instead of reading garbage.
//!
//! Newer kernels (seen on Debian's 7.3.4; not on 6.18) append `__data_loc` fields after the
//! arguments of some syscalls (`sys_enter_write` has `__data_loc char[] __buf_val`: the
//! user buffer's content, copied for ftrace). They are dynamic data placed after the fixed
//! arguments, which keep their offsets, and are not in what a BPF program's context holds;
//! they are accepted as long as they come after the last argument.

use std::path::Path;

use anyhow::{bail, Context, Result};

struct Field {
    name: String,
    offset: usize,
    size: usize,
    /// `__data_loc`/`__rel_loc`: a reference to data appended after the fixed fields.
    dynamic: bool,
}

fn parse_format(text: &str) -> Vec<Field> {
    let mut fields = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let decl = parts.next().unwrap_or_default();
        let name = decl.rsplit(|c: char| c.is_whitespace() || c == '*').next().unwrap_or_default().to_string();
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        let dynamic = decl.starts_with("__data_loc ") || decl.starts_with("__rel_loc ");
        if let (Some(offset), Some(size)) = (offset, size) {
            fields.push(Field { name, offset, size, dynamic });
        }
    }
    fields
}

/// Checks `syscalls/<name>` has the layout the programs assume.
pub fn check_syscall_layout(tracefs: &Path, name: &str) -> Result<()> {
    let path = tracefs.join("events/syscalls").join(name).join("format");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("cannot read {} (does this kernel have syscall tracepoints, CONFIG_FTRACE_SYSCALLS?)", path.display())
    })?;
    check_layout_text(name, &text)
}

fn check_layout_text(name: &str, text: &str) -> Result<()> {
    let fields = parse_format(text);
    let own = fields.iter().filter(|f| !f.name.starts_with("common_") && f.name != "__syscall_nr");
    let (dynamic, args): (Vec<&Field>, Vec<&Field>) = own.partition(|f| f.dynamic);
    if args.is_empty() {
        bail!("tracepoint syscalls/{name} has no argument fields in its format file");
    }
    let args_end = 16 + 8 * args.len();
    if let Some(f) = dynamic.iter().find(|f| f.offset < args_end) {
        bail!(
            "tracepoint syscalls/{name}: dynamic field {} is at offset {}, among the arguments \
             (they end at {args_end}); this kernel's syscall tracepoint layout is not supported",
            f.name,
            f.offset
        );
    }
    for (i, f) in args.iter().enumerate() {
        if f.offset != 16 + 8 * i || f.size != 8 {
            bail!(
                "tracepoint syscalls/{name}: field {} is at offset {} size {}, hoptrace expects \
                 offset {} size 8; this kernel's syscall tracepoint layout is not supported",
                f.name,
                f.offset,
                f.size,
                16 + 8 * i
            );
        }
    }
    Ok(())
}

/// Offsets of `names` in a tracepoint's record (`category/name`), from its format file.
pub fn field_offsets(tracefs: &Path, tracepoint: &str, names: &[&str]) -> Result<Vec<u32>> {
    let path = tracefs.join("events").join(tracepoint).join("format");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let fields = parse_format(&text);
    names
        .iter()
        .map(|n| {
            fields
                .iter()
                .find(|f| f.name == *n || f.name.strip_suffix(']').and_then(|x| x.split('[').next()) == Some(*n))
                .map(|f| f.offset as u32)
                .with_context(|| format!("tracepoint {tracepoint} has no field {n} on this kernel"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTER_READ: &str = "name: sys_enter_read
ID: 700
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:char * buf;\toffset:24;\tsize:8;\tsigned:0;
\tfield:size_t count;\toffset:32;\tsize:8;\tsigned:0;
";

    #[test]
    fn accepts_standard_layout_and_rejects_others() {
        check_layout_text("sys_enter_read", ENTER_READ).unwrap();
        let moved = ENTER_READ.replace("offset:24;", "offset:28;");
        let err = check_layout_text("sys_enter_read", &moved).unwrap_err().to_string();
        assert!(err.contains("buf") && err.contains("not supported"), "{err}");
    }

    /// Debian's 7.3.4 kernel: the user buffer's content appended after the arguments.
    #[test]
    fn accepts_dynamic_fields_after_the_arguments() {
        let write = ENTER_READ.replace("sys_enter_read", "sys_enter_write")
            + "\tfield:__data_loc char[] __buf_val;\toffset:40;\tsize:4;\tsigned:0;\n";
        check_layout_text("sys_enter_write", &write).unwrap();
        // Among the arguments it would move them: refused.
        let inside = write.replace("offset:40;", "offset:32;");
        let err = check_layout_text("sys_enter_write", &inside).unwrap_err().to_string();
        assert!(err.contains("dynamic field __buf_val") && err.contains("not supported"), "{err}");
        // A fixed field of another size is still refused.
        let wide = write.replace("__data_loc char[] __buf_val;\toffset:40;\tsize:4", "int extra;\toffset:40;\tsize:4");
        assert!(check_layout_text("sys_enter_write", &wide).is_err());
    }
}
