//! Diagnostics over the parsed (spanned) TOML document: key paths such as
//! `destination[0].vault.token`, the line and column a path points at, the path at a byte
//! offset (for serde's type errors), and the walk that finds every unknown key.
//!
//! Unknown keys are found by walking the document against the JSON Schema generated from the
//! config types (`crate::schema`), so the known keys have one source: the types themselves.
//! The walk also removes the keys it reports, so that serde (which denies unknown fields and
//! would stop at the first) can go on to find type errors and the semantic checks can run.

use std::fmt;
use std::ops::Range;

use serde_json::Value;
use toml::de::{DeTable, DeValue};

/// One segment of a [`KeyPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array element (0-based), e.g. the `[[destination]]` entries.
    Index(usize),
}

/// A path to a key of the document, displayed as `destination[0].mounts."kv1/"`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// This path plus a table key.
    pub fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }

    /// This path plus an array index.
    pub fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    /// Parses the display form back (`a.b[2]."c/d"`); the checks build some keys as text.
    pub fn parse(text: &str) -> KeyPath {
        let mut segs = Vec::new();
        let mut chars = text.chars().peekable();
        let mut bare = String::new();
        while let Some(c) = chars.next() {
            match c {
                '.' => {
                    if !bare.is_empty() {
                        segs.push(Seg::Key(std::mem::take(&mut bare)));
                    }
                }
                '"' => {
                    let mut quoted = String::new();
                    while let Some(q) = chars.next() {
                        match q {
                            '\\' => quoted.extend(chars.next()),
                            '"' => break,
                            other => quoted.push(other),
                        }
                    }
                    segs.push(Seg::Key(quoted));
                }
                '[' => {
                    if !bare.is_empty() {
                        segs.push(Seg::Key(std::mem::take(&mut bare)));
                    }
                    let digits: String = chars.by_ref().take_while(|d| *d != ']').collect();
                    match digits.parse() {
                        Ok(i) => segs.push(Seg::Index(i)),
                        Err(_) => segs.push(Seg::Key(format!("[{digits}]"))),
                    }
                }
                other => bare.push(other),
            }
        }
        if !bare.is_empty() {
            segs.push(Seg::Key(bare));
        }
        KeyPath(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(i) => write!(f, "[{i}]")?,
                Seg::Key(k) => {
                    if n > 0 {
                        f.write_str(".")?;
                    }
                    let is_bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if is_bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "\"{}\"", k.replace('\\', "\\\\").replace('"', "\\\""))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A problem found in the document, before it is turned into a `ConfigError`.
#[derive(Debug, Clone)]
pub struct Found {
    /// Where in the text (byte offsets).
    pub span: Range<usize>,
    /// The key.
    pub key: KeyPath,
    /// What is wrong.
    pub message: String,
    /// How to fix it, if there is something to say.
    pub hint: Option<String>,
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.chars().count(), |p| before[p + 1..].chars().count())
        + 1;
    (line, column)
}

/// The span `path` points at: the key itself when the path names a table key (so the line is
/// the key's line), the element for an array index. A path that leaves the document (a key
/// that was not written, its default applies) points at the deepest part that exists.
pub fn locate(doc: &DeTable<'_>, whole: Range<usize>, path: &KeyPath) -> Range<usize> {
    let mut span = whole;
    let mut here: Option<&DeValue<'_>> = None;
    let mut table: Option<&DeTable<'_>> = Some(doc);
    for seg in &path.0 {
        match seg {
            Seg::Key(k) => {
                let Some((key, value)) = table.and_then(|t| t.get_key_value(k.as_str())) else {
                    break;
                };
                span = key.span();
                here = Some(value.get_ref());
            }
            Seg::Index(i) => {
                let Some(item) = here.and_then(DeValue::as_array).and_then(|a| a.get(*i)) else {
                    break;
                };
                span = item.span();
                here = Some(item.get_ref());
            }
        }
        table = here.and_then(DeValue::as_table);
    }
    span
}

/// The path of the deepest key or element whose span holds `offset` (serde's type errors carry
/// only a span). A table written with a `[header]` spans only its header, so every entry is
/// searched, not only those whose span holds the offset.
pub fn path_at(doc: &DeTable<'_>, offset: usize) -> KeyPath {
    fn inside(span: &Range<usize>, offset: usize) -> bool {
        span.start <= offset && offset < span.end.max(span.start + 1)
    }
    fn in_value(v: &DeValue<'_>, offset: usize) -> Option<Vec<Seg>> {
        match v {
            DeValue::Table(t) => in_table(t, offset),
            DeValue::Array(a) => a.iter().enumerate().find_map(|(i, item)| {
                let deeper = in_value(item.get_ref(), offset);
                if deeper.is_none() && !inside(&item.span(), offset) {
                    return None;
                }
                let mut path = vec![Seg::Index(i)];
                path.extend(deeper.unwrap_or_default());
                Some(path)
            }),
            _ => None,
        }
    }
    fn in_table(t: &DeTable<'_>, offset: usize) -> Option<Vec<Seg>> {
        t.iter().find_map(|(k, v)| {
            let deeper = in_value(v.get_ref(), offset);
            if deeper.is_none() && !inside(&k.span(), offset) && !inside(&v.span(), offset) {
                return None;
            }
            let mut path = vec![Seg::Key(k.get_ref().to_string())];
            path.extend(deeper.unwrap_or_default());
            Some(path)
        })
    }
    KeyPath(in_table(doc, offset).unwrap_or_default())
}

/// The schema of the key at `path` (the document picks the branch of a tagged table), for the
/// hint of a type error or a missing key.
pub fn schema_at<'s>(root: &'s Value, doc: &DeTable<'_>, path: &KeyPath) -> Option<&'s Value> {
    let mut node = root;
    let mut here: Option<&DeValue<'_>> = None;
    let mut table: Option<&DeTable<'_>> = Some(doc);
    for seg in &path.0 {
        match seg {
            Seg::Key(k) => {
                let schema = match table {
                    Some(t) => object_schema(root, node, t)?,
                    None => resolve(root, node),
                };
                node = schema.get("properties")?.get(k.as_str())?;
                here = table.and_then(|t| t.get(k.as_str())).map(|v| v.get_ref());
            }
            Seg::Index(i) => {
                let mut all = Vec::new();
                branches(root, node, &mut all);
                node = all.iter().find_map(|b| b.get("items"))?;
                here = here
                    .and_then(DeValue::as_array)
                    .and_then(|a| a.get(*i))
                    .map(|v| v.get_ref());
            }
        }
        table = here.and_then(DeValue::as_table);
    }
    Some(node)
}

/// A schema's description, on one line.
pub fn description(root: &Value, node: &Value) -> Option<String> {
    let text = node
        .get("description")
        .or_else(|| resolve(root, node).get("description"))?
        .as_str()?;
    Some(text.replace('\n', " "))
}

/// Walks `doc` against the config's JSON Schema, reports every key the schema does not know
/// (with the nearest known key as a hint) and removes it from the document.
pub fn unknown_keys(root: &Value, doc: &mut DeTable<'_>) -> Vec<Found> {
    let mut out = Vec::new();
    walk_table(root, root, doc, &KeyPath::default(), &mut out);
    out
}

/// Follows `$ref`s into `$defs`.
fn resolve<'s>(root: &'s Value, mut node: &'s Value) -> &'s Value {
    for _ in 0..32 {
        let Some(name) = node
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
        else {
            break;
        };
        match root.get("$defs").and_then(|d| d.get(name)) {
            Some(next) => node = next,
            None => break,
        }
    }
    node
}

/// Every alternative of a schema (itself, or the branches of `anyOf`/`oneOf`), resolved.
fn branches<'s>(root: &'s Value, node: &'s Value, out: &mut Vec<&'s Value>) {
    let node = resolve(root, node);
    let mut split = false;
    for key in ["anyOf", "oneOf"] {
        if let Some(list) = node.get(key).and_then(Value::as_array) {
            split = true;
            for b in list {
                branches(root, b, out);
            }
        }
    }
    if !split {
        out.push(node);
    }
}

