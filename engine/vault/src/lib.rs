//! `vsync-vault`: an async client for the KV v1 and v2 HTTP API of HashiCorp Vault, OpenBao
//! and Deckhouse Stronghold.
//!
//! It encodes every path segment, never follows redirects (they would carry the token), reads
//! 404 bodies (a deleted version is not a missing key), types every error class, retries the
//! transient ones with backoff and jitter, counts requests by class, and never shows the token
//! or a secret value in `Debug`, logs or errors.

mod auth;
mod client;
pub mod concurrency;
mod error;
mod kv;
mod listing;
pub mod transport;
mod types;

pub use auth::{Login, TokenLease};
pub use client::{
    DEFAULT_BACKPRESSURE_BUDGET, DEFAULT_LIST_PAGE_SIZE, HttpVersion, RequestCounts, RequestKind, RequestOutcome, RetryPolicy, Token, VaultClient,
    VaultConfig,
};
pub use error::{Result, VaultError};
pub use transport::ProtocolCounts;
pub use kv::MetadataSettings;
pub use types::{
    DataRead, KvMetadata, ListedSecret, MountInfo, SecretData, VersionInfo, VersionMeta,
};
