//! Load the kernel programs and attach them at the discovered hooks; detach all of it on every
//! exit path (the [`Tracer`] detaches in `Drop`, inside each hook's own namespace).

mod drops;
pub mod flows;
pub mod markers;
mod object;

use std::sync::Arc;

use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use tracer_common::{
    config::{FilterConfig, HookConfig, HookCounters, ModeConfig, FLOW_STATS_MAX, HOOK_ENTRY},
    names::{
        GLOBAL_FILTER, GLOBAL_LOG_LEVEL, GLOBAL_MODE, GLOBAL_SKB_OFFSETS, GLOBAL_WAKE_BYTES,
        HOOK_PROGRAM_PREFIX, MAP_COUNTERS, MAP_EVENTS, MAP_FLOW_STATS, MAP_HOOKS, MAP_INTEREST,
        MAP_SEEN,
    },
    MAX_HOOKS,
};

use crate::{
    discover::{netns::Netns, rtnl::Rtnl},
    model::{Direction, Hook, HookStats},
};

pub use drops::{DropNamer, DropSupport, DROP_PROGRAM};
pub use object::object_bytes;

/// How programs are attached at tc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcMode {
    /// TCX links when the kernel has them (>= 6.6), netlink clsact filters otherwise.
    #[default]
    Auto,
    /// TCX links only.
    Tcx,
    /// cls_bpf filters on a clsact qdisc, over netlink.
    Netlink,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("this pathtrace binary was built without its kernel programs; build it with `cargo xtask build` (PATHTRACE_BUILD_EBPF=1)")]
    NoObject,
    #[error("loading the kernel programs failed: {0}; pathtrace needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) and a kernel with BTF (/sys/kernel/btf/vmlinux)")]
    Load(#[source] aya::EbpfError),
    #[error("kernel program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {0} is missing from the kernel object")]
    MissingMap(&'static str),
    #[error(transparent)]
    Expression(#[from] crate::filter::ebpf::PatchError),
    #[error("program {0} is missing from the kernel object")]
    MissingProgram(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("attaching at {hook} {dir}: {source}")]
    Attach {
        hook: String,
        dir: Direction,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("adding a clsact qdisc on {hook}: {source}")]
    Qdisc {
        hook: String,
        #[source]
        source: tc::TcError,
    },
    #[error("TCX links need Linux >= 6.6 (this kernel is older); use --tc-mode netlink")]
    NoTcx,
    #[error(transparent)]
    Netns(#[from] crate::discover::netns::NetnsError),
    #[error("all {MAX_HOOKS} hook slots are in use")]
    NoSlot,
    #[error("resetting hook counters: {0}")]
    Counters(#[source] std::io::Error),
}

/// What to load, fixed for the object's lifetime.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub filter: FilterConfig,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Kernel-side debug messages (aya-log), off unless asked.
    pub kernel_log: bool,
    /// Prepare drop reasons (read `struct sk_buff` offsets from the kernel's BTF into the
    /// object); [`Tracer::enable_drop_reasons`] then attaches them.
    pub drop_reasons: bool,
    /// Aggregate in the kernel, or one event per packet per hook.
    pub mode: ModeConfig,
    /// A pcap-filter expression for the hooks where flows start (with `FILTER_EXPR` in
    /// `filter.flags`): written into the object's filter subprogram before it is loaded.
    pub expression: Option<crate::filter::Expression>,
}

/// A hook to attach: where, and in which namespace.
#[derive(Clone, Debug)]
pub struct AttachTarget {
    pub hook: Hook,
    pub netns: Arc<Netns>,
}

struct Attached {
    target: AttachTarget,
    link: Option<SchedClassifierLink>,
    /// The clsact qdisc we added (netlink mode), which we must remove.
    created_qdisc: Option<markers::QdiscMarker>,
}

/// A [`Tracer`] loading on a thread of its own, so that reading the kernel's BTF, loading the
/// object and (with TCX) attaching overlap what the caller does meanwhile: discovering the
/// hooks, then reading the NAT rules. Dropped without [`PendingTracer::wait`] (the caller failed
/// meanwhile), it waits for the thread and detaches whatever it attached.
pub(crate) struct PendingTracer {
    targets: Option<std::sync::mpsc::Sender<Vec<AttachTarget>>>,
    thread: Option<std::thread::JoinHandle<Result<Loaded, AttachError>>>,
}

/// What the loading thread hands back: the tracer, and the targets left for [`PendingTracer::wait`].
struct Loaded {
    tracer: Tracer,
    deferred: Vec<AttachTarget>,
}

impl PendingTracer {
    /// Starts loading. `rt` runs the kernel log reader when `opts.kernel_log` asks for one.
    pub(crate) fn spawn(opts: LoadOptions, mode: TcMode, rt: &tokio::runtime::Handle) -> Self {
        let rt = rt.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<AttachTarget>>();
        let thread = std::thread::spawn(move || {
            let _runtime = rt.enter();
            let mut tracer = Tracer::load(&opts, mode)?;
            // No targets (the sender is gone): the caller only wanted the object loaded.
            let targets = rx.recv().unwrap_or_default();
            if !tracer.tcx {
                // Netlink filters outlive the process: they are added only once the session
                // handles SIGINT/SIGTERM, in `wait`. TCX links close with the process however it
                // ends, so they can be made before.
                return Ok(Loaded {
                    tracer,
                    deferred: targets,
                });
            }
            tracer.attach_all(targets)?;
            Ok(Loaded {
                tracer,
                deferred: Vec::new(),
            })
        });
        Self {
            targets: Some(tx),
            thread: Some(thread),
        }
    }

    /// Attaches `targets` as soon as the object is loaded (TCX), or in [`PendingTracer::wait`]
    /// (netlink). Only the first call counts.
    pub(crate) fn attach(&mut self, targets: Vec<AttachTarget>) {
        if let Some(tx) = self.targets.take() {
            // A send fails only when loading failed and the thread ended: `wait` reports that.
            if tx.send(targets).is_err() {
                tracing::debug!("not attaching: the kernel object did not load");
            }
        }
    }

    /// The loaded tracer with the targets of [`PendingTracer::attach`] attached (blocks until it
    /// is). On error nothing stays attached. A panic while loading goes on here.
    pub(crate) fn wait(mut self) -> Result<Tracer, AttachError> {
        self.targets = None;
        let thread = self.thread.take().expect("waited once");
        let Loaded {
            mut tracer,
            deferred,
        } = thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        tracer.attach_all(deferred)?;
        Ok(tracer)
    }
}

impl Drop for PendingTracer {
    fn drop(&mut self) {
        self.targets = None;
        if let Some(thread) = self.thread.take() {
            // The tracer (if any) is dropped here, which detaches it. Its error, or a panic, no
            // longer matters to a caller that is leaving on an error of its own.
            drop(thread.join());
        }
    }
}

/// The loaded object and everything attached from it.
pub struct Tracer {
    ebpf: Ebpf,
    attached: Vec<Attached>,
    mode: TcMode,
    tcx: bool,
    drops: drops::DropState,
    /// When each slot's hook was last attached (kernel monotonic time, just after): kept after
    /// detaching, for the final counters.
    attach_times: Vec<(u8, Direction, u64)>,
    /// When [`Tracer::detach_all`] began; 0 before.
    detach_ns: u64,
    /// Aggregate mode (`FLOW_STATS` in use).
    aggregate: bool,
    /// Aggregate mode's sampling threshold.
    sample_below: Option<u32>,
    /// The epoch the hooks count in now (see [`flows`]).
    epoch: u8,
    /// The filter expression the hooks evaluate, as the user gave it.
    filter: Option<String>,
}

/// `FLOW_STATS` entries: every entry holds a value per possible CPU, so a host with many CPUs
/// gets fewer, for about 16 MiB of kernel memory at most.
fn flow_stats_entries() -> u32 {
    let cpus = aya::util::nr_cpus().unwrap_or(1).max(1) as u32;
    let per_entry = 96 + 32 * cpus;
    ((16 << 20) / per_entry).clamp(4096, FLOW_STATS_MAX)
}

impl Tracer {
    pub fn load(opts: &LoadOptions, mode: TcMode) -> Result<Self, AttachError> {
        let bytes = object_bytes();
        if bytes.is_empty() {
            return Err(AttachError::NoObject);
        }
        let has_tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        let tcx = match mode {
            TcMode::Auto => has_tcx,
            TcMode::Tcx if !has_tcx => return Err(AttachError::NoTcx),
            TcMode::Tcx => true,
            TcMode::Netlink => false,
        };
        raise_memlock_before_5_11();
        let log_level: u8 = if opts.kernel_log { 0xff } else { 0 };
        let (drops, skb_offsets) = drops::DropState::prepare(opts.drop_reasons);
        // The kernel wakes the reader once a quarter of the ring waits; the session drains it on
        // a timer otherwise (see `cmd::session`).
        let wake_bytes = u64::from(opts.ring_bytes / 4);
        let patched = match &opts.expression {
            Some(expr) => Some(object::with_expression(bytes, expr)?),
            None => None,
        };
        let bytes = patched.as_ref().map_or(bytes, |p| p.bytes());
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_WAKE_BYTES, &wake_bytes, true)
            .override_global(GLOBAL_FILTER, &opts.filter, true)
            .override_global(GLOBAL_MODE, &opts.mode, true)
            .map_max_entries(MAP_FLOW_STATS, flow_stats_entries())
            .override_global(GLOBAL_SKB_OFFSETS, &skb_offsets, true)
            .override_global(GLOBAL_LOG_LEVEL, &log_level, false)
            .map_max_entries(MAP_EVENTS, opts.ring_bytes)
            .load(bytes)
            .map_err(AttachError::Load)?;
        if opts.kernel_log {
            object::start_kernel_log(&mut ebpf);
        }
        Ok(Self {
            ebpf,
            attached: Vec::new(),
            attach_times: Vec::new(),
            detach_ns: 0,
            mode,
            tcx,
            drops,
            aggregate: opts.mode.aggregate != 0,
            sample_below: (opts.mode.aggregate != 0).then_some(opts.mode.sample_below),
            filter: opts.expression.as_ref().map(|e| e.text().to_string()),
            epoch: 0,
        })
    }

    /// How the hooks report.
    /// The filter expression the hooks evaluate, as the user gave it.
    pub(crate) fn filter(&self) -> Option<&str> {
        self.filter.as_deref()
    }

    pub(crate) fn reporting(&self) -> crate::model::Reporting {
        match self.sample_below {
            Some(below) => crate::model::Reporting::Aggregate {
                sample: (u32::MAX / below.max(1)).max(1),
            },
            None => crate::model::Reporting::EveryPacket,
        }
    }

    /// Whether this tracer attaches TCX links (else netlink clsact filters).
    pub(crate) fn is_tcx(&self) -> bool {
        self.tcx
    }

    /// `tcx` or `netlink`: what this tracer attaches with.
    pub(crate) fn mode_name(&self) -> &'static str {
        if self.tcx {
            "tcx"
        } else {
            "netlink"
        }
    }

    pub(crate) fn requested_mode(&self) -> TcMode {
        self.mode
    }

    /// Attaches one hook: loads its slot's program, writes the slot's role, attaches in the
    /// hook's namespace. On error nothing of this hook stays attached.
    pub fn attach(&mut self, target: AttachTarget) -> Result<(), AttachError> {
        let tcx = self.tcx;
        let prog = self.prepare_slot(&target.hook)?;
        let (link, created_qdisc) = attach_program(prog, &target, tcx)?;
        self.push_attached(target, link, created_qdisc);
        Ok(())
    }

    /// Attaches all `targets`, in their order. On error the hooks attached so far stay in the
    /// tracer (which detaches them when dropped) and the first error is returned.
    ///
    /// Creating a TCX link waits for RCU grace periods in the kernel (about 10 ms, under the
    /// RTNL lock, so links cannot be made in parallel), and verifying a program costs a few ms of
    /// CPU: with TCX, the programs are loaded here while another thread attaches the loaded
    /// ones, so the loads overlap the waits. Netlink attaches stay one at a time: the hooks of
    /// one interface share the clsact qdisc that the first of them adds.
    pub(crate) fn attach_all(&mut self, targets: Vec<AttachTarget>) -> Result<(), AttachError> {
        if !self.tcx || !distinct_slots(&targets) {
            self.preload(&targets);
            return targets.into_iter().try_for_each(|t| self.attach(t));
        }
        for target in &targets {
            self.write_slot_config(&target.hook)?;
        }
        let mut programs: std::collections::HashMap<&str, &mut aya::programs::Program> =
            self.ebpf.programs_mut().collect();
        let mut slots = Vec::with_capacity(targets.len());
        for target in &targets {
            let name = slot_program_name(target.hook.slot);
            let prog = programs.remove(name.as_str()).ok_or(AttachError::NoSlot)?;
            let prog: &mut SchedClassifier =
                prog.try_into().map_err(|source| AttachError::Program {
                    name: name.clone(),
                    source,
                })?;
            slots.push((name, prog));
        }
        let drop_prog = programs.remove(DROP_PROGRAM);
        // Verifying is CPU work and each program is verified on its own: they load on up to
        // four threads at once (the attacher takes them in path order as they come).
        let loaders = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
        let queue: std::sync::Mutex<std::collections::VecDeque<_>> =
            std::sync::Mutex::new(slots.into_iter().enumerate().collect());
        let (links, drop_preload) = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel::<LoadedSlot<'_>>();
            let attacher = scope.spawn(|| attach_in_order(rx, &targets));
            for _ in 0..loaders {
                let (tx, queue) = (tx.clone(), &queue);
                scope.spawn(move || loop {
                    let next = queue.lock().map(|mut q| q.pop_front()).ok().flatten();
                    let Some((i, (name, prog))) = next else {
                        return;
                    };
                    let loaded = load_slot(prog, &name).map(|()| prog);
                    // The attacher stops at its first error; what is left is not attached.
                    if tx.send((i, loaded)).is_err() {
                        return;
                    }
                });
            }
            drop(tx);
            // The drop program's BTF and verifier work fits in the time the links take.
            let drop_preload = drop_prog.map(|prog| self.drops.preload(prog));
            (join_thread(attacher), drop_preload)
        });
        if let Some(Err(why)) = drop_preload {
            self.drops.unavailable(why);
        }
        let mut first_error = None;
        for (target, link) in targets.into_iter().zip(links) {
            match link {
                Ok((link, created_qdisc)) => self.push_attached(target, link, created_qdisc),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Loads (verifies) the programs of the targets' slots on several threads at once, before
    /// they are attached one by one. A program that fails here is loaded again by
    /// [`Tracer::attach`], which reports why.
    fn preload(&mut self, targets: &[AttachTarget]) {
        let names: Vec<String> = targets
            .iter()
            .map(|t| slot_program_name(t.hook.slot))
            .collect();
        let progs: std::collections::VecDeque<(&str, &mut SchedClassifier)> = self
            .ebpf
            .programs_mut()
            .filter(|(name, _)| names.iter().any(|n| n == name))
            .filter_map(|(name, p)| Some((name, <&mut SchedClassifier>::try_from(p).ok()?)))
            .collect();
        let loaders = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
        let queue = std::sync::Mutex::new(progs);
        std::thread::scope(|scope| {
            for _ in 0..loaders {
                let queue = &queue;
                scope.spawn(move || loop {
                    let next = queue.lock().map(|mut q| q.pop_front()).ok().flatten();
                    let Some((name, prog)) = next else {
                        return;
                    };
                    if let Err(e) = load_slot(prog, name) {
                        tracing::debug!("preloading {name}: {e}");
                    }
                });
            }
        });
    }

    fn push_attached(
        &mut self,
        target: AttachTarget,
        link: SchedClassifierLink,
        created_qdisc: Option<markers::QdiscMarker>,
    ) {
        tracing::debug!(hook = %target.hook.label(), dir = %target.hook.direction, slot = target.hook.slot, mode = self.mode_name(), "attached");
        let key = (target.hook.slot, target.hook.direction);
        self.attach_times.retain(|t| (t.0, t.1) != key);
        self.attach_times
            .push((key.0, key.1, crate::pipeline::session::monotonic_ns()));
        self.attached.push(Attached {
            target,
            link: Some(link),
            created_qdisc,
        });
    }

    /// Writes a hook's direction and role into its slot and loads the slot's program (once).
    /// `attach` does this itself; tests use it to run a slot's program with `test_run`.
    pub fn prepare_slot(&mut self, hook: &Hook) -> Result<&mut SchedClassifier, AttachError> {
        self.write_slot_config(hook)?;
        let name = slot_program_name(hook.slot);
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(&name)
            .ok_or(AttachError::NoSlot)?
            .try_into()
            .map_err(|source| AttachError::Program {
                name: name.clone(),
                source,
            })?;
        load_slot(prog, &name)?;
        Ok(prog)
    }

    /// Writes a hook's direction and role into its slot of the `HOOKS` map.
    fn write_slot_config(&mut self, hook: &Hook) -> Result<(), AttachError> {
        let entry = hook.place.is_entry(hook.direction);
        let cfg = HookConfig {
            direction: hook.direction.raw(),
            role: hook.role.raw(),
            flags: if entry { HOOK_ENTRY } else { 0 },
        };
        let mut hooks: Array<&mut MapData, HookConfig> = Array::try_from(
            self.ebpf
                .map_mut(MAP_HOOKS)
                .ok_or(AttachError::MissingMap(MAP_HOOKS))?,
        )
        .map_err(|source| AttachError::Map {
            name: MAP_HOOKS,
            source,
        })?;
        hooks
            .set(u32::from(hook.slot), cfg, 0)
            .map_err(|source| AttachError::Map {
                name: MAP_HOOKS,
                source,
            })
    }

    /// The hooks attached so far.
    pub(crate) fn hooks(&self) -> Vec<Hook> {
        self.attached
            .iter()
            .map(|a| a.target.hook.clone())
            .collect()
    }

    /// Detaches the hooks on one interface (moved away or deleted while traced).
    pub(crate) fn detach_where(&mut self, mut pred: impl FnMut(&Hook) -> bool) -> Vec<Hook> {
        let mut gone = Vec::new();
        let mut keep = Vec::new();
        let mut leaving = Vec::new();
        for a in std::mem::take(&mut self.attached) {
            if pred(&a.target.hook) {
                gone.push(a.target.hook.clone());
                leaving.push(a);
            } else {
                keep.push(a);
            }
        }
        while let Some(mut a) = leaving.pop() {
            let shared = hand_over_qdisc(&mut a, leaving.iter_mut().chain(keep.iter_mut()));
            detach_one(a, self.tcx, shared);
        }
        self.attached = keep;
        gone
    }

    /// Finds hooks whose interface was deleted or moved to another namespace (its ifindex no
    /// longer names it in the hook's namespace), detaches them and returns them.
    pub(crate) fn release_vanished(&mut self) -> Vec<Hook> {
        let mut vanished: Vec<(u8, Direction)> = Vec::new();
        let mut checked: Vec<(Arc<Netns>, LinkNames)> = Vec::new();
        for a in &self.attached {
            let links = match checked
                .iter()
                .find(|(ns, _)| Arc::ptr_eq(ns, &a.target.netns))
            {
                Some((_, links)) => links.clone(),
                None => {
                    let listed = a
                        .target
                        .netns
                        .run(|| Rtnl::open().and_then(|mut r| r.links()))
                        .ok()
                        .and_then(Result::ok)
                        .map(|ls| {
                            ls.into_iter()
                                .map(|l| (l.ifindex, l.name))
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default();
                    checked.push((a.target.netns.clone(), listed.clone()));
                    listed
                }
            };
            let h = &a.target.hook;
            if !links.iter().any(|(i, n)| *i == h.ifindex && *n == h.ifname) {
                vanished.push((h.slot, h.direction));
            }
        }
        self.detach_where(|h| vanished.contains(&(h.slot, h.direction)))
    }

    /// Detaches everything, each link inside its own namespace, and removes qdiscs we added.
    pub(crate) fn detach_all(&mut self) {
        if self.detach_ns == 0 && !self.attached.is_empty() {
            self.detach_ns = crate::pipeline::session::monotonic_ns();
        }
        self.drops.detach();
        while let Some(mut a) = self.attached.pop() {
            let shared = hand_over_qdisc(&mut a, self.attached.iter_mut());
            detach_one(a, self.tcx, shared);
        }
    }

    /// The event ring buffer (taken once, by the collector).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, AttachError> {
        let map = self
            .ebpf
            .take_map(MAP_EVENTS)
            .ok_or(AttachError::MissingMap(MAP_EVENTS))?;
        RingBuf::try_from(map).map_err(|source| AttachError::Map {
            name: MAP_EVENTS,
            source,
        })
    }

    /// Per-hook counters summed over CPUs, for the attached slots.
    pub fn counters(&self) -> Result<Vec<(Hook, HookStats)>, AttachError> {
        self.counters_of(&self.hooks())
    }

    /// Per-hook counters summed over CPUs for `hooks`, attached or not: the counters outlive the
    /// links, so after [`Tracer::detach_all`] they are final.
    pub(crate) fn counters_of(
        &self,
        hooks: &[Hook],
    ) -> Result<Vec<(Hook, HookStats)>, AttachError> {
        let map = self
            .ebpf
            .map(MAP_COUNTERS)
            .ok_or(AttachError::MissingMap(MAP_COUNTERS))?;
        let counters: PerCpuArray<&MapData, HookCounters> =
            PerCpuArray::try_from(map).map_err(|source| AttachError::Map {
                name: MAP_COUNTERS,
                source,
            })?;
        let mut out = Vec::new();
        for hook in hooks {
            let per_cpu =
                counters
                    .get(&u32::from(hook.slot), 0)
                    .map_err(|source| AttachError::Map {
                        name: MAP_COUNTERS,
                        source,
                    })?;
            let mut sum = HookStats::default();
            for c in per_cpu.iter() {
                sum.seen += c.seen;
                sum.filtered += c.filtered;
                sum.emitted += c.emitted;
                sum.lost += c.lost;
                sum.aggregated += c.aggregated;
                sum.overflow += c.overflow;
            }
            sum.attached_ns = self
                .attach_times
                .iter()
                .find(|t| (t.0, t.1) == (hook.slot, hook.direction))
                .map_or(0, |t| t.2);
            sum.detached_ns = self.detach_ns;
            out.push((hook.clone(), sum));
        }
        Ok(out)
    }

    /// Detaches the hooks `pred` picks and returns each with its final counters; their slots'
    /// counters start again from zero, so that a hook attached there later counts only its own.
    pub(crate) fn release_where(
        &mut self,
        pred: impl FnMut(&Hook) -> bool,
    ) -> Result<Vec<(Hook, HookStats)>, AttachError> {
        let gone = self.detach_where(pred);
        self.retire_counters(&gone)
    }

    /// The final counters of hooks already detached, their slots' counters then zeroed.
    pub(crate) fn retire_counters(
        &mut self,
        gone: &[Hook],
    ) -> Result<Vec<(Hook, HookStats)>, AttachError> {
        let counted = self.counters_of(gone)?;
        let map = self
            .ebpf
            .map_mut(MAP_COUNTERS)
            .ok_or(AttachError::MissingMap(MAP_COUNTERS))?;
        let mut counters: PerCpuArray<&mut MapData, HookCounters> = PerCpuArray::try_from(map)
            .map_err(|source| AttachError::Map {
                name: MAP_COUNTERS,
                source,
            })?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| AttachError::Counters(e))?;
        for hook in gone {
            let zero = aya::maps::PerCpuValues::try_from(vec![HookCounters::default(); cpus])
                .map_err(AttachError::Counters)?;
            counters
                .set(u32::from(hook.slot), zero, 0)
                .map_err(|source| AttachError::Map {
                    name: MAP_COUNTERS,
                    source,
                })?;
        }
        Ok(counted)
    }

    /// Declares a remote endpoint of interest up front (e.g. a published port's host address),
    /// so shared hooks emit its packets before the traced side has sent any (with an expression,
    /// those the expression keeps).
    pub(crate) fn add_interest(
        &mut self,
        key: tracer_common::config::EndpointKey,
    ) -> Result<(), AttachError> {
        // The slot first: the hooks read a 0 slot as "no entry" (see `SEEN_SLOTS`).
        set_u32(&mut self.ebpf, MAP_SEEN, key.seen_slot(), 1)?;
        let map = self
            .ebpf
            .map_mut(MAP_INTEREST)
            .ok_or(AttachError::MissingMap(MAP_INTEREST))?;
        let mut interest: aya::maps::HashMap<
            &mut MapData,
            tracer_common::config::EndpointKey,
            u32,
        > = aya::maps::HashMap::try_from(map).map_err(|source| AttachError::Map {
            name: MAP_INTEREST,
            source,
        })?;
        interest
            .insert(key, tracer_common::config::INTEREST_DECLARED, 0)
            .map_err(|source| AttachError::Map {
                name: MAP_INTEREST,
                source,
            })
    }

    /// The kernel object, for callers that need more (drop tracing).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// `(ifindex, name)` of every link in one namespace.
type LinkNames = Vec<(u32, String)>;

/// The kernel program of a slot: `pathtrace_h<slot>` (also the name `tc filter show` prints in
/// netlink mode, and what `pathtrace cleanup` looks for).
pub(crate) fn slot_program_name(slot: u8) -> String {
    format!("{HOOK_PROGRAM_PREFIX}{slot}")
}

/// Loads (verifies) a slot's program unless it is loaded already.
fn load_slot(prog: &mut SchedClassifier, name: &str) -> Result<(), AttachError> {
    if prog.fd().is_ok() {
        return Ok(());
    }
    prog.load().map_err(|source| AttachError::Program {
        name: name.to_string(),
        source,
    })
}

/// Whether no two targets share a slot (each slot's program is then attached once, so the
/// programs can be handed to another thread one by one).
fn distinct_slots(targets: &[AttachTarget]) -> bool {
    let mut seen = [false; MAX_HOOKS];
    targets.iter().all(|t| {
        let slot = usize::from(t.hook.slot);
        slot < MAX_HOOKS && !std::mem::replace(&mut seen[slot], true)
    })
}

/// What [`attach_program`] made: the link, and the clsact qdisc it added (netlink mode).
type AttachedLink = (SchedClassifierLink, Option<markers::QdiscMarker>);

/// Attaches loaded programs as they come, in path order until the first error (which ends the
/// list). One at a time and in path order, like [`Tracer::attach`] in a loop: a reply must not be
/// traced at a hop before its request can be at the hops upstream of it (the correlator would
/// take it for a flow of its own).
/// A slot's program as a loader thread hands it over: the index of its target, and the program
/// loaded (verified) or why it was not.
type LoadedSlot<'p> = (usize, Result<&'p mut SchedClassifier, AttachError>);

/// Attaches the loaded programs in the order of `targets`, whatever order they arrive in, and
/// stops at the first that failed to load or attach.
fn attach_in_order(
    loaded: std::sync::mpsc::Receiver<LoadedSlot<'_>>,
    targets: &[AttachTarget],
) -> Vec<Result<AttachedLink, AttachError>> {
    let mut waiting = std::collections::BTreeMap::new();
    let mut links = Vec::new();
    for (i, prog) in loaded {
        waiting.insert(i, prog);
        while let Some(prog) = waiting.remove(&links.len()) {
            let Some(target) = targets.get(links.len()) else {
                return links;
            };
            let link = prog.and_then(|p| attach_program(p, target, true));
            let failed = link.is_err();
            links.push(link);
            if failed {
                return links;
            }
        }
    }
    links
}

/// The result of a scoped thread. Its panic goes on here (a link it made was dropped, i.e.
/// detached, while it unwound).
fn join_thread<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Attaches a loaded program at a target, inside the target's namespace. On error nothing of
/// it stays attached (a qdisc it added is removed again).
/// Before 5.11 the kernel charges BPF maps and programs against `RLIMIT_MEMLOCK` (often 64 KiB;
/// the ring buffer alone is more): the limit is raised for this process, as libbpf and aya's
/// template do. Later kernels charge the memory cgroup, and the limit is left alone.
fn raise_memlock_before_5_11() {
    if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 11, 0)) {
        return;
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        tracing::debug!("RLIMIT_MEMLOCK raised (this kernel charges BPF memory against it)");
    } else {
        crate::say(&format!(
            "pathtrace: cannot raise RLIMIT_MEMLOCK ({}): this kernel charges BPF memory against it, and loading may fail; run as root or raise it (ulimit -l unlimited)",
            std::io::Error::last_os_error()
        ));
    }
}

