//! Graceful shutdown, one signal path for every function: the first SIGTERM or SIGINT starts a
//! drain (readiness turns false, adapters stop pulling new work and finish what is in flight),
//! a second one aborts the process at once (exit code 130).
//!
//! Shutdown is passed into loops as a [`Shutdown`] handle (a watch channel), as in mini-redis:
//! loops `select!` on [`Shutdown::wait`] at their safe points only.

use tokio::sync::watch;

/// A handle that says whether the process is draining. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The side that starts a drain (tests and the signal task).
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
}

// === impl Shutdown ===

impl Shutdown {
    /// A handle and its trigger, not tied to any signal (tests, embedding).
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger { tx }, Shutdown { rx })
    }

    /// Installs the signal handlers: the first SIGTERM/SIGINT calls `on_drain` (start-up
    /// passes "readiness false", so the Service stops sending work) and starts the drain; the
    /// second exits with 130. Call once, from start-up.
    pub fn on_signals(on_drain: impl FnOnce() + Send + 'static) -> Shutdown {
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested: draining (a second signal aborts)");
            on_drain();
            trigger.start();
            wait_for_signal().await;
            tracing::warn!("second signal: aborting");
            std::process::exit(130);
        });
        shutdown
    }

    /// True once a drain started.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when a drain starts (at once if it already has). Cancellation-safe.
    pub async fn wait(&mut self) {
        // An error means the trigger is gone: nothing can start a drain any more, so treat it
        // as one (the process is ending).
        let _ = self.rx.wait_for(|draining| *draining).await;
    }
}

impl Trigger {
    /// Starts the drain.
    pub fn start(&self) {
        self.tx.send_replace(true);
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trigger_reaches_every_clone() {
        let (trigger, mut a) = Shutdown::new();
        let mut b = a.clone();
        assert!(!a.is_draining());
        trigger.start();
        a.wait().await;
        b.wait().await;
        assert!(b.is_draining());
    }
}
