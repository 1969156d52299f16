//! Logging into vsync's log (tagged with the plugin's name). On the host target (native unit
//! tests) messages go to stderr instead.

/// Sends a message at `level` (0 trace .. 4 error).
fn send(level: u8, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::__private::transformer::vsync::plugin::host::{Level, log};
        let level = match level {
            0 => Level::Trace,
            1 => Level::Debug,
            2 => Level::Info,
            3 => Level::Warn,
            _ => Level::Error,
        };
        log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = level;
        eprintln!("[plugin] {message}");
    }
}

/// Logs at debug level.
///
/// ```
/// vsync_plugin_sdk::log::debug("mapping started");
/// ```
pub fn debug(message: &str) {
    send(1, message);
}

/// Logs at info level.
pub fn info(message: &str) {
    send(2, message);
}

/// Logs at warn level.
pub fn warn(message: &str) {
    send(3, message);
}

/// Logs at error level.
pub fn error(message: &str) {
    send(4, message);
}