/// `PATHTRACE_TEST_ATTACH_DELAY_MS`: a pause before each hook is attached, for the tests that
/// show what a trace says of packets that crossed while its hooks were attaching (on a loaded
/// host, or under emulation, attaching takes that long by itself). Not for use otherwise.
fn attach_delay() -> std::time::Duration {
    static DELAY: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        let ms = std::env::var("PATHTRACE_TEST_ATTACH_DELAY_MS").ok();
        std::time::Duration::from_millis(ms.and_then(|m| m.parse().ok()).unwrap_or(0).min(5_000))
    })
}

fn attach_program(
    prog: &mut SchedClassifier,
    target: &AttachTarget,
    tcx: bool,
) -> Result<AttachedLink, AttachError> {
    std::thread::sleep(attach_delay());
    let hook = &target.hook;
    let attach_type = match hook.direction {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    };
    let label = hook.label();
    let dir = hook.direction;
    let attach_error = |source| AttachError::Attach {
        hook: label.clone(),
        dir,
        source,
    };
    let marker = markers::QdiscMarker {
        netns_inode: target.netns.inode(),
        netns_path: target.netns.path().to_path_buf(),
        ifindex: hook.ifindex,
        ifname: hook.ifname.clone(),
        pid: std::process::id(),
    };
    target.netns.run(|| -> Result<_, AttachError> {
        let mut created = false;
        let options = if tcx {
            TcAttachOptions::TcxOrder(LinkOrder::first())
        } else {
            created = ensure_clsact(&hook.ifname, &label)?;
            if created {
                markers::record(&marker);
            }
            TcAttachOptions::Netlink(NlOptions::default())
        };
        let link = prog
            .attach_with_options(&hook.ifname, attach_type, options)
            .and_then(|id| prog.take_link(id))
            .map_err(attach_error);
        match link {
            Ok(link) => Ok((link, created.then(|| marker.clone()))),
            Err(e) => {
                if created {
                    remove_clsact(&hook.ifname);
                    markers::forget(&marker);
                }
                Err(e)
            }
        }
    })?
}