/// The object schema that describes `table`: for an internally tagged enum (the `state`
/// tables) the branch whose `const` tag matches. `None` when nothing matches (an unknown tag,
/// which serde reports) or the schema says nothing about the keys.
fn object_schema<'s>(root: &'s Value, node: &'s Value, table: &DeTable<'_>) -> Option<&'s Value> {
    let mut all = Vec::new();
    branches(root, node, &mut all);
    all.into_iter()
        .filter(|b| b.get("properties").is_some())
        .find(|b| {
            b.get("properties")
                .and_then(Value::as_object)
                .is_some_and(|props| {
                    props
                        .iter()
                        .all(|(name, p)| match resolve(root, p).get("const") {
                            Some(tag) => {
                                table.get(name.as_str()).and_then(|v| v.get_ref().as_str())
                                    == tag.as_str()
                            }
                            None => true,
                        })
                })
        })
}

fn walk_value(
    root: &Value,
    node: &Value,
    value: &mut DeValue<'_>,
    path: &KeyPath,
    out: &mut Vec<Found>,
) {
    match value {
        DeValue::Table(t) => walk_table(root, node, t, path, out),
        DeValue::Array(items) => {
            let mut all = Vec::new();
            branches(root, node, &mut all);
            let Some(item_schema) = all.iter().find_map(|b| b.get("items")) else {
                return;
            };
            for (i, item) in items.iter_mut().enumerate() {
                walk_value(root, item_schema, item.get_mut(), &path.index(i), out);
            }
        }
        _ => {}
    }
}

