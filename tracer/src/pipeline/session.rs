//! One trace session, shared by every verb that traces (`pathtrace --netns/--container`,
//! `lab demo`, `verify`): attach → read events → hand them to an [`Observer`] (the engine, and
//! a capture writer before it) → detach.
//!
//! Detaching is tied to the [`Tracer`](crate::attach::Tracer)'s `Drop`, so it happens on every way out of [`run`]:
//! the end of `--duration`/`--count`, SIGINT, SIGTERM, a stop request, an error, or a panic.

use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::Notify,
    time::{interval, Instant, MissedTickBehavior},
};
use tracer_common::config::EndpointKey;

use crate::{
    attach::{AttachError, AttachTarget, PendingTracer, TcMode},
    collect::{Collector, Event},
    model::{CountRecord, Hook, HookStats, Reporting},
};

/// Receives what a session sees. Implementations correlate, render and capture.
pub trait Observer {
    /// All hooks are attached; tracing starts now.
    fn attached(&mut self, mode: &str, hooks: &[Hook]);
    /// A batch of events, in ring-buffer order.
    fn events(&mut self, events: &[Event]);
    /// Periodic tick (every 250 ms) with the current CLOCK_MONOTONIC time in ns.
    fn tick(&mut self, now_ns: u64, stats: &[(Hook, HookStats)]);
    /// The session ended; final counters.
    fn finished(&mut self, why: StopReason, end: &Finished);
    /// The set of attached hooks changed (re-attach after a restart, an interface gone).
    fn hooks_changed(&mut self, _hooks: &[Hook], _target_addrs: Option<&[IpAddr]>) {}
    /// Whether packet events must carry their captured bytes (a capture is written). Without,
    /// the reader copies none: `PacketRecord::data` is empty.
    fn wants_frames(&self) -> bool {
        false
    }
    /// Something the user should know (container restarted, interface moved away).
    /// An observer that renders nothing still says what the user should know.
    fn note(&mut self, msg: &str) {
        crate::say(&format!("pathtrace: {msg}"));
    }
}

/// Requests to a running session from outside its loop (e.g. a Docker event watcher).
#[derive(Debug)]
pub(crate) enum Control {
    /// Detaches the hooks on these slots and attaches these targets (after a restart).
    Replace {
        detach_slots: Vec<u8>,
        attach: Vec<AttachTarget>,
        /// The traced side's addresses after the change.
        target_addrs: Vec<IpAddr>,
        note: String,
    },
    /// Hooks these targets (a container's paths after a network change): the ones attached
    /// already stay, the other attached ones are released, the new ones get free slots.
    Rewire {
        attach: Vec<AttachTarget>,
        /// The traced side's addresses after the change.
        target_addrs: Vec<IpAddr>,
        note: String,
    },
    /// More endpoints of interest (a host-network container's new sockets).
    Interest(Vec<EndpointKey>),
    /// Tells the user something.
    Note(String),
    /// Ends the session.
    Stop(String),
}

/// What a session counted, once its programs are detached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Finished {
    /// Per hook: seen, filtered, emitted, lost (final: the programs no longer run).
    pub stats: Vec<(Hook, HookStats)>,
    /// Ring-buffer records that did not decode.
    pub undecodable: u64,
    /// The drop program's counters, when drop reasons were on.
    pub drops: Option<HookStats>,
    /// Hooks released while tracing (their interface gone, moved, or replaced after a restart
    /// or a network change), with their counts when they were released.
    pub released: Vec<(Hook, HookStats)>,
    /// How the hooks reported.
    pub reporting: Reporting,
    /// The filter expression that chose the flows (live: the hooks'; replayed: `show`'s).
    pub filter: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Duration,
    Count,
    Interrupted,
    Terminated,
    Requested,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Duration => "duration reached",
            Self::Count => "count reached",
            Self::Interrupted => "interrupted (SIGINT)",
            Self::Terminated => "terminated (SIGTERM)",
            Self::Requested => "done",
        })
    }
}

