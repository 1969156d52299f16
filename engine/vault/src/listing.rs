//! Streaming decode of a listing answer (`SCAN <mount>/detailed-metadata/`, `SCAN <mount>/`),
//! so a mount of any size is read without holding its JSON or its key list in memory: each
//! secret is handed on as soon as its `key_info` entry (or its `keys` element) is parsed.
//!
//! The answer is `{"data": {"key_info": {key: metadata, ...}, "keys": [key, ...]}, ...}`. The
//! same strict reading as for a whole listing applies (see the `kv` module docs): no `data`,
//! `data: null`, keys that are not strings, `data` without `keys` (other than SCAN's empty
//! `data: {}`) or malformed metadata fail the decode, and so does a key's metadata without
//! `current_version` or `versions` (`{}`, which would read as "no live version", a delete; see
//! [`KvMetadata`]). Folders (keys ending in `/`) get `{}` in `key_info` from the server and are
//! skipped unread. A KV v2 key listed in `keys` without a
//! `key_info` entry is handed on without metadata (the caller reads it); a `key_info` entry
//! whose key `keys` does not list fails the decode, as the server contradicted itself.
//!
//! Order: OpenBao (Go's encoding of a map) writes `key_info` before `keys`, so every key with
//! metadata is known before `keys` is checked against them: by 128-bit key hashes, kept in a
//! sorted array (16 bytes a key instead of the keys themselves; no hash table, whose growth
//! would briefly need three times that) with one "listed" bit each. Should `keys` come first,
//! it is held until `key_info` has been read.

use std::fmt;
use std::hash::BuildHasher;
use std::io::Read;

use serde::de::{DeserializeSeed, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use vsync_core::KvVersion;

use crate::types::{KvMetadata, ListedSecret};

/// Secrets handed on at once from the decoding thread.
pub(crate) const BATCH: usize = 512;

/// Receives decoded secrets; an `Err` stops the decode with that message.
pub(crate) type Emit<'a> = &'a mut dyn FnMut(ListedSecret) -> Result<(), String>;

/// Decodes one listing answer from `reader`, handing each secret to `emit` as it is parsed.
/// Folders (keys ending in `/`) are skipped. The error names what was wrong.
pub(crate) fn decode(reader: impl Read, kind: KvVersion, emit: Emit<'_>) -> Result<(), String> {
    let mut state = State {
        kind,
        emit,
        hashers: (std::hash::RandomState::new(), std::hash::RandomState::new()),
        with_info: Vec::new(),
        listed: Vec::new(),
        info_done: false,
        early_keys: None,
    };
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(64 * 1024, reader));
    let found = Top { state: &mut state }.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| format!("listing body: {e}"))?;
    if !found {
        return Err("no `data` in the listing".into());
    }
    Ok(())
}

struct State<'e> {
    kind: KvVersion,
    emit: Emit<'e>,
    hashers: (std::hash::RandomState, std::hash::RandomState),
    /// Hashes of the `key_info` keys, sorted once `key_info` has been read.
    with_info: Vec<u128>,
    /// One bit per `with_info` entry: listed in `keys`.
    listed: Vec<u64>,
    info_done: bool,
    /// `keys` read before `key_info` (KV v2 only), held until `key_info` is known.
    early_keys: Option<Vec<String>>,
}

impl State<'_> {
    fn hash(&self, key: &str) -> u128 {
        (u128::from(self.hashers.0.hash_one(key)) << 64) | u128::from(self.hashers.1.hash_one(key))
    }

    /// A key from `keys`: handed on unless its `key_info` entry already was.
    fn listed_key(&mut self, key: String) -> Result<(), String> {
        if key.ends_with('/') {
            return Ok(());
        }
        if self.kind == KvVersion::V2
            && let Ok(i) = self.with_info.binary_search(&self.hash(&key))
        {
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            if self.listed[word] & bit == 0 {
                self.listed[word] |= bit;
                return Ok(());
            }
            // Listed twice: handed on again without metadata (the caller keeps one entry).
        }
        (self.emit)(ListedSecret { path: key, metadata: None })
    }

    /// Called once `key_info` is read: sorts its hashes for lookups. Two equal hashes are one
    /// key described twice (a 128-bit collision between different keys is not a practical
    /// event).
    fn info_read(&mut self) -> Result<(), String> {
        self.with_info.sort_unstable();
        if self.with_info.windows(2).any(|w| w[0] == w[1]) {
            return Err("`key_info` describes a key twice".into());
        }
        self.listed = vec![0; self.with_info.len().div_ceil(64)];
        self.info_done = true;
        Ok(())
    }

    /// `key_info` entries whose key `keys` did not list.
    fn unlisted(&self) -> usize {
        let listed: usize = self.listed.iter().map(|w| w.count_ones() as usize).sum();
        self.with_info.len() - listed
    }
}