fn walk_table(
    root: &Value,
    node: &Value,
    table: &mut DeTable<'_>,
    path: &KeyPath,
    out: &mut Vec<Found>,
) {
    let Some(schema) = object_schema(root, node, table) else {
        return;
    };
    let props = schema.get("properties").and_then(Value::as_object);
    let extra = schema.get("additionalProperties");
    let closed = extra.and_then(Value::as_bool) == Some(false);
    let known: Vec<&str> = props
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut unknown = Vec::new();
    for (k, v) in table.iter_mut() {
        let name: &str = k.get_ref();
        match props.and_then(|p| p.get(name)) {
            Some(p) => walk_value(root, p, v.get_mut(), &path.key(name), out),
            None if closed => {
                unknown.push(name.to_owned());
                out.push(Found {
                    span: k.span(),
                    key: path.key(name),
                    message: "unknown key".into(),
                    hint: Some(suggest(name, &known)),
                });
            }
            None => {
                if let Some(e) = extra.filter(|e| e.is_object()) {
                    walk_value(root, e, v.get_mut(), &path.key(name), out);
                }
            }
        }
    }
    if !unknown.is_empty() {
        for name in &unknown {
            table.remove(name.as_str());
        }
    }
}

/// "did you mean `workers`?" for a near miss, else the list of keys allowed here.
pub fn suggest(name: &str, known: &[&str]) -> String {
    let lower = name.to_ascii_lowercase();
    let best = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(&lower, k), *k))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= (name.chars().count() / 3).max(1) + usize::from(name.len() > 6) => {
            format!("did you mean `{k}`?")
        }
        _ if known.is_empty() => "no keys are allowed here".into(),
        _ => format!(
            "allowed here: {}",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_round_trip() {
        for text in [
            "origin.vault.token",
            "destination[0].mounts.\"kv1/\"",
            "destination[2].transforms[1].plugin",
            "a.\"q\\\"uote\"",
        ] {
            assert_eq!(KeyPath::parse(text).to_string(), text);
        }
        assert_eq!(
            KeyPath::default().key("origin").index(3).to_string(),
            "origin[3]"
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("workerz", &["workers", "interval"]),
            "did you mean `workers`?"
        );
        assert_eq!(
            suggest("intervall", &["workers", "interval"]),
            "did you mean `interval`?"
        );
        assert_eq!(
            suggest("tokn", &["token", "token_file"]),
            "did you mean `token`?"
        );
        assert_eq!(suggest("zzz", &["a", "b"]), "allowed here: `a`, `b`");
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ключ = 1", 8), (1, 5));
    }
}
