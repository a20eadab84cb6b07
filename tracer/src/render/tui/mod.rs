//! `--tui`: a full-screen live view of a trace (ratatui on crossterm). The engine's updates go
//! into a [`view::Model`] behind a lock; a thread of its own reads the keyboard and draws the
//! model four times a second. The terminal is taken only once every hook is attached
//! ([`Update::Started`]), and given back as it was (raw mode off, the main screen, the cursor)
//! when the trace ends, on an error (drop) or a panic (hook); the final report is then printed
//! as text, as a trace without `--tui` prints it.
//!
//! `q` or Ctrl-C ends the trace as Ctrl-C always does: a SIGINT to this process, which the
//! session takes as its end (and detaches everything). While the view is up, what would go to
//! stderr (warnings) is read from a pipe into the view's notes, so that it cannot tear the
//! screen; stderr is restored with the terminal.

mod view;

use std::{
    io::{self, BufRead as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossterm::{
    event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::{backend::CrosstermBackend, Terminal};

use super::{text, Output, Rate, Renderer, StreamRenderer, Update};
use view::{Action, Key, Model};

/// How often the screen is drawn (and keys looked for, at least).
const FRAME: Duration = Duration::from_millis(250);

/// The terminal view; a [`Renderer`].
pub struct Tui {
    model: Arc<Mutex<Model>>,
    rate: Rate,
    screen: Option<Screen>,
    /// The final report, printed as text once the screen is given back.
    after: StreamRenderer,
}

impl Tui {
    /// A view that takes the terminal when the trace starts. The caller checked that stdin and
    /// stdout are a terminal.
    pub fn new() -> Self {
        Self {
            model: Arc::new(Mutex::new(Model::default())),
            rate: Rate::default(),
            screen: None,
            after: StreamRenderer::new(&text::Text, Output::stdout(), false),
        }
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        lock(&self.model)
    }

    fn leave(&mut self) {
        if let Some(screen) = self.screen.take() {
            screen.close();
        }
    }
}

impl Default for Tui {
    fn default() -> Self {
        Self::new()
    }
}

fn lock(model: &Mutex<Model>) -> MutexGuard<'_, Model> {
    // A panic while drawing leaves the model as it was: still worth showing.
    model
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Renderer for Tui {
    fn wants_changes(&self) -> bool {
        true
    }

    fn update(&mut self, update: Update<'_>) {
        match update {
            Update::Started { mode, hooks } => {
                {
                    let mut m = self.model();
                    m.mode = mode.to_string();
                    m.hooks = hooks.len();
                }
                match Screen::open(self.model.clone()) {
                    Ok(screen) => self.screen = Some(screen),
                    Err(e) => tracing::warn!("cannot take the terminal for --tui: {e}"),
                }
            }
            Update::FlowChanged { flow, .. } => self.model().flow(flow),
            Update::Note(note) => self.model().note(note),
            Update::Progress(p) => {
                let (elapsed, rate) = self.rate.tick(p);
                let mut m = self.model();
                m.progress = *p;
                m.elapsed_s = elapsed;
                m.per_second = rate;
                m.now_ns = crate::pipeline::session::monotonic_ns();
            }
            Update::Final => {
                self.leave();
                self.after.update(Update::Final);
            }
            other => self.after.update(other),
        }
    }

    fn close(&mut self) {
        self.leave();
        self.after.close();
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The terminal while the view has it: raw mode, the alternate screen, stderr into a pipe, and
/// the thread that draws.
struct Screen {
    stop: Arc<AtomicBool>,
    drawer: Option<JoinHandle<()>>,
    stderr: Option<StderrPipe>,
}

impl Screen {
    fn open(model: Arc<Mutex<Model>>) -> io::Result<Self> {
        terminal::enable_raw_mode()?;
        if let Err(e) = execute!(io::stdout(), EnterAlternateScreen) {
            restore_terminal();
            return Err(e);
        }
        install_panic_hook();
        let stderr = match StderrPipe::open(model.clone()) {
            Ok(p) => Some(p),
            Err(e) => {
                lock(&model).note(&format!("stderr stays on the terminal: {e}"));
                None
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let drawer = std::thread::Builder::new()
            .name("pathtrace-tui".into())
            .spawn(move || {
                if let Err(e) = run(&model, &stopping) {
                    lock(&model).note(&format!("terminal view: {e}"));
                }
            })?;
        Ok(Self {
            stop,
            drawer: Some(drawer),
            stderr,
        })
    }

    fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.drawer.take() {
            if d.join().is_err() {
                tracing::debug!("the terminal view's thread panicked");
            }
        }
        restore_terminal();
        if let Some(p) = self.stderr.take() {
            p.close();
        }
    }
}

/// Draws and reads keys until `stop`.
fn run(model: &Mutex<Model>, stop: &AtomicBool) -> io::Result<()> {
    let mut term = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    term.clear()?;
    let mut drawn = Instant::now() - FRAME;
    while !stop.load(Ordering::Relaxed) {
        if drawn.elapsed() >= FRAME {
            term.draw(|f| lock(model).draw(f))?;
            drawn = Instant::now();
        }
        if !event::poll(FRAME.saturating_sub(drawn.elapsed()))? {
            continue;
        }
        let Event::Key(k) = event::read()? else {
            // A resize: drawn again at once.
            drawn = Instant::now() - FRAME;
            continue;
        };
        if k.kind == KeyEventKind::Release {
            continue;
        }
        let Some(key) = key_of(k.code, k.modifiers) else {
            continue;
        };
        if lock(model).key(key) == Action::Quit {
            // As Ctrl-C without the view: the session ends on SIGINT and detaches.
            // SAFETY: kill(2) on our own pid with a signal the session handles.
            unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
        }
        drawn = Instant::now() - FRAME;
    }
    Ok(())
}

fn key_of(code: KeyCode, mods: KeyModifiers) -> Option<Key> {
    Some(match code {
        KeyCode::Char('c') if mods.contains(KeyModifiers::CONTROL) => Key::CtrlC,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}

/// Gives the terminal back: the main screen, the cursor, cooked mode. Safe to call twice.
fn restore_terminal() {
    // Each step on its own: one failing must not keep the others from running.
    let _main = execute!(io::stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
    let _cooked = terminal::disable_raw_mode();
}

/// A panic while the view is up gives the terminal back before the message is printed.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}

/// stderr (fd 2) redirected into a pipe whose lines become notes; the original put back on
/// close.
struct StderrPipe {
    saved: OwnedFd,
    reader: JoinHandle<()>,
}

impl StderrPipe {
    fn open(model: Arc<Mutex<Model>>) -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: dup of the process's stderr, owned from here on.
        let saved = unsafe { libc::dup(libc::STDERR_FILENO) };
        if saved < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let saved = unsafe { OwnedFd::from_raw_fd(saved) };
        // SAFETY: both descriptors are open; fd 2 now refers to the pipe (`write` is then
        // closed: fd 2 holds the pipe's only write end).
        if unsafe { libc::dup2(write.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
            return Err(io::Error::last_os_error());
        }
        drop(write);
        let reader = std::thread::Builder::new()
            .name("pathtrace-stderr".into())
            .spawn(move || {
                let lines = io::BufReader::new(std::fs::File::from(read)).lines();
                for line in lines.map_while(Result::ok) {
                    lock(&model).note(&line);
                }
            })?;
        Ok(Self { saved, reader })
    }

    /// Puts stderr back, which closes the pipe's write end: the reader sees its end and stops
    /// (not waited for: a child process may still hold a copy of that end).
    fn close(self) {
        // SAFETY: `saved` is open; fd 2 is replaced atomically.
        unsafe { libc::dup2(self.saved.as_raw_fd(), libc::STDERR_FILENO) };
        drop(self.reader);
    }
}