/// The top-level object; `Ok(true)` when it held a non-null `data` object.
struct Top<'s, 'e> {
    state: &'s mut State<'e>,
}

impl<'de> DeserializeSeed<'de> for Top<'_, '_> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a listing body (a JSON object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(field) = map.next_key::<String>()? {
            if field == "data" {
                map.next_value_seed(Data { state: &mut *self.state })?;
                found = true;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// The `data` object.
struct Data<'s, 'e> {
    state: &'s mut State<'e>,
}

impl<'de> DeserializeSeed<'de> for Data<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Data<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`data` of the listing as an object")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(E::custom("`data` is null in the listing"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let state = self.state;
        let mut saw_keys = false;
        // Fields other than `keys`, named if `keys` is missing.
        let mut others: Vec<String> = Vec::new();
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                "key_info" if state.kind == KvVersion::V2 => {
                    map.next_value_seed(KeyInfo { state: &mut *state })?;
                    others.push(field);
                    state.info_read().map_err(A::Error::custom)?;
                    if let Some(keys) = state.early_keys.take() {
                        for key in keys {
                            state.listed_key(key).map_err(A::Error::custom)?;
                        }
                    }
                }
                "keys" => {
                    map.next_value_seed(Keys { state: &mut *state })?;
                    saw_keys = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    others.push(field);
                }
            }
        }
        if !saw_keys {
            if others.is_empty() {
                // SCAN's "nothing under this prefix".
                return Ok(());
            }
            return Err(A::Error::custom(format!("no `data.keys` in the listing, but `data` holds {}", others.join(", "))));
        }
        if let Some(keys) = state.early_keys.take() {
            // `keys` came first and no `key_info` followed.
            for key in keys {
                state.listed_key(key).map_err(A::Error::custom)?;
            }
        }
        let unlisted = state.unlisted();
        if unlisted > 0 {
            return Err(A::Error::custom(format!("`key_info` describes {unlisted} key(s) that `keys` does not list")));
        }
        Ok(())
    }
}

/// `data.keys`.
struct Keys<'s, 'e> {
    state: &'s mut State<'e>,
}

impl<'de> DeserializeSeed<'de> for Keys<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Keys<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`data.keys` as an array of strings")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let state = self.state;
        let hold = state.kind == KvVersion::V2 && !state.info_done;
        while let Some(key) = seq.next_element::<String>()? {
            if hold {
                state.early_keys.get_or_insert_with(Vec::new).push(key);
            } else {
                state.listed_key(key).map_err(A::Error::custom)?;
            }
        }
        Ok(())
    }
}

/// `data.key_info` (KV v2): key -> metadata; folders map to `{}`.
struct KeyInfo<'s, 'e> {
    state: &'s mut State<'e>,
}

impl<'de> DeserializeSeed<'de> for KeyInfo<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyInfo<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`data.key_info` as an object")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        // `key_info: null`: no metadata; every key is read on its own.
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let state = self.state;
        while let Some(key) = map.next_key::<String>()? {
            if key.ends_with('/') {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let metadata: KvMetadata = map
                .next_value()
                .map_err(|e| A::Error::custom(format!("metadata of `{key}`: {e}")))?;
            let hash = state.hash(&key);
            state.with_info.push(hash);
            (state.emit)(ListedSecret { path: key, metadata: Some(metadata) }).map_err(A::Error::custom)?;
        }
        Ok(())
    }
}

/// A blocking reader over body chunks sent from the async side, for the decoding thread.
pub(crate) struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
}

