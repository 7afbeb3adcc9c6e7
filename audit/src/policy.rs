//! Bytes to validated [`AuditPolicy`]s: decoding (YAML or JSON, several documents) and the
//! checks that need syscall knowledge.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use berth_netpolicy::{Selector, parse_selector};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Problem};
use crate::syscalls::{self, FlagFamily, Resolved};

/// The `apiVersion` every document must have.
pub const API_VERSION: &str = "berth.io/v1alpha1";
/// The `kind` every document must have.
pub const KIND: &str = "AuditPolicy";
/// Longest path prefix, in bytes: the kernel side compares prefixes in a fixed-size buffer.
pub const MAX_PATH_PREFIX: usize = 64;

/// A validated audit policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPolicy {
    pub name: String,
    /// Containers (by their labels) the policy applies to; empty: every container.
    pub selector: Selector,
    pub rules: Vec<Rule>,
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: Option<String>,
    pub syscalls: Syscalls,
    pub action: Action,
    /// Any of these (absolute, NUL-free, at most [`MAX_PATH_PREFIX`] bytes, distinct, in
    /// input order); empty: no path match. Only on syscalls with a path argument.
    pub path_prefixes: Vec<String>,
    /// The call matches when any of these bits is set in its flags argument; 0: no flags
    /// match (every call). Multi-bit names contribute their distinguishing bit only (see
    /// the crate docs).
    pub flags_mask: u64,
}

/// The syscalls a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Syscalls {
    /// `"*"`: every syscall (only with [`Action::Count`]).
    All,
    /// x86_64 numbers, distinct, in input order.
    Named(Vec<u32>),
}

/// What happens to a matching call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Per-syscall counters, no event.
    Count,
    /// One event per matching call.
    Record,
    /// SIGKILL at syscall entry, and an event.
    Kill,
    /// The runtime installs a seccomp rule returning EPERM when the container starts.
    Deny,
}

/// [`crate::Clause::actions`] bit: count the call.
pub const ACTION_COUNT: u32 = 1 << 0;
/// [`crate::Clause::actions`] bit: emit an event.
pub const ACTION_RECORD: u32 = 1 << 1;
/// [`crate::Clause::actions`] bit: SIGKILL the caller at syscall entry.
pub const ACTION_KILL: u32 = 1 << 2;

