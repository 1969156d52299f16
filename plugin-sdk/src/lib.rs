//! vsync plugin SDK (being built).
