//! Dev-only Consul KV emulator (being built).
