//! Loading one component: refuse what is not a component, compile it (through the on-disk
//! cache when one is in use), check its declared resources, its exported world and version
//! and every import, then link and pre-instantiate it (which type-checks the exports).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};

use crate::bindings::filter::FilterPre;
use crate::bindings::transformer::{Transformer as TransformerWorld, TransformerPre};
use crate::cache::Lookup;
use crate::error::HostError;
use crate::host::{API_VERSION, CacheCounters, FILTER_EXPORT, PluginHost, PluginKind, TRANSFORMER_EXPORT};
use crate::instance::State;
use crate::sandbox::{self, MAX_ERROR_TEXT, cap_text};

/// A compiled, linked and type-checked plugin, ready to instantiate.
pub(crate) struct Loaded {
    pub(crate) name: String,
    pub(crate) kind: PluginKind,
    pub(crate) source: String,
    pub(crate) pre: Pre,
}

/// The plugin pre-instantiated against its world: imports resolved and export types checked
/// once at load, so a restart after a trap is only `Store::new` + instantiate + configure.
pub(crate) enum Pre {
    Transformer(TransformerPre<State>),
    Filter(FilterPre<State>),
}

/// Whether a component may import `name` (an instance name with its version).
fn import_allowed(name: &str) -> bool {
    name == "vsync:plugin/host@0.1.0"
        || name == "vsync:plugin/types@0.1.0"
        || name.starts_with("wasi:io/")
        || name.starts_with("wasi:cli/")
        || name.starts_with("wasi:random/insecure-seed@")
}

impl PluginHost {
    /// Loads one component under `name`; `source` (its file, or the default pack) names it in
    /// errors.
    pub(crate) fn load_bytes(&mut self, name: &str, source: &str, bytes: &[u8]) -> Result<(), HostError> {
        let file = PathBuf::from(source);
        if let Some(existing) = self.plugins.get(name) {
            return Err(HostError::NameClash {
                name: name.to_owned(),
                file,
                existing: existing.source.clone(),
            });
        }
        // Parse first: a core module or random bytes are refused before compiling.
        if !wasmparser_is_component(bytes) {
            return Err(HostError::InvalidComponent {
                file,
                reason: "not a WebAssembly component (a core module, or not WebAssembly at all)".into(),
            });
        }
        let component = self.compile(name, &file, bytes)?;
        self.check_resources(&file, &component)?;
        let (kind, exports) = self.exported_kind(&file, &component)?;
        let linker = self.linker(&file, &component)?;
        let pre = pre_instantiate(&linker, &component, &file, kind, &exports)?;
        let loaded = Loaded {
            name: name.to_owned(),
            kind,
            source: source.to_owned(),
            pre,
        };
        self.plugins.insert(name.to_owned(), Arc::new(loaded));
        debug!(plugin = name, %kind, source, "plugin loaded");
        Ok(())
    }

    /// The plugin's kind, from its export names (which carry the API version), and every
    /// export's name (for errors).
    fn exported_kind(&self, file: &Path, component: &Component) -> Result<(PluginKind, Vec<String>), HostError> {
        let mut kind = None;
        let mut exports = Vec::new();
        for (export, _) in component.component_type().exports(&self.engine) {
            exports.push(export.to_owned());
            for (prefix, k) in [(TRANSFORMER_EXPORT, PluginKind::Transformer), (FILTER_EXPORT, PluginKind::Filter)] {
                if let Some(version) = export.strip_prefix(prefix).and_then(|r| r.strip_prefix('@')) {
                    if version != API_VERSION {
                        return Err(HostError::IncompatibleApi {
                            file: file.to_owned(),
                            found: version.to_owned(),
                            expected: API_VERSION,
                        });
                    }
                    kind = Some(k);
                }
            }
        }
        match kind {
            Some(kind) => Ok((kind, exports)),
            None => Err(HostError::WrongWorld {
                file: file.to_owned(),
                exports: if exports.is_empty() { "nothing".into() } else { cap_text(exports.join(", "), MAX_ERROR_TEXT) },
            }),
        }
    }

    /// A linker with the host's imports (logging, the insecure seed), refusing any import
    /// outside the allowlist; every other allowed import traps when called.
    fn linker(&self, file: &Path, component: &Component) -> Result<Linker<State>, HostError> {
        let engine_error = |e: wasmtime::Error| HostError::Engine(e.to_string());
        let mut linker: Linker<State> = Linker::new(&self.engine);
        TransformerWorld::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(engine_error)?;
        for (import, _) in component.component_type().imports(&self.engine) {
            if !import_allowed(import) {
                return Err(HostError::ForbiddenImport {
                    file: file.to_owned(),
                    import: cap_text(import.to_owned(), MAX_ERROR_TEXT),
                });
            }
            // The seed Rust's HashMap asks for, under the exact name and version imported (a
            // trap stub would shadow a semver-compatible definition).
            if import.starts_with("wasi:random/insecure-seed@") {
                linker
                    .instance(import)
                    .and_then(|mut i| {
                        i.func_wrap("insecure-seed", |_, (): ()| Ok(((fastrand_u64(), fastrand_u64()),)))
                    })
                    .map_err(engine_error)?;
            }
        }
        linker.define_unknown_imports_as_traps(component).map_err(engine_error)?;
        Ok(linker)
    }

