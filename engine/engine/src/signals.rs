//! The shutdown future the binary hands to the role loop: SIGINT or SIGTERM.

use tracing::info;

/// Resolves on SIGINT or SIGTERM. The handlers are installed now, so a signal that arrives
/// while the parts are being built is not lost.
pub fn shutdown() -> impl std::future::Future<Output = ()> + Send + 'static {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        info!("signal received: stopping (nothing partial is committed)");
        let _ = tx.send(());
    });
    async move {
        // A dropped sender means the signal task is gone: never resolve for that.
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