pub(crate) struct SessionSpec {
    /// The kernel object, loading (and attaching what it was given) since before the session.
    pub tracer: PendingTracer,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    /// Remote endpoints known to be of interest before any packet is seen.
    pub interest: Vec<EndpointKey>,
    /// Requests from outside (Docker events).
    pub control: Option<tokio::sync::mpsc::Receiver<Control>>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("reading events: {0}")]
    Io(#[from] std::io::Error),
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// How often the ring buffer is drained without a wakeup from the kernel.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// Events taken from the ring buffer per wake-up, at most.
const BATCH: usize = 4096;

/// [`Control::Rewire`]: releases the attached hooks `attach` does not hold, attaches those of
/// `attach` not attached yet on free slots (never-used ones first), and returns the released
/// hooks with their counts.
fn rewire(
    tracer: &mut crate::attach::Tracer,
    attach: Vec<AttachTarget>,
    observer: &mut dyn Observer,
) -> Result<Vec<(Hook, HookStats)>, SessionError> {
    let key = |h: &Hook| (h.ns_label.clone(), h.ifindex, h.direction);
    let wanted: Vec<_> = attach.iter().map(|t| key(&t.hook)).collect();
    let released = tracer.release_where(|h| !wanted.contains(&key(h)))?;
    let have: Vec<_> = tracer.hooks().iter().map(key).collect();
    let mut taken: Vec<u8> = tracer.hooks().iter().map(|h| h.slot).collect();
    let was_used = |s: u8| released.iter().any(|(h, _)| h.slot == s);
    for mut target in attach.into_iter().filter(|t| !have.contains(&key(&t.hook))) {
        let free = |fresh: bool| {
            (0..tracer_common::MAX_HOOKS as u8)
                .find(|s| !taken.contains(s) && (!fresh || !was_used(*s)))
        };
        let Some(slot) = free(true).or_else(|| free(false)) else {
            observer.note(&format!(
                "no free hook slot for {} {}: not traced",
                target.hook.label(),
                target.hook.direction
            ));
            continue;
        };
        target.hook.slot = slot;
        taken.push(slot);
        let label = format!("{} {}", target.hook.label(), target.hook.direction);
        if let Err(e) = tracer.attach(target) {
            observer.note(&format!("attaching {label}: {e}"));
        }
    }
    Ok(released)
}

/// Runs a session to its end. `stop` ends it early (e.g. a probe finished).
pub(crate) async fn run(
    spec: SessionSpec,
    observer: &mut dyn Observer,
    stop: Arc<Notify>,
) -> Result<StopReason, SessionError> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tracer = spec.tracer.wait()?;
    for key in spec.interest {
        tracer.add_interest(key)?;
    }
    if tracer.requested_mode() == TcMode::Auto && !tracer.is_tcx() {
        observer.note("this kernel has no TCX links (Linux < 6.6): attached as netlink clsact filters instead");
    }
    // Drop reasons (tp_btf/kfree_skb): a kernel or object that cannot is said once, not fatal.
    let namer = if tracer.drop_reasons_requested() {
        match tracer.enable_drop_reasons()? {
            crate::attach::DropSupport::Enabled(namer) => Some(namer),
            crate::attach::DropSupport::Unavailable(why) => {
                observer.note(&format!(
                    "drop reasons unavailable: {why}; where packets stop is still shown, at the last hook that saw them, with the reason unknown (kernels before 5.17 report none; later ones need a kernel with BTF)"
                ));
                None
            }
        }
    } else {
        None
    };
    // Before the ring buffer is mapped: its pages count in RSS from the start, on top of
    // whatever the loader left behind.
    release_setup_memory();
    let mut collector = Collector::new(tracer.take_events()?)?;
    collector.keep_frames(observer.wants_frames());
    observer.attached(tracer.mode_name(), &tracer.hooks());

    let deadline = spec.duration.map(|d| Instant::now() + d);
    let mut ticker = interval(Duration::from_millis(250));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(BATCH);
    let mut drained = Vec::new();
    let mut packets = 0u64;
    let mut control = spec.control;
    let mut released: Vec<(Hook, HookStats)> = Vec::new();
    // Events are written without waking us until the ring is a quarter full: drain it often.
    let mut drain = interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut link_check = interval(Duration::from_secs(1));
    link_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            biased;
            _ = sigint.recv() => break StopReason::Interrupted,
            _ = sigterm.recv() => break StopReason::Terminated,
            _ = stop.notified() => break StopReason::Requested,
            _ = sleep_until_opt(deadline) => break StopReason::Duration,
            _ = ticker.tick() => {
                // Before the tick: the counts of packets whose events settle now are there.
                drain_counts(&mut tracer, &mut drained, &mut batch)?;
                packets += deliver(&mut batch, namer.as_ref(), observer);
                let stats = tracer.counters()?;
                observer.tick(monotonic_ns(), &stats);
                if spec.count.is_some_and(|c| packets >= c) {
                    break StopReason::Count;
                }
            }
            _ = link_check.tick() => {
                let gone = tracer.release_vanished();
                released.extend(tracer.retire_counters(&gone)?);
                if !gone.is_empty() {
                    let names: Vec<String> = gone.iter().map(|h| format!("{} {}", h.label(), h.direction)).collect();
                    observer.note(&format!("interface deleted or moved to another namespace; released hooks: {}", names.join(", ")));
                    observer.hooks_changed(&tracer.hooks(), None);
                }
            }
            Some(msg) = recv_opt(&mut control) => match msg {
                Control::Note(n) => observer.note(&n),
                Control::Rewire { attach, target_addrs, note } => {
                    released.extend(rewire(&mut tracer, attach, observer)?);
                    observer.note(&note);
                    observer.hooks_changed(&tracer.hooks(), Some(&target_addrs));
                }
                Control::Interest(keys) => {
                    for key in keys {
                        tracer.add_interest(key)?;
                    }
                }
                Control::Stop(n) => {
                    observer.note(&n);
                    break StopReason::Requested;
                }
                Control::Replace { detach_slots, attach, target_addrs, note } => {
                    released.extend(tracer.release_where(|h| detach_slots.contains(&h.slot))?);
                    for target in attach {
                        let label = format!("{} {}", target.hook.label(), target.hook.direction);
                        if let Err(e) = tracer.attach(target) {
                            observer.note(&format!("re-attaching {label}: {e}"));
                        }
                    }
                    observer.note(&note);
                    observer.hooks_changed(&tracer.hooks(), Some(&target_addrs));
                }
            },
            _ = drain.tick() => {
                collector.drain_some(&mut batch, BATCH);
                packets += deliver(&mut batch, namer.as_ref(), observer);
                if spec.count.is_some_and(|c| packets >= c) {
                    break StopReason::Count;
                }
            }
            read = collector.read(&mut batch, BATCH) => {
                read?;
                packets += deliver(&mut batch, namer.as_ref(), observer);
                if spec.count.is_some_and(|c| packets >= c) {
                    break StopReason::Count;
                }
            }
        }
    };
    // Stop the programs first, then read the counters and take what is still in the ring buffer.
    // Read while the programs still ran, a packet in flight could be counted as seen but not yet
    // as emitted, and events after the read would be reported but not counted.
    let hooks = tracer.hooks();
    tracer.detach_all();
    let stats = tracer.counters_of(&hooks)?;
    collector.drain(&mut batch);
    drain_counts(&mut tracer, &mut drained, &mut batch)?;
    deliver(&mut batch, namer.as_ref(), observer);
    let drops = match namer {
        Some(_) => Some(tracer.drop_counters()?),
        None => None,
    };
    let end = Finished {
        stats,
        undecodable: collector.decode_errors(),
        drops,
        released,
        reporting: tracer.reporting(),
        filter: tracer.filter().map(str::to_string),
    };
    observer.finished(reason, &end);
    Ok(reason)
}