    /// The cache entry's name: SHA-256 of the component, the wasmtime version and the engine
    /// settings that make a compiled artifact incompatible (wasmtime's own hash).
    fn cache_key(&self, bytes: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(bytes);
        h.update(b"\0wasmtime-48.0.8\0");
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut compat);
        h.update(std::hash::Hasher::finish(&compat).to_le_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Refuses a component that declares more, or bigger, memories and tables than an instance
    /// may have: at load, naming the file, rather than at its first instantiation.
    fn check_resources(&self, file: &Path, component: &Component) -> Result<(), HostError> {
        let exceeds = |reason: String| HostError::ExceedsLimits {
            file: file.to_owned(),
            reason,
        };
        let Some(r) = component.resources_required() else {
            return Err(exceeds("it imports core modules, so its memories and tables cannot be checked".into()));
        };
        if r.num_memories as usize > sandbox::MAX_MEMORIES {
            return Err(exceeds(format!(
                "it declares {} linear memories (across its core instances); a plugin may have {}",
                r.num_memories,
                sandbox::MAX_MEMORIES
            )));
        }
        if r.num_tables as usize > sandbox::MAX_TABLES {
            return Err(exceeds(format!("it declares {} tables; a plugin may have {}", r.num_tables, sandbox::MAX_TABLES)));
        }
        // Wasm pages are 64 KiB (custom page sizes are off).
        let initial = r.max_initial_memory_size.unwrap_or(0).saturating_mul(64 << 10);
        if initial > self.cfg.memory_limit {
            return Err(exceeds(format!(
                "its initial linear memory is {initial} bytes, over the memory limit of {} bytes",
                self.cfg.memory_limit
            )));
        }
        let elements = r.max_initial_table_size.unwrap_or(0);
        let limit = sandbox::table_elements(self.cfg.memory_limit);
        if usize::try_from(elements).unwrap_or(usize::MAX) > limit {
            return Err(exceeds(format!("a table starts with {elements} elements, over the limit of {limit}")));
        }
        Ok(())
    }

    /// Compiles, through the on-disk cache when it is in use (see `cache.rs` for why an entry
    /// is trusted).
    fn compile(&self, name: &str, file: &Path, bytes: &[u8]) -> Result<Component, HostError> {
        let invalid = |e: wasmtime::Error| HostError::InvalidComponent {
            file: file.to_owned(),
            reason: format!("{e:#}"),
        };
        let Some(cache) = &self.cache else {
            return Component::new(&self.engine, bytes).map_err(invalid);
        };
        let key = self.cache_key(bytes);
        match cache.get(&key) {
            Lookup::Hit(artifact) => {
                // SAFETY: `deserialize` trusts its input to be wasmtime's own output. This is:
                // the entry authenticated under this user's private key (HMAC-SHA-256 over its
                // name and bytes), from a file of this user's that others cannot write, in a
                // directory likewise, and only `put` below writes such entries, from
                // `serialize`. wasmtime also checks the header and the engine's settings.
                #[allow(unsafe_code)]
                let cached = unsafe { Component::deserialize(&self.engine, &artifact) };
                match cached {
                    Ok(c) => {
                        CacheCounters::bump(&self.stats.hits);
                        return Ok(c);
                    }
                    Err(e) => {
                        CacheCounters::bump(&self.stats.rejected);
                        warn!(plugin = name, path = %cache.entry_path(&key).display(), error = %e, "ignoring an unusable cached component; recompiling");
                    }
                }
            }
            Lookup::Miss => CacheCounters::bump(&self.stats.misses),
            Lookup::Rejected(error) => {
                CacheCounters::bump(&self.stats.rejected);
                warn!(plugin = name, %error, "ignoring a cached component that failed its checks; recompiling");
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(invalid)?;
        match component.serialize() {
            Ok(serialized) => match cache.put(&key, &serialized) {
                Ok(()) => CacheCounters::bump(&self.stats.written),
                Err(error) => debug!(plugin = name, %error, "component cache not written"),
            },
            Err(error) => debug!(plugin = name, %error, "component not serialized for the cache"),
        }
        Ok(component)
    }
}

/// Resolves every import and checks the exported functions' types against the world: an export
/// with the right name but other signatures is refused here, not at first use.
fn pre_instantiate(
    linker: &Linker<State>,
    component: &Component,
    file: &Path,
    kind: PluginKind,
    exports: &[String],
) -> Result<Pre, HostError> {
    let pre: InstancePre<State> = linker.instantiate_pre(component).map_err(|e| HostError::InvalidComponent {
        file: file.to_owned(),
        reason: format!("{e:#}"),
    })?;
    let wrong_world = |e: wasmtime::Error| HostError::WrongWorld {
        file: file.to_owned(),
        exports: cap_text(
            format!("{} (its {kind} API does not match wit/plugin@{API_VERSION}: {e:#})", exports.join(", ")),
            MAX_ERROR_TEXT,
        ),
    };
    Ok(match kind {
        PluginKind::Transformer => Pre::Transformer(TransformerPre::new(pre).map_err(wrong_world)?),
        PluginKind::Filter => Pre::Filter(FilterPre::new(pre).map_err(wrong_world)?),
    })
}

/// Cheap non-cryptographic randomness for the guest's HashMap seed (what the WASI interface
/// promises: "insecure").
fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish()
}

/// A component (layer 0x0d version 1 = component) vs a core module (version 1, layer 0).
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}