impl Action {
    /// The kernel side's action bits. `kill` includes `record` (a killed call is reported);
    /// `deny` has none: seccomp handles it before the tracepoint runs.
    pub fn bits(self) -> u32 {
        match self {
            Action::Count => ACTION_COUNT,
            Action::Record => ACTION_RECORD,
            Action::Kill => ACTION_KILL | ACTION_RECORD,
            Action::Deny => 0,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::Count => "count",
            Action::Record => "record",
            Action::Kill => "kill",
            Action::Deny => "deny",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ------------------------------------------------------------------------ wire format

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyDoc {
    // Checked before decoding (a document of another kind is not decoded at all); listed
    // here so that they are not unknown fields.
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(default)]
    metadata: MetadataDoc,
    spec: SpecDoc,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MetadataDoc {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecDoc {
    selector: Option<SelectorDoc>,
    #[serde(default)]
    rules: Vec<RuleDoc>,
}

/// A `LabelSelector`, decoded strictly (k8s-openapi's own type ignores unknown fields).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SelectorDoc {
    match_labels: Option<BTreeMap<String, String>>,
    match_expressions: Option<Vec<RequirementDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequirementDoc {
    key: String,
    operator: String,
    values: Option<Vec<String>>,
}

impl SelectorDoc {
    fn into_label_selector(self) -> LabelSelector {
        LabelSelector {
            match_labels: self.match_labels,
            match_expressions: self.match_expressions.map(|exprs| {
                exprs
                    .into_iter()
                    .map(|r| LabelSelectorRequirement {
                        key: r.key,
                        operator: r.operator,
                        values: r.values,
                    })
                    .collect()
            }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    name: Option<String>,
    #[serde(default)]
    syscalls: Vec<String>,
    action: Action,
    #[serde(rename = "match")]
    matches: Option<MatchDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MatchDoc {
    path_prefix: Option<Vec<String>>,
    flags: Option<Vec<FlagDoc>>,
}

/// A flag: a name, or bits as an integer (YAML integer, or a decimal or `0x` string).
enum FlagDoc {
    Name(String),
    Bits(u64),
}

impl<'de> Deserialize<'de> for FlagDoc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = FlagDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a flag name or a non-negative integer")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<FlagDoc, E> {
                Ok(FlagDoc::Bits(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<FlagDoc, E> {
                u64::try_from(v)
                    .map(FlagDoc::Bits)
                    .map_err(|_| E::custom(format!("{v} is negative: flags are bits")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FlagDoc, E> {
                let number =
                    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                        Some(u64::from_str_radix(hex, 16))
                    } else if v.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
                        Some(v.parse::<u64>())
                    } else {
                        None
                    };
                match number {
                    None => Ok(FlagDoc::Name(v.to_owned())),
                    Some(Ok(bits)) => Ok(FlagDoc::Bits(bits)),
                    Some(Err(e)) => Err(E::custom(format!("{v:?} is not a valid integer: {e}"))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

// ------------------------------------------------------------------------ parsing

/// Parses and validates `bytes`: one or more YAML documents (`---`; merge keys allowed), or
/// JSON (one or several concatenated objects). Every problem of every document is reported
/// at once; nothing is returned unless every policy is valid. Empty documents are skipped
/// (they still count for document indexes).
pub fn parse(bytes: &[u8]) -> Result<Vec<AuditPolicy>, Error> {
    let (docs, syntax) = documents(bytes);
    let mut problems = Vec::new();
    let mut policies: Vec<AuditPolicy> = Vec::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, doc) in docs.iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let mut c = Checker {
            doc: i,
            object: object_name(doc),
            problems: Vec::new(),
        };
        let policy = c.document(doc);
        if let Some(p) = &policy {
            if let Some(first) = names.get(&p.name) {
                c.problem(
                    "metadata.name",
                    format!("duplicate policy name {:?} (also doc {first})", p.name),
                );
            } else {
                names.insert(p.name.clone(), i);
            }
        }
        match policy {
            Some(p) if c.problems.is_empty() => policies.push(p),
            _ => problems.append(&mut c.problems),
        }
    }
    problems.extend(syntax);
    if problems.is_empty() {
        Ok(policies)
    } else {
        Err(Error::Invalid(problems))
    }
}

/// Splits the input into documents, as JSON values (a uniform tree for strict decoding).
/// A syntax error ends the input: the documents before it are still checked.
fn documents(bytes: &[u8]) -> (Vec<Value>, Option<Problem>) {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let syntax = |doc: usize, message: String| Problem {
        doc: Some(doc),
        object: None,
        field: None,
        message,
    };
    let mut docs = Vec::new();
    // JSON is YAML, but YAML parsers refuse some valid JSON (tabs as indentation), and
    // concatenated JSON objects are not one YAML document: JSON goes to a JSON parser.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        for value in serde_json::Deserializer::from_slice(bytes).into_iter::<Value>() {
            match value {
                Ok(v) => docs.push(v),
                Err(e) => {
                    let problem = syntax(docs.len(), format!("invalid JSON: {e}"));
                    return (docs, Some(problem));
                }
            }
        }
        return (docs, None);
    }
    for de in serde_yaml::Deserializer::from_slice(bytes) {
        let i = docs.len();
        let yaml = serde_yaml::Value::deserialize(de).and_then(|mut v| {
            v.apply_merge()?;
            Ok(v)
        });
        let json = match yaml {
            Ok(yaml) => serde_json::to_value(&yaml).map_err(|e| e.to_string()),
            Err(e) => return (docs, Some(syntax(i, format!("invalid YAML: {e}")))),
        };
        match json {
            Ok(v) => docs.push(v),
            // Keys that are not strings cannot be fields.
            Err(e) => return (docs, Some(syntax(i, format!("invalid document: {e}")))),
        }
    }
    (docs, None)
}

/// `AuditPolicy name` as far as it can be read before decoding, for messages; None for
/// documents of another kind, which are no policy.
fn object_name(doc: &Value) -> Option<String> {
    if doc.get("kind").and_then(Value::as_str) != Some(KIND) {
        return None;
    }
    match doc
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
    {
        Some(name) if !name.is_empty() => Some(format!("{KIND} {name}")),
        _ => Some(KIND.to_owned()),
    }
}

/// Collects the problems of one document.
struct Checker {
    doc: usize,
    object: Option<String>,
    problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            doc: Some(self.doc),
            object: self.object.clone(),
            field: (!field.is_empty()).then(|| field.to_owned()),
            message: message.into(),
        });
    }

    /// The policy of one document; None when it could not be decoded (the problem is
    /// recorded). A returned policy may still have problems recorded.
    fn document(&mut self, doc: &Value) -> Option<AuditPolicy> {
        if !doc.is_object() {
            self.problem("", format!("expected an {KIND} object (a mapping)"));
            return None;
        }
        let api = doc.get("apiVersion").and_then(Value::as_str);
        let kind = doc.get("kind").and_then(Value::as_str);
        let mut ok = true;
        if api != Some(API_VERSION) {
            let got = api.map_or_else(|| "missing".to_owned(), |a| format!("{a:?}"));
            self.problem("apiVersion", format!("must be {API_VERSION}, got {got}"));
            ok = false;
        }
        if kind != Some(KIND) {
            let got = kind.map_or_else(|| "missing".to_owned(), |k| format!("{k:?}"));
            self.problem("kind", format!("must be {KIND}, got {got}"));
            ok = false;
        }
        if !ok {
            return None; // Another kind's fields mean nothing here.
        }
        let decoded: PolicyDoc = match serde_path_to_error::deserialize(doc) {
            Ok(d) => d,
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." { String::new() } else { path };
                self.problem(&field, e.inner().to_string());
                return None;
            }
        };

        let name = decoded.metadata.name.unwrap_or_default();
        if name.is_empty() {
            self.problem("metadata.name", "is required");
        } else if !valid_name(&name) {
            self.problem(
                "metadata.name",
                format!(
                    "{name:?} is not a valid name: 1-63 lowercase letters, digits and '-', \
                     starting and ending with a letter or digit"
                ),
            );
        }

        let selector = decoded.spec.selector.map(SelectorDoc::into_label_selector);
        let selector = match parse_selector(selector.as_ref(), "spec.selector") {
            Ok(s) => s,
            Err(problems) => {
                for (field, message) in problems {
                    self.problem(&field, message);
                }
                Selector::default()
            }
        };

        if decoded.spec.rules.is_empty() {
            self.problem("spec.rules", "must have at least one rule");
        }
        let rules = decoded
            .spec
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.rule(r, &format!("spec.rules[{i}]")))
            .collect();
        Some(AuditPolicy {
            name,
            selector,
            rules,
        })
    }

    fn rule(&mut self, r: &RuleDoc, path: &str) -> Option<Rule> {
        let before = self.problems.len();
        if r.syscalls.is_empty() {
            self.problem(
                &format!("{path}.syscalls"),
                "must list at least one syscall (\"*\" for every syscall)",
            );
        }
        let syscalls = if let Some(star) = r.syscalls.iter().position(|s| s == "*") {
            if r.syscalls.len() > 1 {
                self.problem(
                    &format!("{path}.syscalls[{star}]"),
                    "\"*\" (every syscall) must be the only entry",
                );
            }
            if r.action != Action::Count {
                self.problem(
                    &format!("{path}.action"),
                    format!(
                        "\"*\" (every syscall) is only allowed with action: count, not {}",
                        r.action
                    ),
                );
            }
            if r.matches.is_some() {
                self.problem(
                    &format!("{path}.match"),
                    "not allowed with \"*\": arguments differ from syscall to syscall",
                );
            }
            Syscalls::All
        } else {
            let mut nrs = Vec::new();
            let mut specs = Vec::new();
            for (i, name) in r.syscalls.iter().enumerate() {
                let field = format!("{path}.syscalls[{i}]");
                match syscalls::resolve(name) {
                    Resolved::Nr(nr) => {
                        if !nrs.contains(&nr) {
                            nrs.push(nr);
                            specs.push((name.as_str(), syscalls::spec_of(name)));
                        }
                    }
                    Resolved::Pseudo => {
                        self.problem(&field, format!("{name:?} is not a syscall on x86_64"));
                    }
                    Resolved::Unknown => self.problem(
                        &field,
                        format!(
                            "unknown syscall {name:?}{}",
                            syscalls::suggest_syscall(name)
                        ),
                    ),
                }
            }
            if let Some(m) = &r.matches {
                self.matches(m, r.action, &specs, &format!("{path}.match"));
            }
            Syscalls::Named(nrs)
        };
        let m = r.matches.as_ref();
        let path_prefixes = self.path_prefixes(
            m.and_then(|m| m.path_prefix.as_deref()).unwrap_or_default(),
            &format!("{path}.match.pathPrefix"),
        );
        let flags_mask = m
            .and_then(|m| m.flags.as_deref())
            .map_or(0, |flags| flags_mask(flags, &r.syscalls));
        (self.problems.len() == before).then(|| Rule {
            name: r.name.clone(),
            syscalls,
            action: r.action,
            path_prefixes,
            flags_mask,
        })
    }

    /// Checks that every syscall of the rule has the arguments `match` tests, and that
    /// `deny` (seccomp) can test them; flag names are resolved per family.
    fn matches(
        &mut self,
        m: &MatchDoc,
        action: Action,
        specs: &[(&str, Option<&'static syscalls::Spec>)],
        path: &str,
    ) {
        if let Some(prefixes) = &m.path_prefix {
            let field = format!("{path}.pathPrefix");
            if prefixes.is_empty() {
                self.problem(&field, "must not be empty (omit it to match every path)");
            }
            if action == Action::Deny {
                self.problem(
                    &field,
                    "deny cannot match paths: it is enforced by seccomp, which sees only the \
                     raw syscall arguments and cannot read the memory a path points to",
                );
            }
            for (name, spec) in specs {
                if spec.and_then(|s| s.path).is_none() {
                    self.problem(&field, format!("{name} has no path argument"));
                }
            }
        }
        let Some(flags) = &m.flags else {
            return;
        };
        let field = format!("{path}.flags");
        if flags.is_empty() {
            self.problem(&field, "must not be empty (omit it to match every call)");
        }
        for (j, flag) in flags.iter().enumerate() {
            if let FlagDoc::Bits(0) = flag {
                self.problem(
                    &format!("{field}[{j}]"),
                    "0 sets no bit: flags match calls with any of the listed bits set",
                );
            }
        }
        let mut families: Vec<(FlagFamily, Vec<&str>)> = Vec::new();
        for (name, spec) in specs {
            let Some(fa) = spec.and_then(|s| s.flags) else {
                self.problem(&field, format!("{name} has no flags argument"));
                continue;
            };
            if action == Action::Deny
                && let Some(strukt) = fa.in_struct
            {
                self.problem(
                    &field,
                    format!(
                        "deny cannot match {name} flags: they are inside {strukt} in the \
                         caller's memory, which seccomp cannot read"
                    ),
                );
            }
            match families.iter_mut().find(|(f, _)| *f == fa.family) {
                Some((_, names)) => names.push(name),
                None => families.push((fa.family, vec![name])),
            }
            // Bits the argument cannot carry would make a rule that never matches.
            for (j, flag) in flags.iter().enumerate() {
                let bits = match flag {
                    FlagDoc::Bits(b) => *b,
                    FlagDoc::Name(n) => syscalls::flag_test_bits(fa.family, n).unwrap_or(0),
                };
                if bits & !fa.bits != 0 {
                    self.problem(
                        &format!("{field}[{j}]"),
                        format!(
                            "{} ({bits:#x}) cannot be set in {name}'s flags argument, which \
                             carries only bits {:#x}{}",
                            display_flag(flag),
                            fa.bits,
                            fa.note
                        ),
                    );
                }
            }
        }
        for (family, names) in families {
            for (j, flag) in flags.iter().enumerate() {
                let field = format!("{field}[{j}]");
                match flag {
                    FlagDoc::Name(n) => {
                        if let Err(message) = syscalls::flag_test_bits(family, n) {
                            let message = if family_count(specs) > 1 {
                                format!("{message} (flags of {})", names.join(", "))
                            } else {
                                message
                            };
                            self.problem(&field, message);
                        }
                    }
                    FlagDoc::Bits(_) => {}
                }
            }
        }
    }

    fn path_prefixes(&mut self, prefixes: &[String], field: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (i, p) in prefixes.iter().enumerate() {
            let field = format!("{field}[{i}]");
            if p.is_empty() {
                self.problem(&field, "must not be empty");
            } else if !p.starts_with('/') {
                self.problem(&field, format!("{p:?} must be absolute (start with /)"));
            } else if p.contains('\0') {
                self.problem(&field, format!("{p:?} must not contain NUL"));
            } else if p.len() > MAX_PATH_PREFIX {
                self.problem(
                    &field,
                    format!(
                        "{p:?} is {} bytes long: at most {MAX_PATH_PREFIX} bytes",
                        p.len()
                    ),
                );
            } else if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }
}

/// The rule's flags mask: the OR of the bits its flags test. Names are resolved in the
/// family of the rule's first syscall with a flags argument; a rule whose names do not all
/// resolve in every family of its syscalls has problems and is dropped, so unresolved names
/// count as 0 here.
fn flags_mask(flags: &[FlagDoc], names: &[String]) -> u64 {
    let family = names
        .iter()
        .filter_map(|n| syscalls::spec_of(n)?.flags)
        .map(|f| f.family)
        .next();
    flags.iter().fold(0, |mask, flag| {
        mask | match (flag, family) {
            (FlagDoc::Bits(b), _) => *b,
            (FlagDoc::Name(n), Some(family)) => syscalls::flag_test_bits(family, n).unwrap_or(0),
            (FlagDoc::Name(_), None) => 0,
        }
    })
}

/// How many distinct flag families the rule's syscalls have (messages name the syscalls
/// when a rule mixes families).
fn family_count(specs: &[(&str, Option<&'static syscalls::Spec>)]) -> usize {
    specs
        .iter()
        .filter_map(|(_, s)| s.and_then(|s| s.flags).map(|f| f.family))
        .collect::<BTreeSet<_>>()
        .len()
}

fn display_flag(flag: &FlagDoc) -> String {
    match flag {
        FlagDoc::Name(n) => n.clone(),
        FlagDoc::Bits(b) => b.to_string(),
    }
}

/// An RFC 1123 label, as Kubernetes object names of this kind would be.
fn valid_name(name: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| alnum(b) || b == b'-')
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum)
}
