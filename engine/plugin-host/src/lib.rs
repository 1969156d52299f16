//! Plugin host (being built).
