//! Syscall tracepoint record layouts, checked against tracefs before load.
//!
//! The programs read syscall arguments at fixed offsets of the tracepoint record (the
//! kernel's `trace_event_raw_sys_enter`: args start at byte 16, 8 bytes each; the return
//! value of `sys_exit_*` at byte 16). That layout is described by each tracepoint's
//! `format` file; if a kernel ever disagrees, refuse to load instead of reading garbage.

use std::path::Path;

use anyhow::{bail, Context, Result};

struct Field {
    name: String,
    offset: usize,
    size: usize,
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
        if let (Some(offset), Some(size)) = (offset, size) {
            fields.push(Field { name, offset, size });
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
    let args: Vec<&Field> =
        fields.iter().filter(|f| !f.name.starts_with("common_") && f.name != "__syscall_nr").collect();
    if args.is_empty() {
        bail!("tracepoint syscalls/{name} has no argument fields in its format file");
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
}
