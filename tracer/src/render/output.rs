//! Bounded, non-blocking output: the event loop hands finished lines to a writer thread and never
//! waits for a slow terminal or disk. What does not fit in the queue is shed and counted.
//!
//! With a status line ([`Output::with_status_line`], only when stderr is a terminal), the same
//! thread keeps one line on stderr up to date: erased before each chunk of output and drawn again
//! after it, so that output and status never interleave, and erased for good at the end.

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

/// What the writer thread is handed.
enum Message {
    Chunk(String),
    /// The status line's new text.
    Status(String),
}

pub struct Output {
    tx: Option<SyncSender<Message>>,
    thread: Option<JoinHandle<()>>,
    shed: Arc<AtomicU64>,
    write_errors: Arc<AtomicU64>,
}

impl Output {
    /// Writes to stdout from a dedicated thread.
    pub(crate) fn stdout() -> Self {
        Self::to(Box::new(std::io::stdout()))
    }

    pub fn to(sink: Box<dyn Write + Send>) -> Self {
        Self::spawn(sink, false)
    }

    /// Like [`Output::to`], and keeps a status line on stderr when stderr is a terminal (else
    /// status updates are ignored).
    pub(crate) fn with_status_line(sink: Box<dyn Write + Send>) -> Self {
        Self::spawn(sink, std::io::IsTerminal::is_terminal(&std::io::stderr()))
    }

    fn spawn(mut sink: Box<dyn Write + Send>, status_line: bool) -> Self {
        let (tx, rx) = sync_channel::<Message>(QUEUE);
        let write_errors = Arc::new(AtomicU64::new(0));
        let errors = write_errors.clone();
        let thread = std::thread::Builder::new()
            .name("pathtrace-out".into())
            .spawn(move || {
                let mut status = StatusLine::new(status_line);
                for message in rx {
                    match message {
                        Message::Chunk(chunk) => {
                            status.erase();
                            if sink
                                .write_all(chunk.as_bytes())
                                .and_then(|()| sink.flush())
                                .is_err()
                            {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            status.draw();
                        }
                        Message::Status(text) => status.set(text),
                    }
                }
                status.erase();
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
        match tx.try_send(Message::Chunk(chunk)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues output, waiting for room (end of trace, where completeness beats latency).
    pub(crate) fn send_blocking(&self, chunk: String) {
        if let Some(tx) = &self.tx {
            if tx.send(Message::Chunk(chunk)).is_err() {
                self.shed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Replaces the status line's text (nothing without a status line). Never waits, never
    /// counted as shed: the next tick brings a fresher one.
    pub(crate) fn status(&self, text: String) {
        if let Some(tx) = &self.tx {
            let _ignored = tx.try_send(Message::Status(text));
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

/// One line at the bottom of a terminal, on stderr: drawn with a carriage return and erased with
/// "erase line", cut to the terminal's width so that it never wraps (a wrapped line could not be
/// erased).
struct StatusLine {
    enabled: bool,
    text: String,
    shown: bool,
}

impl StatusLine {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            text: String::new(),
            shown: false,
        }
    }

    /// Empty text erases the line.
    fn set(&mut self, text: String) {
        self.text = text;
        self.erase();
        self.draw();
    }

    fn draw(&mut self) {
        if !self.enabled || self.text.is_empty() {
            return;
        }
        let width = crossterm::terminal::size().map_or(80, |(w, _)| usize::from(w));
        let line: String = self.text.chars().take(width.saturating_sub(1)).collect();
        let mut err = std::io::stderr().lock();
        self.shown = write!(err, "\r\x1b[2K{line}")
            .and_then(|()| err.flush())
            .is_ok();
    }

    fn erase(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            // Nothing to be done when stderr went away.
            let _ignored = write!(err, "\r\x1b[2K").and_then(|()| err.flush());
            self.shown = false;
        }
    }
}