/// Gives back to the system the heap that loading used and freed (kernel BTF parsed twice,
/// the object file, relocations: about 20 MiB). glibc keeps freed memory below the top of the
/// heap mapped, and a trace of hours should not carry its start-up peak in its RSS.
fn release_setup_memory() {
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas to the kernel.
    unsafe { libc::malloc_trim(0) };
}

/// Aggregate mode: the kernel's per-flow counts of the epoch that ends now, as events.
fn drain_counts(
    tracer: &mut crate::attach::Tracer,
    drained: &mut Vec<crate::attach::flows::Drained>,
    batch: &mut Vec<Event>,
) -> Result<(), SessionError> {
    tracer.drain_flows(drained)?;
    let records = drained
        .drain(..)
        .filter_map(|d| CountRecord::of_key(&d.key, &d.counts));
    batch.extend(records.map(Event::Counts));
    Ok(())
}

/// Names drop reasons, hands a batch to the observer and empties it; returns the packet
/// sightings it holds: events of packets the kernel did not count otherwise, and counts.
fn deliver(
    batch: &mut Vec<Event>,
    namer: Option<&crate::attach::DropNamer>,
    observer: &mut dyn Observer,
) -> u64 {
    if batch.is_empty() {
        return 0;
    }
    if let Some(n) = namer {
        n.fill_events(batch);
    }
    let counted_apart = tracer_common::event::WHY_EVERY | tracer_common::event::WHY_UNCOUNTED;
    let packets = batch
        .iter()
        .map(|e| match e {
            Event::Packet(p) => u64::from(p.why & counted_apart != 0),
            Event::Counts(c) => c.packets,
            Event::Drop(_) => 0,
        })
        .sum();
    observer.events(batch);
    batch.clear();
    packets
}

async fn recv_opt(rx: &mut Option<tokio::sync::mpsc::Receiver<Control>>) -> Option<Control> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
