//! Bounded, non-blocking output: the event loop hands finished lines to a writer thread and never
//! waits for a slow terminal or disk. What does not fit in the queue is shed and counted.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{sync_channel, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
};

/// Lines (or blocks) queued at most before shedding.
const QUEUE: usize = 4096;

pub struct Output {
    tx: Option<SyncSender<String>>,
    thread: Option<JoinHandle<()>>,
    shed: Arc<AtomicU64>,
    write_errors: Arc<AtomicU64>,
}

impl Output {
    /// Writes to stdout from a dedicated thread.
    pub(crate) fn stdout() -> Self {
        Self::to(Box::new(std::io::stdout()))
    }

    pub fn to(mut sink: Box<dyn Write + Send>) -> Self {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let write_errors = Arc::new(AtomicU64::new(0));
        let errors = write_errors.clone();
        let thread = std::thread::Builder::new()
            .name("pathtrace-out".into())
            .spawn(move || {
                for chunk in rx {
                    if sink
                        .write_all(chunk.as_bytes())
                        .and_then(|()| sink.flush())
                        .is_err()
                    {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .ok();
        Self {
            tx: Some(tx),
            thread,
            shed: Arc::new(AtomicU64::new(0)),
            write_errors,
        }
    }

    /// Queues output without waiting; counts it as shed when the queue is full.
    pub(crate) fn send(&self, chunk: String) {
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(chunk) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues output, waiting for room (end of trace, where completeness beats latency).
    pub(crate) fn send_blocking(&self, chunk: String) {
        if let Some(tx) = &self.tx {
            if tx.send(chunk).is_err() {
                self.shed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Waits until everything queued is written.
    pub(crate) fn close(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::warn!("output thread panicked");
            }
        }
        // Said once: `close` runs again when the output is dropped.
        let errors = self.write_errors.swap(0, Ordering::Relaxed);
        if errors > 0 {
            tracing::warn!("{errors} output writes failed");
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.close();
    }
}
