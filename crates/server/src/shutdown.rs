//! The shutdown signal that long-lived request handlers watch: set once by
//! [`Trigger::fire`], seen by every clone of [`Shutdown`], async or blocking. A handler
//! that can outlive its client's interest (a publish stream the client never closes, a
//! paced replay) ends with `UNAVAILABLE` when it fires, so that a drain never waits on
//! it. The threads of the pipeline (feed, engine, recorder) stop in order instead, from
//! `app::RunningServer::shutdown`.

use tokio::sync::watch;

/// Fires the signal.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Watches the signal; cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new, unfired signal.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tells every watcher; later calls do nothing.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// True once fired (for blocking code that polls it).
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once fired (or once the trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_signal_once_fired() {
        let (trigger, shutdown) = channel();
        let mut waiting = shutdown.clone();
        let waiter = tokio::spawn(async move { waiting.wait().await });
        assert!(!shutdown.is_set());
        trigger.fire();
        trigger.fire();
        waiter.await.unwrap();
        assert!(shutdown.is_set());
        // A watcher that starts after the signal does not wait.
        shutdown.clone().wait().await;
    }
}