/// Whether another of our hooks stays on `a`'s interface. If so, the clsact qdisc `a` added (if
/// it did) becomes that hook's to remove: our own filter is no reason to keep it.
fn hand_over_qdisc<'a>(a: &mut Attached, others: impl Iterator<Item = &'a mut Attached>) -> bool {
    let (inode, ifindex) = (a.target.netns.inode(), a.target.hook.ifindex);
    let mut others = others;
    let Some(sibling) =
        others.find(|b| b.target.netns.inode() == inode && b.target.hook.ifindex == ifindex)
    else {
        return false;
    };
    if let Some(marker) = a.created_qdisc.take() {
        sibling.created_qdisc.get_or_insert(marker);
    }
    true
}

/// Detaches one hook; with `shared` (another of our hooks stays on its interface) it leaves
/// the interface's qdisc to that hook.
fn detach_one(mut a: Attached, tcx: bool, shared: bool) {
    let label = a.target.hook.label();
    let dir = a.target.hook.direction;
    let ifname = a.target.hook.ifname.clone();
    let link = a.link.take();
    let created = a.created_qdisc.take();
    let (netns_inode, ifindex) = (a.target.netns.inode(), a.target.hook.ifindex);
    // Netlink filters are found by ifindex in the namespace of the calling thread, so the link is
    // dropped (detached) inside the hook's namespace. A TCX link just closes its fd.
    let result = a.target.netns.run(move || {
        drop(link);
        if shared {
            return;
        }
        if let Some(marker) = created {
            // While other filters use it the qdisc stays, and so does its record: whoever leaves
            // it without filters (another pathtrace, `pathtrace cleanup`) removes it.
            if remove_clsact(&ifname) {
                markers::forget(&marker);
            }
        } else if !tcx {
            release_orphaned_clsact(netns_inode, ifindex, &ifname);
        }
    });
    match result {
        Ok(()) => tracing::debug!(hook = %label, %dir, "detached"),
        Err(e) => tracing::warn!(hook = %label, %dir, "detaching: {e}"),
    }
}

