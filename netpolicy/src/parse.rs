//! Bytes to validated policies: YAML or JSON documents, Lists.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize as _;
use serde_json::Value;

use crate::{Error, Policy, Problem, policy::compile};

/// Parses `bytes` (from `origin`, a file name for messages): multi-document YAML (`---`, merge
/// keys), JSON (one or several concatenated objects), and `kind: List` /
/// `NetworkPolicyList`. Every problem of every document is reported at once; nothing is
/// returned unless all policies are valid.
pub fn parse(bytes: &[u8], origin: &str) -> Result<Vec<Policy>, Error> {
    let mut policies = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in documents(bytes, origin)?.iter().enumerate() {
        if doc.is_null() {
            continue; // empty document: `---` with nothing, or only comments
        }
        let location = format!("{origin}: document {}", i + 1);
        decode(doc, &location, true, &mut policies, &mut problems);
    }
    if problems.is_empty() {
        Ok(policies)
    } else {
        Err(Error::Invalid { problems })
    }
}

/// Decodes one object; `top` is false inside a List (Lists do not nest in kubectl either).
fn decode(
    doc: &Value,
    location: &str,
    top: bool,
    policies: &mut Vec<Policy>,
    problems: &mut Vec<Problem>,
) {
    let field = |key: &str| doc.get(key).and_then(Value::as_str).unwrap_or("");
    match (field("apiVersion"), field("kind")) {
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            let np = match serde_path_to_error::deserialize::<_, NetworkPolicy>(doc) {
                Ok(np) => np,
                Err(e) => {
                    let mut p = Problem::at(location, e.inner().to_string());
                    p.object = Some(object_name(doc));
                    p.field = Some(e.path().to_string());
                    problems.push(p);
                    return;
                }
            };
            match compile(&np) {
                Ok(policy) => policies.push(policy),
                Err(ps) => problems.extend(ps.into_iter().map(|mut p| {
                    p.location = Some(location.to_owned());
                    p
                })),
            }
        }
        (_, "List") | ("networking.k8s.io/v1", "NetworkPolicyList") if top => {
            let Some(items) = doc.get("items").and_then(Value::as_array) else {
                problems.push(Problem::at(location, "a List needs an items array"));
                return;
            };
            for (i, item) in items.iter().enumerate() {
                let location = format!("{location}, items[{i}]");
                decode(item, &location, false, policies, problems);
            }
        }
        (api, kind) => problems.push(Problem::at(
            location,
            format!(
                "unsupported object apiVersion {api:?} kind {kind:?}: expected networking.k8s.io/v1 NetworkPolicy"
            ),
        )),
    }
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
