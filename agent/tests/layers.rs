//! The architecture, checked: `agent/src`'s top-level modules form layers in data-path
//! order, and a module may use only the layers before it (no cycles); the commands never
//! import each other; only the event decoder touches the kernel's record structs.
//!
//! Test code (`tests.rs` files and `#[cfg(test)]` modules) is exempt: a test may build
//! its fixtures from any layer.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// Layer order of `agent/src` (see lib.rs): each may use only the ones before it.
const LAYERS: [&str; 12] =
    ["util", "model", "resource", "capture", "protocols", "policy", "gaps", "traces", "export", "ops", "config", "cli"];

/// The commands under `cli/`; each may use the shared probe options, never another command.
const COMMANDS: [&str; 3] = ["run", "capture", "check"];

/// The `#[repr(C)]` record structs of `hoptrace_common` that only `capture/events.rs` reads.
const KERNEL_RECORDS: [&str; 5] = ["DataHeader", "OpenEvent", "CloseEvent", "ConnectFailedEvent", "ExecEvent"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read agent/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(path);
        }
    }
}

/// The file's text without `#[cfg(test)]` items (a `mod x;` line or a braced block).
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut depth = 0i32;
        for next in lines.by_ref() {
            depth += next.matches('{').count() as i32 - next.matches('}').count() as i32;
            if depth <= 0 && (next.contains('}') || next.trim_end().ends_with(';')) {
                break;
            }
        }
    }
    out
}

/// Top-level modules a text refers to through `crate::`, including `use crate::{a, b::c}`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            let mut at_start = true;
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => at_start = true,
                    c if depth == 1 && at_start && (c.is_alphanumeric() || c == '_') => item.push(c),
                    _ if depth == 1 && at_start && !item.is_empty() => {
                        refs.insert(std::mem::take(&mut item));
                        at_start = false;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
            if !item.is_empty() {
                refs.insert(item);
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            refs.insert(name);
        }
    }
    refs
}

#[test]
fn modules_use_only_earlier_layers_and_commands_stay_apart() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        let mut parts = rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string());
        let top = parts.next().unwrap();
        let Some(own) = LAYERS.iter().position(|l| *l == top) else {
            assert!(top == "lib" || top == "main", "{}: a top-level module missing from LAYERS", rel.display());
            continue;
        };
        let text = without_tests(&fs::read_to_string(file).unwrap());
        for r in crate_refs(&text) {
            match LAYERS.iter().position(|l| *l == r) {
                Some(layer) if layer > own => {
                    problems.push(format!("{}: uses `{r}`, a later layer than `{top}`", rel.display()))
                }
                Some(_) => {}
                None => problems.push(format!("{}: uses `crate::{r}`, which is no layer", rel.display())),
            }
        }
        if top == "cli" {
            let me = parts.next().unwrap_or_default();
            for cmd in COMMANDS.iter().filter(|c| **c != me) {
                if text.contains(&format!("cli::{cmd}")) || text.contains(&format!("super::{cmd}")) {
                    problems.push(format!("{}: the command `{me}` imports the command `{cmd}`", rel.display()));
                }
            }
        }
        if rel != Path::new("capture/events.rs") {
            for s in KERNEL_RECORDS.iter().filter(|s| text.contains(*s)) {
                problems.push(format!("{}: reads the kernel record `{s}` (only capture/events.rs may)", rel.display()));
            }
        }
    }
    assert!(problems.is_empty(), "layering broken:\n{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_grouped_and_plain_paths() {
    let text = "use crate::{\n    capture::conntrack::Connection,\n    traces::{a, b},\n    util,\n};\nlet x = crate::ops::server::spawn();\n#[cfg(test)]\nmod tests {\n    use crate::cli::run;\n}\n";
    let refs = crate_refs(&without_tests(text));
    assert_eq!(refs, ["capture", "ops", "traces", "util"].map(String::from).into_iter().collect());
}