/// Adds a clsact qdisc unless the interface has one. Returns whether we added it.
fn ensure_clsact(ifname: &str, label: &str) -> Result<bool, AttachError> {
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) => Ok(true),
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(source) => Err(AttachError::Qdisc {
            hook: label.to_string(),
            source,
        }),
    }
}

/// Removes a clsact qdisc pathtrace added (called inside the interface's namespace), unless
/// filters still use it (another tool's, or another pathtrace's): then it stays. Returns whether
/// it is gone (removed, or the interface is), i.e. whether its record can go.
fn remove_clsact(ifname: &str) -> bool {
    let result = Rtnl::open().and_then(|mut rtnl| {
        let Some(link) = rtnl.link_by_name(ifname)? else {
            return Ok(true);
        };
        let others = rtnl.clsact_filter_count(link.ifindex)?;
        if others > 0 {
            tracing::info!(
                iface = ifname,
                others,
                "keeping the clsact qdisc we added: other filters use it now"
            );
            return Ok(false);
        }
        rtnl.del_clsact(link.ifindex)?;
        tracing::debug!(iface = ifname, "removed the clsact qdisc pathtrace added");
        Ok(true)
    });
    result.unwrap_or_else(|e| {
        tracing::warn!(iface = ifname, "removing our clsact qdisc: {e}");
        false
    })
}

/// After detaching a filter from a clsact qdisc this process did not add: if a pathtrace that has
/// ended (or this one, through another hook) added it and left it for filters that are now all
/// gone, removes it and its record. Two pathtraces in netlink mode on one interface thus leave no
/// qdisc behind, whichever ends first.
fn release_orphaned_clsact(netns_inode: u64, ifindex: u32, ifname: &str) {
    let orphan = markers::list().into_iter().find(|m| {
        m.netns_inode == netns_inode
            && m.ifindex == ifindex
            && m.ifname == ifname
            && !m.owner_alive()
    });
    if let Some(marker) = orphan {
        if remove_clsact(ifname) {
            markers::forget(&marker);
        }
    }
}

/// Writes `value` at `index` of the `u32` array map `name`.
pub(crate) fn set_u32(
    ebpf: &mut Ebpf,
    name: &'static str,
    index: u32,
    value: u32,
) -> Result<(), AttachError> {
    let map = ebpf.map_mut(name).ok_or(AttachError::MissingMap(name))?;
    let mut array: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(|source| AttachError::Map { name, source })?;
    array
        .set(index, value, 0)
        .map_err(|source| AttachError::Map { name, source })
}
