//! `cargo xtask check-links`: every relative link in the repository's Markdown files points
//! at a file or directory that exists, and a `#fragment` into a Markdown file at one of its
//! headings (GitHub's anchor rules). Links to other sites are not fetched.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::progress::say;

/// Directories never searched for Markdown: build output, VCS data, vendored corpora.
const SKIP_DIRS: &[&str] = &["target", ".git", "node_modules", "corpus", "seeds"];

pub fn check_links(root: &Path) -> Result<()> {
    let mut files = Vec::new();
    markdown_files(root, &mut files)?;
    files.sort();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for (line, dest) in links(&text) {
            checked += 1;
            if let Err(why) = resolve(file, &text, &dest) {
                let shown = file.strip_prefix(root).unwrap_or(file);
                broken.push(format!("{}:{line}: `{dest}`: {why}", shown.display()));
            }
        }
    }
    for b in &broken {
        say(&format!("xtask check-links: {b}"));
    }
    if !broken.is_empty() {
        bail!("{} broken link(s) in {} Markdown files", broken.len(), files.len());
    }
    say(&format!("xtask check-links: {checked} relative links in {} Markdown files resolve", files.len()));
    Ok(())
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type()?.is_dir() {
            if !name.starts_with('.') && !SKIP_DIRS.contains(&name.as_ref()) {
                markdown_files(&path, out)?;
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
    Ok(())
}

/// The relative link destinations of a Markdown text, with their line numbers: inline links
/// and images `[text](dest)` and reference definitions `[label]: dest`, outside code blocks
/// and code spans.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fence: Option<&str> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if let Some(f) = fence {
            if trimmed.starts_with(f) {
                fence = None;
            }
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(&trimmed[..3]);
            continue;
        }
        let line = strip_code_spans(raw);
        let mut dests = Vec::new();
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            dests.push(after[..end].to_string());
            rest = &after[end..];
        }
        if let Some(def) = line.trim_start().strip_prefix('[') {
            if let Some((_, dest)) = def.split_once("]: ") {
                dests.push(dest.to_string());
            }
        }
        for dest in dests {
            // `<dest>` and a trailing title: `dest "title"`.
            let dest = dest.trim().trim_start_matches('<');
            let dest = dest.split_whitespace().next().unwrap_or("").trim_end_matches('>');
            if !dest.is_empty() && !dest.contains("://") && !dest.starts_with("mailto:") {
                out.push((i + 1, dest.to_string()));
            }
        }
    }
    out
}

fn strip_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

fn resolve(file: &Path, text: &str, dest: &str) -> std::result::Result<(), String> {
    let (path, fragment) = match dest.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (dest, None),
    };
    let (target, target_text) = if path.is_empty() {
        (file.to_path_buf(), Some(text.to_string()))
    } else {
        let target = file.parent().unwrap_or(Path::new(".")).join(path);
        if !target.exists() {
            return Err("no such file or directory".into());
        }
        (target, None)
    };
    let Some(fragment) = fragment else {
        return Ok(());
    };
    if target.extension().is_none_or(|e| e != "md") {
        return Ok(());
    }
    let body = match target_text {
        Some(t) => t,
        None => std::fs::read_to_string(&target).map_err(|e| e.to_string())?,
    };
    if anchors(&body).iter().any(|a| a == fragment) {
        Ok(())
    } else {
        Err(format!("no heading with anchor #{fragment}"))
    }
}

/// The anchors GitHub gives a Markdown file's headings: the heading's text in lower case,
/// without punctuation other than `-` and `_`, spaces as `-`, and `-1`, `-2`… on repeats.
fn anchors(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !t.starts_with('#') {
            continue;
        }
        let heading = t.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = slug(heading.trim().trim_end_matches('#').trim());
        let mut anchor = base.clone();
        let mut n = 0;
        while out.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        out.push(anchor);
    }
    out
}

fn slug(heading: &str) -> String {
    // Link text stays, link targets go: `[text](url)` reads as `text`.
    let mut plain = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find("](") {
        plain.push_str(&rest[..open]);
        rest = rest[open + 2..].split_once(')').map_or("", |(_, r)| r);
    }
    plain.push_str(rest);
    plain
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c.to_lowercase().next().unwrap_or(c)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_links_outside_code() {
        let md = "See [a](docs/a.md) and `[b](nope.md)`.\n```\n[c](nope.md)\n```\n[ref]: deploy/x.yaml\n![img](i.png \"t\") [w](https://x.org/y)";
        let found: Vec<_> = links(md).into_iter().map(|(l, d)| format!("{l}:{d}")).collect();
        assert_eq!(found, ["1:docs/a.md", "5:deploy/x.yaml", "6:i.png"]);
    }

    #[test]
    fn github_anchors() {
        let md = "# Run on a VM\n## `hoptrace check` — the CI gate\n# Run on a VM\n## [Link](x.md) text";
        assert_eq!(anchors(md), ["run-on-a-vm", "hoptrace-check--the-ci-gate", "run-on-a-vm-1", "link-text"]);
    }
}
