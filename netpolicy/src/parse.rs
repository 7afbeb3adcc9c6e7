//! Bytes to validated policies (and namespaces): YAML or JSON documents, Lists.

use k8s_openapi::api::{core::v1::Namespace as ApiNamespace, networking::v1::NetworkPolicy};
use serde::Deserialize as _;
use serde_json::Value;

use crate::{Error, Namespace, Policy, Problem, policy::compile};

/// Parses `bytes` (from `origin`, a file name for messages): multi-document YAML (`---`, merge
/// keys), JSON (one or several concatenated objects), and `kind: List` /
/// `NetworkPolicyList`. Every problem of every document is reported at once; nothing is
/// returned unless all policies are valid.
pub fn parse(bytes: &[u8], origin: &str) -> Result<Vec<Policy>, Error> {
    parse_kinds(bytes, origin, false).map(|o| o.policies)
}

/// What a manifest with policies and namespaces holds, in input order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Objects {
    pub policies: Vec<Policy>,
    pub namespaces: Vec<Namespace>,
    /// Each valid object as it was given (JSON), by `NetworkPolicy namespace/name` or
    /// `Namespace name`: what a store persists and re-parses. A later object of the same kind
    /// and name replaces an earlier one.
    pub raw: std::collections::BTreeMap<String, Value>,
}

/// Like [`parse`], and also accepts `v1` `Namespace` objects (at the top, in a `List` or a
/// `NamespaceList`): namespace selectors need their labels, and a test fixture or `kubectl
/// get -o yaml` output carries them next to the policies.
pub fn parse_objects(bytes: &[u8], origin: &str) -> Result<Objects, Error> {
    parse_kinds(bytes, origin, true)
}

fn parse_kinds(bytes: &[u8], origin: &str, namespaces: bool) -> Result<Objects, Error> {
    let mut out = Decoder {
        namespaces,
        objects: Objects::default(),
        problems: Vec::new(),
    };
    for (i, doc) in documents(bytes, origin)?.iter().enumerate() {
        if doc.is_null() {
            continue; // empty document: `---` with nothing, or only comments
        }
        let location = format!("{origin}: document {}", i + 1);
        out.decode(doc, &location, true);
    }
    if out.problems.is_empty() {
        Ok(out.objects)
    } else {
        Err(Error::Invalid {
            problems: out.problems,
        })
    }
}

struct Decoder {
    /// Whether Namespace objects are accepted ([`parse_objects`]) or rejected ([`parse`]).
    namespaces: bool,
    objects: Objects,
    problems: Vec<Problem>,
}

impl Decoder {
    /// Decodes one object; `top` is false inside a List (Lists do not nest in kubectl either).
    fn decode(&mut self, doc: &Value, location: &str, top: bool) {
        let field = |key: &str| doc.get(key).and_then(Value::as_str).unwrap_or("");
        match (field("apiVersion"), field("kind")) {
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                let np = match serde_path_to_error::deserialize::<_, NetworkPolicy>(doc) {
                    Ok(np) => np,
                    Err(e) => {
                        let mut p = Problem::at(location, e.inner().to_string());
                        p.object = Some(object_name(doc));
                        p.field = Some(e.path().to_string());
                        self.problems.push(p);
                        return;
                    }
                };
                match compile(&np) {
                    Ok(policy) => {
                        self.objects
                            .raw
                            .insert(format!("NetworkPolicy {}", policy.key()), doc.clone());
                        self.objects.policies.push(policy);
                    }
                    Err(ps) => self.problems.extend(ps.into_iter().map(|mut p| {
                        p.location = Some(location.to_owned());
                        p
                    })),
                }
            }
            ("v1", "Namespace") if self.namespaces => self.namespace(doc, location),
            (_, "List") | ("networking.k8s.io/v1", "NetworkPolicyList") if top => {
                self.list(doc, location);
            }
            ("v1", "NamespaceList") if top && self.namespaces => self.list(doc, location),
            (api, kind) => {
                let expected = if self.namespaces {
                    "networking.k8s.io/v1 NetworkPolicy or v1 Namespace"
                } else {
                    "networking.k8s.io/v1 NetworkPolicy"
                };
                self.problems.push(Problem::at(
                    location,
                    format!(
                        "unsupported object apiVersion {api:?} kind {kind:?}: expected {expected}"
                    ),
                ));
            }
        }
    }

    fn list(&mut self, doc: &Value, location: &str) {
        let Some(items) = doc.get("items").and_then(Value::as_array) else {
            self.problems
                .push(Problem::at(location, "a List needs an items array"));
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let location = format!("{location}, items[{i}]");
            self.decode(item, &location, false);
        }
    }

    /// A Namespace: its name (a DNS label, as the apiserver requires) and labels.
    fn namespace(&mut self, doc: &Value, location: &str) {
        let name = doc
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let object = if name.is_empty() {
            "Namespace".to_owned()
        } else {
            format!("Namespace {name}")
        };
        let problem = |field: String, message: String| {
            let mut p = Problem::new(&object, field, message);
            p.location = Some(location.to_owned());
            p
        };
        let ns = match serde_path_to_error::deserialize::<_, ApiNamespace>(doc) {
            Ok(ns) => ns,
            Err(e) => {
                let p = problem(e.path().to_string(), e.inner().to_string());
                self.problems.push(p);
                return;
            }
        };
        let name = ns.metadata.name.unwrap_or_default();
        if name.is_empty() {
            let p = problem("metadata.name".to_owned(), "is required".to_owned());
            self.problems.push(p);
        } else if !valid_dns_label(&name) {
            let p = problem(
                "metadata.name".to_owned(),
                format!(
                    "{name:?} is not a valid DNS label (1-63 lowercase letters, digits and '-', starting and ending with a letter or digit)"
                ),
            );
            self.problems.push(p);
        } else {
            self.objects
                .raw
                .insert(format!("Namespace {name}"), doc.clone());
            self.objects.namespaces.push(Namespace {
                name,
                labels: ns.metadata.labels.unwrap_or_default(),
            });
        }
    }
}

/// An RFC 1123 label, what the apiserver requires of namespace names.
fn valid_dns_label(name: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| alnum(b) || b == b'-')
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum)
}

/// `NetworkPolicy ns/name` of an object that did not decode, as far as it can be read.
fn object_name(doc: &Value) -> String {
    let meta = |key: &str| {
        doc.get("metadata")
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    format!(
        "NetworkPolicy {}/{}",
        meta("namespace").unwrap_or_else(|| "default".to_owned()),
        meta("name").unwrap_or_default()
    )
}

/// Splits the input into documents: JSON when it starts with `{`, YAML otherwise.
fn documents(bytes: &[u8], origin: &str) -> Result<Vec<Value>, Error> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let syntax = |message: String| Error::Syntax {
        origin: origin.to_owned(),
        message,
    };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return serde_json::Deserializer::from_slice(bytes)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| syntax(format!("invalid JSON: {e}")));
    }
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_slice(bytes).enumerate() {
        let at = |e: serde_yaml::Error| syntax(format!("document {}: invalid YAML: {e}", i + 1));
        let mut yaml = serde_yaml::Value::deserialize(de).map_err(at)?;
        yaml.apply_merge().map_err(at)?;
        // YAML keys that are not strings cannot be NetworkPolicy fields; converting fails on
        // them with a clear message.
        let json =
            serde_json::to_value(&yaml).map_err(|e| syntax(format!("document {}: {e}", i + 1)))?;
        docs.push(json);
    }
    Ok(docs)
}
