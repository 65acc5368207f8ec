//! Value checks shared by the sections. Each reports at the value and returns None when
//! it is not acceptable.

use std::time::Duration;

use super::{did_you_mean, Ctx, Kind, Node, Origin, MAX_MS};

/// A mapping's entries as `(key, key node, value)`; keys must be strings and unique. `null`
/// (a key written with nothing after it) is an empty mapping.
pub(super) fn entries<'n>(c: &mut Ctx, node: &'n Node, path: &str) -> Vec<(String, &'n Node, &'n Node)> {
    let pairs = match &node.kind {
        Kind::Map(pairs) => pairs,
        _ if node.is_null() => return Vec::new(),
        _ => {
            c.error(node, format!("`{path}` must be a mapping (`key: value` lines), got {}", node.describe()));
            return Vec::new();
        }
    };
    let mut out: Vec<(String, &Node, &Node)> = Vec::new();
    for (k, v) in pairs {
        let Kind::Scalar { text, .. } = &k.kind else {
            c.error(k, format!("keys in `{path}` must be plain names, got {}", k.describe()));
            continue;
        };
        if let Some((_, first, _)) = out.iter().find(|(t, _, _)| t == text) {
            let first = match first.origin {
                Origin::File { line, .. } => format!(" (first at line {line})"),
                Origin::Env { .. } => String::new(),
            };
            c.error(k, format!("duplicate key `{text}` in `{path}`{first}"));
            continue;
        }
        out.push((text.clone(), k, v));
    }
    out
}

/// A list; `null` is an empty list.
pub(super) fn list<'n>(c: &mut Ctx, node: &'n Node, path: &str) -> Option<&'n [Node]> {
    match &node.kind {
        Kind::Seq(items) => Some(items),
        _ if node.is_null() => Some(&[]),
        _ => {
            c.error(node, format!("`{path}` must be a list (`[a, b]` or `- a` lines), got {}", node.describe()));
            None
        }
    }
}

/// Any scalar but null, as written: `service.version: 1.4` is the string "1.4".
pub(super) fn string(c: &mut Ctx, node: &Node, what: &str) -> Option<String> {
    match &node.kind {
        _ if node.is_null() => {
            c.error(node, format!("{} has no value", capitalize_code(what)));
            None
        }
        Kind::Scalar { text, .. } => Some(text.clone()),
        _ => {
            c.error(node, format!("{} must be a string, got {}", capitalize_code(what), node.describe()));
            None
        }
    }
}

pub(super) fn non_empty(c: &mut Ctx, node: &Node, what: &str) -> Option<String> {
    let v = string(c, node, what)?;
    if v.trim().is_empty() {
        c.error(node, format!("{} is empty", capitalize_code(what)));
        return None;
    }
    Some(v)
}

/// A string that may be left out: `null` means "not set" and selects `unset_means`.
pub(super) fn optional_string(c: &mut Ctx, node: &Node, path: &str, unset_means: &str) -> Option<Option<String>> {
    if node.is_null() {
        return Some(None);
    }
    let v = string(c, node, &format!("`{path}`"))?;
    if v.trim().is_empty() {
        c.error(node, format!("`{path}` is empty; leave it out {unset_means}"));
        return None;
    }
    Some(Some(v))
}

pub(super) fn boolean(c: &mut Ctx, node: &Node, path: &str) -> Option<bool> {
    if let Kind::Scalar { text, quoted: false } = &node.kind {
        match text.as_str() {
            "true" | "True" | "TRUE" => return Some(true),
            "false" | "False" | "FALSE" => return Some(false),
            _ => {}
        }
    }
    c.error(node, format!("`{path}` must be true or false, got {}", node.describe()));
    None
}

/// A whole number in `min..=max`, written plainly (a quoted "8080" is a string).
pub(super) fn uint(c: &mut Ctx, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
    // `None`: not a whole number at all; `Some(None)`: one, but negative.
    let number: Option<Option<u64>> = match &node.kind {
        Kind::Scalar { text, quoted: false } => {
            let (negative, digits) = match text.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, text.strip_prefix('+').unwrap_or(text)),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                // All digits: only overflow can fail, and that is out of range as well.
                let v = digits.parse::<u64>().unwrap_or(u64::MAX);
                Some(if negative && v != 0 { None } else { Some(v) })
            }
        }
        _ => None,
    };
    match number {
        Some(Some(v)) if (min..=max).contains(&v) => Some(v),
        Some(v) => {
            let bound = match v {
                Some(v) if v > max => format!("at most {max}"),
                _ if min == 1 => "greater than zero".to_owned(),
                _ => format!("at least {min}"),
            };
            c.error(node, format!("`{path}` must be {bound}, got {}", node.describe()));
            None
        }
        None => {
            c.error(node, format!("`{path}` must be a whole number, got {}", node.describe()));
            None
        }
    }
}

pub(super) fn millis(c: &mut Ctx, node: &Node, path: &str) -> Option<Duration> {
    uint(c, node, path, 1, MAX_MS).map(Duration::from_millis)
}

pub(super) fn uint_list(c: &mut Ctx, node: &Node, path: &str, min: u64, max: u64) -> Option<Vec<u64>> {
    let items = list(c, node, path)?;
    let before = c.diags.len();
    let values: Vec<u64> =
        items.iter().enumerate().filter_map(|(i, item)| uint(c, item, &format!("{path}[{i}]"), min, max)).collect();
    (c.diags.len() == before).then_some(values)
}

pub(super) fn choice(c: &mut Ctx, node: &Node, path: &str, allowed: &[&'static str]) -> Option<&'static str> {
    if let Kind::Scalar { text, .. } = &node.kind {
        if let Some(v) = allowed.iter().find(|a| **a == text.as_str()) {
            return Some(v);
        }
    }
    let options = allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(" or ");
    let hint = match &node.kind {
        Kind::Scalar { text, .. } => did_you_mean(text, allowed.iter().copied()),
        _ => String::new(),
    };
    c.error(node, format!("`{path}` must be {options}, got {}{hint}", node.describe()));
    None
}

/// Header names as the agent compares them: lowercase RFC 9110 tokens.
pub(super) fn header_name(c: &mut Ctx, at: &Node, name: &str) -> bool {
    let tchar = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        let why = if !name.is_empty() && name.to_ascii_lowercase().bytes().all(tchar) {
            format!("header name `{name}` must be lowercase (`{}`)", name.to_ascii_lowercase())
        } else {
            format!("{:?} is not a valid HTTP header name", name)
        };
        c.error(at, why);
        return false;
    }
    true
}

/// "`x` …" stays as is; "a thing …" becomes "A thing …" at the start of a message.
fn capitalize_code(what: &str) -> String {
    let mut chars = what.chars();
    match chars.next() {
        Some(f) if f.is_ascii_lowercase() => f.to_ascii_uppercase().to_string() + chars.as_str(),
        _ => what.to_owned(),
    }
}

/// A list of non-empty strings, each accepted by `valid` (which reports its own problem);
/// None when the list itself is malformed or any item was refused.
pub(super) fn string_list(
    c: &mut Ctx,
    n: &Node,
    what: &str,
    valid: fn(&mut Ctx, &Node, &str) -> bool,
) -> Option<Vec<String>> {
    let items = list(c, n, what)?;
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        match string(c, item, what) {
            Some(v) if !v.is_empty() && valid(c, item, &v) => out.push(v),
            Some(v) if v.is_empty() => {
                c.error(item, format!("`{what}` entries must not be empty"));
                ok = false;
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}
