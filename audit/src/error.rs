//! Errors: every problem names the document, the policy and the field, so a user can find it
//! in a file of many documents without counting lines.

use std::fmt;

use crate::MAX_CLAUSES;

/// One thing wrong with the input. Displays as
/// `doc 0 (AuditPolicy web-baseline): spec.rules[2].syscalls[1]: unknown syscall "opena" (did you mean "openat"?)`;
/// parts that are unknown are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Index of the YAML document (0-based, counting empty ones), or of the JSON value.
    pub doc: Option<usize>,
    /// `AuditPolicy web-baseline` (just `AuditPolicy` while the name is unknown).
    pub object: Option<String>,
    /// Path of the field: `spec.rules[2].match.flags[0]`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.doc, &self.object) {
            (Some(doc), Some(object)) => write!(f, "doc {doc} ({object}): ")?,
            (Some(doc), None) => write!(f, "doc {doc}: ")?,
            (None, Some(object)) => write!(f, "{object}: ")?,
            (None, None) => {}
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The rules are invalid (or not YAML/JSON); one problem per line, all of them.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
    /// The policies selecting one container need more distinct flag matches for one syscall
    /// (or one path prefix of it) than the kernel side evaluates ([`MAX_CLAUSES`]). berth
    /// refuses rather than folding matches together, which would widen a `kill`.
    #[error(
        "container needs more than {MAX_CLAUSES} distinct flag matches for {syscall}{}: \
         selected by {}; merge rules with the same action, or use fewer distinct flag sets",
        .prefix.as_ref().map(|p| format!(" (path prefix {p:?})")).unwrap_or_default(),
        display_policies(.policies)
    )]
    TooManyClauses {
        syscall: String,
        /// The path prefix whose entry overflowed; None for the syscall's path-less rules.
        prefix: Option<String>,
        /// The policies selecting the container.
        policies: Vec<String>,
    },
}

impl Error {
    /// The problems of an [`Error::Invalid`]; empty otherwise.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Error::Invalid(problems) => problems,
            Error::TooManyClauses { .. } => &[],
        }
    }
}

fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

fn display_policies(policies: &[String]) -> String {
    let kind = if policies.len() == 1 {
        "policy"
    } else {
        "policies"
    };
    format!("{kind} {}", policies.join(", "))
}
