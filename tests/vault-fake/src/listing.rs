//! Listing a mount's keys as OpenBao does: one folder level (LIST, paged with `limit`/`after`,
//! byte order), or every key under a prefix (SCAN). Folders are names ending in `/`; one name
//! can be both a key and a folder.

use std::collections::BTreeMap;

/// The entries directly under `folder` (`""` or ending in `/`), sorted, each once.
pub(crate) fn children<V>(keys: &BTreeMap<String, V>, folder: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for path in keys.range(folder.to_owned()..).map(|(k, _)| k).take_while(|k| k.starts_with(folder)) {
        let rest = &path[folder.len()..];
        let entry = match rest.find('/') {
            Some(i) => &rest[..=i],
            None => rest,
        };
        if entry.is_empty() {
            continue;
        }
        // Entries arrive grouped, but `a/` sorts after `a-b`: keep the list sorted and unique.
        if let Err(i) = out.binary_search_by(|e| e.as_str().cmp(entry)) {
            out.insert(i, entry.to_owned());
        }
    }
    out
}

/// Every key under `prefix` (`""` or ending in `/`), relative to it.
pub(crate) fn scan<V>(keys: &BTreeMap<String, V>, prefix: &str) -> Vec<String> {
    keys.range(prefix.to_owned()..)
        .map(|(k, _)| k)
        .take_while(|k| k.starts_with(prefix))
        .map(|k| k[prefix.len()..].to_owned())
        .filter(|k| !k.is_empty())
        .collect()
}

/// A folder path as listed: `""` for the mount's root, otherwise ending in `/` (a LIST on
/// `a` lists `a/`).
pub(crate) fn folder_of(path: &str) -> String {
    if path.is_empty() || path.ends_with('/') { path.to_owned() } else { format!("{path}/") }
}

/// One page: the entries after `after` (strictly, byte order), at most `limit` (0: all).
pub(crate) fn page(entries: Vec<String>, after: Option<&str>, limit: usize) -> Vec<String> {
    let rest = entries.into_iter().filter(|e| after.is_none_or(|a| e.as_str() > a));
    if limit == 0 { rest.collect() } else { rest.take(limit).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> BTreeMap<String, ()> {
        list.iter().map(|k| ((*k).to_owned(), ())).collect()
    }

    #[test]
    fn folders_and_keys_share_names() {
        let k = keys(&["a-b", "a/x", "a/y/z", "both", "both/y"]);
        assert_eq!(children(&k, ""), ["a-b", "a/", "both", "both/"]);
        assert_eq!(children(&k, "a/"), ["x", "y/"]);
        assert_eq!(scan(&k, "a/"), ["x", "y/z"]);
        assert!(children(&k, "none/").is_empty());
        assert_eq!(page(children(&k, ""), Some("a-b"), 2), ["a/", "both"]);
    }
}
