//! Errors: every problem names where it is (file and document), the policy and the field.

use std::fmt;

/// One thing wrong with the input. Displays as
/// `np.yaml: document 2: NetworkPolicy default/web: spec.ingress[0].ports[1].port: 70000 is out of range 1-65535`
/// (parts that are unknown are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `FILE: document N` (1-based; `, items[i]` inside a List); None for objects not parsed
    /// from bytes.
    pub location: Option<String>,
    /// `NetworkPolicy default/web`.
    pub object: Option<String>,
    /// JSON path of the field: `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(object: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            location: None,
            object: Some(object.to_owned()),
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub(crate) fn at(location: &str, message: impl Into<String>) -> Self {
        Problem {
            location: Some(location.to_owned()),
            object: None,
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in [&self.location, &self.object, &self.field]
            .into_iter()
            .flatten()
        {
            write!(f, "{part}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes are not YAML or JSON (the message has the line and column).
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    /// One or more policies are invalid. One problem per line.
    #[error("{}", display_problems(.problems))]
    Invalid { problems: Vec<Problem> },
}

impl Error {
    /// The problems of an [`Error::Invalid`]; empty for a syntax error.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Error::Syntax { .. } => &[],
            Error::Invalid { problems } => problems,
        }
    }
}

fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}
