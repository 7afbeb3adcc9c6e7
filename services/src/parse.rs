//! Bytes to typed objects: YAML or JSON documents, Lists, strict field checking.

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    serde::de::DeserializeOwned,
};
use serde::Deserialize as _;
use serde_json::Value;

use crate::{
    Error, Object, Problem,
    compile::{compile_service, compile_slice},
};

/// Parses `bytes` (from `origin`, a file name for messages) into objects; see
/// [`crate::Catalog::parse`].
pub(crate) fn parse(bytes: &[u8], origin: &str) -> Result<Vec<Object>, Error> {
    let documents = documents(bytes, origin)?;
    // Decoding (typed deserialization and the unknown-field check) dominates for large inputs:
    // spread the documents over the CPUs, keeping their order.
    let parts = parallelism(documents.len());
    let chunk = documents.len().div_ceil(parts).max(1);
    let results: Vec<(Vec<Object>, Vec<Problem>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = documents
            .chunks(chunk)
            .enumerate()
            .map(|(c, docs)| {
                scope.spawn(move || {
                    let mut objects = Vec::with_capacity(docs.len());
                    let mut problems = Vec::new();
                    for (i, doc) in docs.iter().enumerate() {
                        if doc.is_null() {
                            continue; // empty document (`---` with nothing, or only comments)
                        }
                        let location = format!("{origin}: document {}", c * chunk + i + 1);
                        decode(
                            doc,
                            &location,
                            Within::Document,
                            &mut objects,
                            &mut problems,
                        );
                    }
                    (objects, problems)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut objects = Vec::with_capacity(documents.len());
    let mut problems = Vec::new();
    for (o, p) in results {
        objects.extend(o);
        problems.extend(p);
    }
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(Error::Invalid { problems })
    }
}

/// How many threads to parse `items` documents with: one per CPU for large inputs, one for
/// small ones (a thread costs more than a few documents).
fn parallelism(items: usize) -> usize {
    if items < 512 {
        return 1;
    }
    std::thread::available_parallelism()
        .map(|n| n.get().min(8))
        .unwrap_or(1)
}

/// Splits a YAML stream into pieces at document markers (a line that is exactly `---` or
/// starts with `--- `), each holding whole documents. A marker line can only be a document
/// boundary at column 0, so splitting there never cuts a document; anchors do not cross
/// documents in YAML.
fn split_yaml(bytes: &[u8], parts: usize) -> Vec<&[u8]> {
    if parts <= 1 {
        return vec![bytes];
    }
    let target = bytes.len() / parts;
    let mut pieces = Vec::with_capacity(parts);
    let mut start = 0;
    let mut pos = target;
    while pieces.len() + 1 < parts && pos < bytes.len() {
        let Some(found) = find_marker(&bytes[pos..]) else {
            break;
        };
        let cut = pos + found;
        if cut > start {
            pieces.push(&bytes[start..cut]);
            start = cut;
        }
        pos = (cut + 1).max(start + target);
    }
    pieces.push(&bytes[start..]);
    pieces
}

/// Offset of the next line starting with a document marker (the offset of its first `-`).
fn find_marker(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 4 <= bytes.len() {
        if bytes[i] == b'\n'
            && &bytes[i + 1..i + 4] == b"---"
            && matches!(bytes.get(i + 4), None | Some(b'\n' | b' ' | b'\r'))
        {
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// Splits the input into documents. JSON when it starts with `{` (one or more concatenated
/// objects), YAML (`---`-separated, merge keys applied) otherwise or when JSON fails but YAML
/// reads it.
pub(crate) fn documents(bytes: &[u8], origin: &str) -> Result<Vec<Value>, Error> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        let json: Result<Vec<Value>, _> = serde_json::Deserializer::from_slice(bytes)
            .into_iter::<Strict>()
            .map(|v| v.map(|Strict(v)| v))
            .collect();
        return match json {
            Ok(docs) => Ok(docs),
            Err(e) => yaml_documents(bytes, origin).map_err(|_| Error::Syntax {
                origin: origin.to_owned(),
                message: format!("invalid JSON: {e}"),
            }),
        };
    }
    yaml_documents(bytes, origin)
}

fn yaml_documents(bytes: &[u8], origin: &str) -> Result<Vec<Value>, Error> {
    // Large streams are read in pieces on all CPUs (libyaml is sequential within a piece).
    let parts = if bytes.len() > 1 << 20 {
        parallelism(usize::MAX)
    } else {
        1
    };
    let pieces = split_yaml(bytes, parts);
    if pieces.len() == 1 {
        return yaml_piece(bytes, origin, 0);
    }
    let results: Vec<Result<Vec<Value>, Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = pieces
            .iter()
            .map(|piece| scope.spawn(move || yaml_piece(piece, origin, 0)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    if results.iter().any(Result::is_err) {
        // Report errors with document numbers of the whole stream: re-read it in one piece.
        return yaml_piece(bytes, origin, 0);
    }
    let mut docs = Vec::new();
    for r in results {
        // A piece starting with `---` yields no empty leading document, so concatenating keeps
        // the stream's document order and count.
        docs.extend(r?);
    }
    Ok(docs)
}

fn yaml_piece(bytes: &[u8], origin: &str, first: usize) -> Result<Vec<Value>, Error> {
    // Merge keys (`<<: *anchor`) need serde_yaml's own Value; without them, going straight to
    // JSON values is about twice as fast.
    let merge = bytes.windows(2).any(|w| w == b"<<");
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_slice(bytes).enumerate() {
        let i = first + i;
        let syntax = |message: String| Error::Syntax {
            origin: origin.to_owned(),
            message: format!("document {}: invalid YAML: {message}", i + 1),
        };
        if merge {
            let mut yaml = serde_yaml::Value::deserialize(de).map_err(|e| syntax(e.to_string()))?;
            yaml.apply_merge().map_err(|e| syntax(e.to_string()))?;
            docs.push(serde_json::to_value(&yaml).map_err(|e| syntax(e.to_string()))?);
        } else {
            let Strict(value) = Strict::deserialize(de).map_err(|e| syntax(e.to_string()))?;
            docs.push(value);
        }
    }
    Ok(docs)
}

/// A JSON value read strictly: a key twice in one mapping is an error (serde_json's `Value`
/// silently keeps the last one; kubectl rejects such manifests). YAML keys that are numbers or
/// booleans become strings, as in kubectl.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a number JSON can hold")))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict::deserialize(d).map(|Strict(v)| v)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(Key(key)) = map.next_key()? {
            let Strict(value) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// A mapping key: a string, or a number or boolean turned into one.
struct Key(String);

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = String;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean mapping key")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_owned())
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
                Ok(v)
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
                Ok(v.to_string())
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
                Ok(v.to_string())
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
                Ok(v.to_string())
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
                Ok(v.to_string())
            }
        }
        d.deserialize_any(V).map(Key)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// `Kind ns/name` from an untyped object, for messages.
fn describe(kind: &str, doc: &Value) -> String {
    let meta = doc.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    let ns = field("namespace")
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    match field("name") {
        Some(name) if !name.is_empty() => format!("{kind} {ns}/{name}"),
        _ => format!("{kind} {ns}/<no name>"),
    }
}

/// Where a decoded value sits.
#[derive(Clone, Copy)]
enum Within {
    Document,
    /// An item of a List; `implied` is the item kind of a typed list (the items of a
    /// `ServiceList` as the API returns it carry no kind or apiVersion).
    List {
        implied: Option<&'static str>,
    },
}

/// Decodes one document or List item.
fn decode(
    doc: &Value,
    location: &str,
    within: Within,
    objects: &mut Vec<Object>,
    problems: &mut Vec<Problem>,
) {
    let implied = match within {
        Within::Document => None,
        Within::List { implied } => implied,
    };
    let Some(map) = doc.as_object() else {
        problems.push(Problem::at(
            location,
            format!(
                "expected a mapping with apiVersion and kind, found {}",
                type_name(doc)
            ),
        ));
        return;
    };
    let kind = match map.get("kind") {
        Some(Value::String(k)) => k.as_str(),
        None => match implied {
            Some(kind) => kind,
            None => {
                problems.push(Problem::at(location, "kind is missing"));
                return;
            }
        },
        Some(v) => {
            problems.push(Problem::at(
                location,
                format!("kind must be a string, found {}", type_name(v)),
            ));
            return;
        }
    };
    let api_version = match map.get("apiVersion") {
        Some(Value::String(v)) => Some(v.as_str()),
        None => None,
        Some(v) => {
            problems.push(Problem::at(
                location,
                format!("apiVersion must be a string, found {}", type_name(v)),
            ));
            return;
        }
    };
    match kind {
        "Service" => {
            if let Some(svc) = typed::<Service>(
                doc,
                location,
                "Service",
                "v1",
                api_version,
                implied,
                problems,
            ) {
                match compile_service(&svc) {
                    Ok(_) => objects.push(Object::Service(Box::new(svc))),
                    Err(p) => problems.extend(locate(p, location)),
                }
            }
        }
        "EndpointSlice" => {
            if let Some(slice) = typed::<EndpointSlice>(
                doc,
                location,
                "EndpointSlice",
                "discovery.k8s.io/v1",
                api_version,
                implied,
                problems,
            ) {
                match compile_slice(&slice, None) {
                    Ok(_) => objects.push(Object::EndpointSlice(Box::new(slice))),
                    Err(p) => problems.extend(locate(p, location)),
                }
            }
        }
        "List" | "ServiceList" | "EndpointSliceList" if matches!(within, Within::Document) => {
            let item_kind = match kind {
                "ServiceList" => Some("Service"),
                "EndpointSliceList" => Some("EndpointSlice"),
                _ => None,
            };
            for (key, value) in map {
                match key.as_str() {
                    "apiVersion" | "kind" | "metadata" => {}
                    "items" => match value {
                        Value::Array(items) => {
                            for (i, item) in items.iter().enumerate() {
                                let at = format!("{location}, items[{i}]");
                                let within = Within::List { implied: item_kind };
                                decode(item, &at, within, objects, problems);
                            }
                        }
                        Value::Null => {}
                        v => problems.push(Problem::at(
                            location,
                            format!("{kind}: items must be a list, found {}", type_name(v)),
                        )),
                    },
                    other => problems.push(Problem {
                        location: Some(location.to_owned()),
                        object: Some(kind.to_owned()),
                        field: Some(other.to_owned()),
                        message: "unknown field".into(),
                    }),
                }
            }
        }
        "List" | "ServiceList" | "EndpointSliceList" => problems.push(Problem::at(
            location,
            format!("a {kind} inside a list is not supported"),
        )),
        other => {
            let what = match api_version {
                Some(v) => format!("{} (apiVersion {v})", describe(other, doc)),
                None => describe(other, doc),
            };
            problems.push(Problem::at(
                location,
                format!(
                    "unsupported kind {other:?}: {what}: berth reads Service (v1) and EndpointSlice (discovery.k8s.io/v1), alone or in a List"
                ),
            ));
        }
    }
}

fn locate(problems: Vec<Problem>, location: &str) -> impl Iterator<Item = Problem> + '_ {
    problems.into_iter().map(move |mut p| {
        p.location = Some(location.to_owned());
        p
    })
}

/// Deserializes one object into its k8s-openapi type, then rejects fields the type does not
/// know (k8s-openapi ignores them): every key of the input must survive a round trip.
fn typed<T: DeserializeOwned>(
    doc: &Value,
    location: &str,
    kind: &str,
    expected_version: &str,
    api_version: Option<&str>,
    implied: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let object = describe(kind, doc);
    let problem = |field: Option<String>, message: String| Problem {
        location: Some(location.to_owned()),
        object: Some(object.clone()),
        field,
        message,
    };
    match api_version {
        Some(v) if v == expected_version => {}
        None if implied.is_some() => {}
        None => {
            problems.push(problem(
                Some("apiVersion".into()),
                format!("is missing (expected {expected_version})"),
            ));
            return None;
        }
        Some(v) => {
            problems.push(problem(
                Some("apiVersion".into()),
                format!("{v:?} is not supported for {kind}: expected {expected_version}"),
            ));
            return None;
        }
    }
    // One pass: serde_ignored reports every key the typed object ignored (an unknown field),
    // the path-tracking deserializer only runs to explain an error.
    let mut unknown = Vec::new();
    let value: T = match serde_ignored::deserialize(doc, |path| {
        if !is_null_at(doc, &path) {
            unknown.push(path_string(&path));
        }
    }) {
        Ok(v) => v,
        Err(first) => match serde_path_to_error::deserialize::<_, T>(doc) {
            Err(e) => {
                let path = e.path().to_string();
                let field = (path != ".").then_some(path);
                problems.push(problem(field, e.into_inner().to_string()));
                return None;
            }
            Ok(_) => {
                problems.push(problem(None, first.to_string()));
                return None;
            }
        },
    };
    if unknown.is_empty() {
        Some(value)
    } else {
        problems.extend(unknown.into_iter().map(|path| {
            problem(
                Some(path),
                format!("unknown field (not in {kind} {expected_version})"),
            )
        }));
        None
    }
}

/// `spec.ports[0].nodeport` for serde_ignored's path of an ignored key.
fn path_string(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", path_string(parent)),
        Path::Map { parent, key } => {
            let parent = path_string(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => path_string(parent),
    }
}

/// Whether the input value at an ignored key is null: a null field counts as absent, as in
/// kubectl.
fn is_null_at(doc: &Value, path: &serde_ignored::Path<'_>) -> bool {
    fn lookup<'a>(doc: &'a Value, path: &serde_ignored::Path<'_>) -> Option<&'a Value> {
        use serde_ignored::Path;
        match path {
            Path::Root => Some(doc),
            Path::Seq { parent, index } => lookup(doc, parent)?.get(*index),
            Path::Map { parent, key } => lookup(doc, parent)?.get(key.as_str()),
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => lookup(doc, parent),
        }
    }
    lookup(doc, path).is_some_and(Value::is_null)
}

#[cfg(test)]
mod split_tests {
    use super::*;

    #[test]
    fn split_pieces_read_the_same_documents_as_one_stream() {
        let mut text = String::from("# leading comment\n");
        for i in 0..3000 {
            text.push_str(&format!(
                "---\nkind: Service\nmetadata:\n  name: s{i}\n  annotations:\n    note: |\n      ---\n      not a marker\n"
            ));
        }
        text.push_str("--- \n...\n");
        let one = yaml_piece(text.as_bytes(), "t", 0).expect("one piece");
        for parts in [2, 3, 7] {
            let pieces = split_yaml(text.as_bytes(), parts);
            assert!(pieces.len() > 1);
            assert_eq!(pieces.concat(), text.as_bytes(), "pieces cover the input");
            let mut docs = Vec::new();
            for p in pieces {
                docs.extend(yaml_piece(p, "t", 0).expect("piece"));
            }
            assert_eq!(docs, one, "{parts} pieces");
        }
        assert_eq!(yaml_documents(text.as_bytes(), "t").expect("parallel"), one);
    }
}
