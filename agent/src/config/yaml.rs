//! The configuration file as a tree of YAML nodes that remember where they were written.
//!
//! Deserializing straight into structs (serde) stops at the first problem and loses
//! positions; the schema pass in [`super::schema`] instead walks this tree, so it can report
//! every problem in one run, each at its own line and column.
//!
//! Only the subset of YAML a configuration needs is accepted: one document of mappings,
//! sequences and scalars. Aliases are refused (a configuration never needs them, and
//! expanding them is how small files become huge trees), as is nesting deeper than
//! [`MAX_DEPTH`], which bounds what a hostile file can make the agent build.

use std::panic::{catch_unwind, AssertUnwindSafe};

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, Tag};

use super::Diagnostic;

/// Deepest nesting of mappings and sequences accepted. The schema needs four levels
/// (`services` → rule → `match` → value); the margin is for readable diagnostics on files
/// that are a little off, not for data.
pub(crate) const MAX_DEPTH: usize = 32;

/// Where a value came from: a position in the file (1-based line and column, in
/// characters), or an environment variable that overrides a setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    File { line: usize, column: usize },
    Env { var: String, value: String },
}

impl Origin {
    fn of(span: &Span) -> Self {
        Origin::File { line: span.start.line(), column: span.start.col() + 1 }
    }

    /// A diagnostic about the value found here.
    pub(crate) fn diagnostic(&self, message: impl Into<String>) -> Diagnostic {
        let message = message.into();
        match self {
            Origin::File { line, column } => Diagnostic { line: *line, column: *column, message },
            // Not in the file: line 0, and the message names the variable and its value.
            Origin::Env { var, value } => {
                Diagnostic { line: 0, column: 0, message: format!("{var}={value:?}: {message}") }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub origin: Origin,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    /// `quoted` for quoted and block scalars, and `!!str`: such a value is always a string,
    /// never a number, a boolean or null.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    /// Entries in file order; duplicates are kept so the schema can report them.
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub(crate) fn scalar(origin: Origin, text: impl Into<String>) -> Self {
        Node { origin, kind: Kind::Scalar { text: text.into(), quoted: false } }
    }

    /// YAML 1.2 core schema null: empty, `~`, `null`.
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, quoted: false }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// How the value reads in a diagnostic ("got …").
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            _ if self.is_null() => "nothing".into(),
            Kind::Scalar { text, quoted: true } => format!("the string {:?}", truncate(text)),
            Kind::Scalar { text, quoted: false } => format!("`{}`", truncate(text)),
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
        }
    }
}

/// Long values are cut in messages: a diagnostic is one line.
fn truncate(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

/// An open collection while events arrive.
enum Frame {
    Seq(Origin, Vec<Node>),
    Map(Origin, Vec<(Node, Node)>, Option<Node>),
}

/// Parses `text` into its root node (`None` for an empty stream), plus the problems that
/// did not stop parsing (tags). A syntax error is the only diagnostic when there is one.
pub(crate) fn parse(text: &str) -> Result<(Option<Node>, Vec<Diagnostic>), Diagnostic> {
    // The parser is not ours: a bug in it must become a diagnostic, not take the agent down.
    match catch_unwind(AssertUnwindSafe(|| build(text))) {
        Ok(r) => r,
        Err(_) => Err(Diagnostic { line: 1, column: 1, message: "the YAML parser failed on this file".into() }),
    }
}

fn syntax(e: &ScanError) -> Diagnostic {
    let m = e.marker();
    Diagnostic { line: m.line().max(1), column: m.col() + 1, message: format!("YAML syntax error: {}", e.info()) }
}

fn build(text: &str) -> Result<(Option<Node>, Vec<Diagnostic>), Diagnostic> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    let mut diags = Vec::new();
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| syntax(&e))?;
        let origin = Origin::of(&span);
        let done = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(
                        origin.diagnostic("a configuration file holds one YAML document; remove the second `---`")
                    );
                }
                None
            }
            Event::Alias(_) => {
                return Err(origin
                    .diagnostic("YAML aliases (`*name`) are not supported in the configuration; write the value out"));
            }
            Event::Scalar(value, style, _, tag) => {
                let forced_str = tag.as_deref().is_some_and(|t| is_core(t, "str"));
                if let Some(t) = tag.as_deref().filter(|_| !forced_str) {
                    diags.push(origin.diagnostic(format!("YAML tag `{t}` is not supported here")));
                }
                let quoted = forced_str || style != ScalarStyle::Plain;
                Some(Node { origin, kind: Kind::Scalar { text: value.into_owned(), quoted } })
            }
            Event::SequenceStart(_, ref tag) | Event::MappingStart(_, ref tag) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(origin.diagnostic(format!("nested deeper than {MAX_DEPTH} levels")));
                }
                if let Some(t) = tag.as_deref() {
                    diags.push(origin.diagnostic(format!("YAML tag `{t}` is not supported here")));
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq(origin, Vec::new())
                } else {
                    Frame::Map(origin, Vec::new(), None)
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(origin, items)) => Some(Node { origin, kind: Kind::Seq(items) }),
                Some(Frame::Map(origin, entries, _)) => Some(Node { origin, kind: Kind::Map(entries) }),
                None => None,
            },
        };
        let Some(node) = done else { continue };
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
    }
    Ok((root, diags))
}

fn is_core(tag: &Tag, suffix: &str) -> bool {
    tag.is_yaml_core_schema() && tag.suffix == suffix
}
