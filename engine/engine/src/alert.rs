//! Alerting on fatal faults: a log line with the full context and, when `[alert] webhook` is
//! set, a JSON POST (role, destination, kind, message, time), tried a few times.

use std::time::Duration;

use serde::Serialize;
use tracing::{error, warn};

use crate::fault::Fault;

/// What the alert webhook receives. Never tokens or secret values: messages come from typed
/// errors that carry neither.
#[derive(Debug, Serialize)]
pub struct AlertBody<'a> {
    /// `origin`, `destination` or `run`.
    pub role: &'a str,
    /// Destination name, if any.
    pub destination: Option<&'a str>,
    /// Fatal cause (`permission-denied`, `mass-delete-guard`, ...).
    pub kind: &'a str,
    /// The error with its context.
    pub message: &'a str,
    /// RFC 3339 time.
    pub time: String,
}

/// Posts fatal faults to the configured webhook, and logs them.
#[derive(Clone)]
pub struct Alerter {
    webhook: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The webhook URL often embeds a credential: never printed.
        f.debug_struct("Alerter").field("webhook", &self.webhook.as_ref().map(|_| "<set>")).finish()
    }
}

impl Alerter {
    /// An alerter for `[alert] webhook` (none: log only).
    pub fn new(webhook: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { webhook, http }
    }

    /// Reports a fault that stops the process: a fatal one is logged with its cause and sent
    /// to the webhook; any other (a `--once` cycle that failed) is reported by the exit code.
    pub async fn fatal(&self, role: &str, destination: Option<&str>, fault: &Fault) {
        let Some(cause) = fault.fatal_cause() else { return };
        let kind = cause.kind();
        error!(role, destination, kind, "fatal: {}; stopping", fault.message);
        let Some(url) = &self.webhook else { return };
        let body = AlertBody {
            role,
            destination,
            kind,
            message: &fault.message,
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            match self.http.post(url).json(&body).send().await {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => warn!(status = r.status().as_u16(), "alert webhook refused the alert"),
                // reqwest errors can carry the URL: log only the kind of failure.
                Err(e) => warn!(timeout = e.is_timeout(), connect = e.is_connect(), "alert webhook unreachable"),
            }
        }
        error!("the alert webhook could not be reached; the fatal error is only in this log");
    }
}