impl ChunkReader {
    pub(crate) fn new(chunks: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>) -> Self {
        Self { chunks, current: Vec::new(), at: 0 }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.current.len() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.current = chunk;
                    self.at = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn run(body: &str, kind: KvVersion) -> Result<Vec<(String, bool)>, String> {
        let mut out = Vec::new();
        decode(body.as_bytes(), kind, &mut |s: ListedSecret| {
            out.push((s.path, s.metadata.is_some()));
            Ok(())
        })?;
        out.sort();
        Ok(out)
    }

    const META: &str = r#"{"current_version":1,"oldest_version":0,"created_time":"2026-01-01T00:00:00Z","versions":{"1":{"created_time":"2026-01-01T00:00:00Z","deletion_time":"","destroyed":false}}}"#;

    #[test]
    fn key_info_then_keys_hands_each_key_on_once() {
        let body = format!(r#"{{"request_id":"x","data":{{"key_info":{{"a":{META},"b/":{{}},"b/c":{META}}},"keys":["a","b/","b/c","d"]}},"warnings":null}}"#);
        assert_eq!(
            run(&body, KvVersion::V2).unwrap(),
            vec![("a".into(), true), ("b/c".into(), true), ("d".into(), false)]
        );
    }

    #[test]
    fn keys_before_key_info_are_held() {
        let body = format!(r#"{{"data":{{"keys":["a","d"],"key_info":{{"a":{META}}}}}}}"#);
        assert_eq!(run(&body, KvVersion::V2).unwrap(), vec![("a".into(), true), ("d".into(), false)]);
    }

    #[test]
    fn kv1_keys_stream_without_info() {
        let body = r#"{"data":{"keys":["x","y/","y/z"]}}"#;
        assert_eq!(run(body, KvVersion::V1).unwrap(), vec![("x".into(), false), ("y/z".into(), false)]);
    }

    #[test]
    fn empty_and_strict_answers() {
        assert_eq!(run(r#"{"data":{}}"#, KvVersion::V2).unwrap(), vec![]);
        assert_eq!(run(r#"{"data":{"keys":[]}}"#, KvVersion::V2).unwrap(), vec![]);
        for (body, needle) in [
            (r#"{"warnings":[]}"#, "no `data`"),
            (r#"{"data":null}"#, "null"),
            (r#"{"data":[]}"#, "as an object"),
            (r#"{"data":{"keys":[1]}}"#, "invalid type"),
            (r#"{"data":{"keys":null}}"#, "invalid type"),
            (r#"{"data":{"key_info":{}}}"#, "holds key_info"),
            ("", "EOF"),
            ("{}", "no `data`"),
            ("x", "expected"),
            (r#"{"data":{"other":1}}"#, "holds other"),
            (r#"[]"#, "JSON object"),
            (r#"{"data":{"keys":["a"]"#, "EOF"),
            (r#"{"data":{"keys":["a"]}} trailing"#, "trailing"),
        ] {
            let e = run(body, KvVersion::V2).unwrap_err();
            assert!(e.contains(needle), "{body}: {e}");
        }
        let bad = r#"{"data":{"key_info":{"a":{"current_version":"x","versions":{}}},"keys":["a"]}}"#;
        assert!(run(bad, KvVersion::V2).unwrap_err().contains("metadata of `a`"));
        let unlisted = format!(r#"{{"data":{{"key_info":{{"a":{META},"z":{META}}},"keys":["a"]}}}}"#);
        assert!(run(&unlisted, KvVersion::V2).unwrap_err().contains("does not list"));
        let twice = format!(r#"{{"data":{{"key_info":{{"a":{META},"a":{META}}},"keys":["a"]}}}}"#);
        assert!(run(&twice, KvVersion::V2).unwrap_err().contains("twice"));
        let info_only = format!(r#"{{"data":{{"key_info":{{"a":{META}}}}}}}"#);
        assert!(run(&info_only, KvVersion::V2).unwrap_err().contains("no `data.keys`"));
    }

    #[test]
    fn key_metadata_without_current_version_or_versions_fails_but_folders_stay_empty() {
        // `{}` for a key would read as "no live version" (a delete in latest mode).
        for (info, missing) in [
            (r#"{}"#, "current_version"),
            (r#"{"current_version":1,"oldest_version":0}"#, "versions"),
            (r#"{"current_version":1,"versions":null}"#, "null"),
            (r#"{"versions":{"1":{"created_time":"","deletion_time":"","destroyed":false}}}"#, "current_version"),
        ] {
            let body = format!(r#"{{"data":{{"key_info":{{"f/":{{}},"k":{info}}},"keys":["f/","k"]}}}}"#);
            let e = run(&body, KvVersion::V2).unwrap_err();
            assert!(e.contains("metadata of `k`") && e.contains(missing), "{info}: {e}");
        }
        // A key with metadata only (no version yet) is what the server sends with both fields.
        let body = r#"{"data":{"key_info":{"f/":{},"m":{"current_version":0,"versions":{}}},"keys":["f/","m"]}}"#;
        assert_eq!(run(body, KvVersion::V2).unwrap(), vec![("m".into(), true)]);
    }

    #[test]
    fn a_stopping_consumer_stops_the_decode() {
        let body = r#"{"data":{"keys":["a","b","c"]}}"#;
        let mut seen = 0;
        let e = decode(body.as_bytes(), KvVersion::V1, &mut |_s: ListedSecret| {
            seen += 1;
            if seen == 2 { Err("enough".into()) } else { Ok(()) }
        })
        .unwrap_err();
        assert!(e.contains("enough"));
        assert_eq!(seen, 2);
    }
}
