//! Command-line arguments become a validated configuration here, once (ripgrep's low-level →
//! high-level arguments): a [`TraceConfig`] for a trace, a [`VerifyConfig`] for `verify`. Below the
//! verbs nothing sees a clap type; the flags reach the kernel only through [`FilterSpec`], a pure
//! function of them.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use tracer_common::{
    config::{FilterConfig, ModeConfig, FILTER_ADDR, FILTER_EXPR, FILTER_PORT, FILTER_PROTO},
    event::{CAPTURE_DEFAULT, CAPTURE_MAX},
};

use crate::{
    analyze::verify::{ExpectHop, Expectations, Probe},
    attach::{LoadOptions, TcMode},
    capture::WriterOptions,
    cli::{TraceArgs, VerifyArgs},
    filter::Expression,
    model::{family_and_bytes, Prefix, Proto},
    render::Format,
    runtime::{Endpoints, Wanted},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FilterError {
    #[error("--filter-proto {0:?}: expected tcp, udp, icmp or icmpv6")]
    Proto(String),
    #[error("--filter-host {0:?}: expected an address or ADDR/LEN, e.g. 10.0.0.0/24")]
    Host(String),
    #[error("--filter-host {0:?} and --to {1} disagree; give one of them")]
    HostAndTo(String, IpAddr),
    #[error("--snaplen {0}: expected 1..={CAPTURE_MAX}")]
    Snaplen(u16),
}

/// What the kernel programs emit: the in-kernel filter, before it becomes the load-time global.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FilterSpec {
    pub proto: Option<Proto>,
    /// `--filter-host`, or `--to` alone.
    pub host: Option<Prefix>,
    pub port: Option<u16>,
}

impl FilterSpec {
    /// The `--filter-*` flags and `--to`.
    pub(crate) fn from_args(args: &TraceArgs) -> Result<Self, FilterError> {
        let proto = match &args.filter_proto {
            Some(p) => match p.parse::<Proto>() {
                Ok(proto @ (Proto::Tcp | Proto::Udp | Proto::Icmp | Proto::Icmpv6)) => Some(proto),
                _ => return Err(FilterError::Proto(p.clone())),
            },
            None => None,
        };
        let host = match (&args.filter_host, args.to) {
            (Some(h), to) => {
                let prefix: Prefix = h.parse().map_err(|_| FilterError::Host(h.clone()))?;
                if let Some(to) = to {
                    if !prefix.contains(to) {
                        return Err(FilterError::HostAndTo(h.clone(), to));
                    }
                }
                Some(prefix)
            }
            (None, Some(to)) => Some(Prefix::host(to)),
            (None, None) => None,
        };
        Ok(Self {
            proto,
            host,
            port: args.filter_port,
        })
    }

    /// The flags as a pcap-filter expression (`udp and host 10.0.0.5 and port 53`); empty
    /// when none is given.
    pub(crate) fn expression_text(&self) -> String {
        let mut words = Vec::new();
        if let Some(proto) = self.proto {
            words.push(match proto {
                Proto::Icmpv6 => "icmp6".to_string(),
                p => p.to_string(),
            });
        }
        if let Some(Prefix { addr, len }) = self.host {
            let full = if addr.is_ipv4() { 32 } else { 128 };
            words.push(match len == full {
                true => format!("host {addr}"),
                false => format!("net {addr}/{len}"),
            });
        }
        if let Some(port) = self.port {
            words.push(format!("port {port}"));
        }
        words.join(" and ")
    }

    /// The kernel's load-time filter, copying `snaplen` bytes of each packet into its event.
    pub(crate) fn kernel(&self, snaplen: u16) -> FilterConfig {
        let mut cfg = FilterConfig::NONE;
        cfg.snaplen = snaplen;
        if let Some(proto) = self.proto {
            cfg.flags |= FILTER_PROTO;
            cfg.proto = proto.number();
        }
        if let Some(port) = self.port {
            cfg.flags |= FILTER_PORT;
            cfg.port = port;
        }
        if let Some(Prefix { addr, len }) = self.host {
            cfg.flags |= FILTER_ADDR;
            cfg.prefix_len = len;
            (cfg.family, cfg.addr) = family_and_bytes(addr);
        }
        cfg
    }
}

/// The `--filter-*`, `--to` and `--snaplen` flags as the kernel's load-time filter.
pub(crate) fn filter_config(args: &TraceArgs) -> Result<FilterConfig, FilterError> {
    if args.snaplen == 0 || usize::from(args.snaplen) > CAPTURE_MAX {
        return Err(FilterError::Snaplen(args.snaplen));
    }
    Ok(FilterSpec::from_args(args)?.kernel(args.snaplen))
}

/// The trace's filter: the flags alone stay the kernel's tuple filter (as before expressions
/// existed); an expression (with the flags, if any, joined to it by `and`) is checked, compiled
/// by libpcap and translated for the kernel here, so that a bad one fails before anything is
/// loaded. Returns the kernel's load-time filter and the expression.
pub(crate) fn trace_filter(args: &TraceArgs) -> anyhow::Result<(FilterConfig, Option<Expression>)> {
    let mut kernel = filter_config(args)?;
    let Some(user) = Expression::from_args(&args.expression, args.filter_file.as_deref())? else {
        return Ok((kernel, None));
    };
    let flags = FilterSpec::from_args(args)?.expression_text();
    let expr = match Expression::new(&flags)? {
        Some(flags) => flags.and(&user)?,
        None => user,
    };
    crate::filter::ebpf::translate(expr.program())?;
    kernel.flags = FILTER_EXPR;
    Ok((kernel, Some(expr)))
}

/// `--ring-size` in KiB to bytes: a power of two of at least one page.
pub(crate) fn ring_bytes(kib: u32) -> anyhow::Result<u32> {
    let bytes = kib
        .checked_mul(1024)
        .filter(|b| b.is_power_of_two() && *b >= 4096 && *b <= 1 << 30);
    bytes.with_context(|| {
        format!("--ring-size {kib}: expected a power of two between 4 and 1048576 (KiB)")
    })
}

/// What to trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TargetSpec {
    /// A network namespace: a name under /var/run/netns or a path; the interface inside.
    Netns { spec: String, iface: Option<String> },
    /// A container or pod, resolved by the runtimes.
    Container { wanted: Wanted, exit_on_stop: bool },
}

impl TargetSpec {
    /// The label a namespace's hooks carry: its name, or a path's last part.
    /// How hooks in the namespace `spec` names are labelled: a name under /var/run/netns is
    /// itself; `/proc/PID/ns/net` (or `/proc/PID/task/TID/ns/net`) is the process's name and pid
    /// (`nginx-1234`), not the path's last word (`net`); another path is its file name.
    pub(crate) fn netns_label(spec: &str) -> String {
        let words: Vec<&str> = spec.trim_end_matches('/').split('/').collect();
        if let ["", "proc", pid, .., "ns", "net"] = words.as_slice() {
            if pid.parse::<u32>().is_ok() {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().replace([' ', ':', '/'], "_"))
                    .unwrap_or_default();
                return match comm.is_empty() {
                    true => format!("pid-{pid}"),
                    false => format!("{comm}-{pid}"),
                };
            }
        }
        words.last().copied().unwrap_or(spec).to_string()
    }
}

/// `-w FILE` and how to write it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CaptureSpec {
    pub path: PathBuf,
    /// Bytes of each packet captured in the kernel.
    pub snaplen: u16,
    pub options: WriterOptions,
}

/// A trace, validated.
#[derive(Clone, Debug)]
pub(crate) struct TraceConfig {
    pub target: TargetSpec,
    /// Which runtimes a container or pod is looked for in.
    pub endpoints: Endpoints,
    /// Picks the uplink by route lookup (and filters to it, in `load`).
    pub to: Option<IpAddr>,
    /// `--uplink`: more host interfaces to trace as uplinks.
    pub uplinks: Vec<String>,
    /// The kernel object's load-time settings.
    pub load: LoadOptions,
    pub tc_mode: TcMode,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub format: Format,
    /// `--tui`: the full-screen view instead of lines (checked: stdin and stdout are a terminal).
    pub tui: bool,
    /// Flows kept at most.
    pub max_flows: usize,
    pub capture: Option<CaptureSpec>,
    /// `--html FILE`: the report to write at the end, of `capture`.
    pub html: Option<HtmlSpec>,
}

/// `--html`: where the report goes, and whether the capture it is made from is the report's own
/// (removed after).
#[derive(Clone, Debug)]
pub(crate) struct HtmlSpec {
    pub out: PathBuf,
    pub temporary_capture: bool,
}

impl TraceConfig {
    /// The trace the command line asks for.
    pub(crate) fn from_args(args: &TraceArgs) -> anyhow::Result<Self> {
        let target = match (wanted(args.container.as_ref(), &args.runtime)?, &args.netns) {
            (Some(wanted), _) => TargetSpec::Container {
                wanted,
                exit_on_stop: args.exit_on_stop,
            },
            (None, Some(spec)) => TargetSpec::Netns {
                spec: spec.clone(),
                iface: args.iface.clone(),
            },
            (None, None) => bail!(
                "nothing to trace: give --container NAME, --pod NAME [-n NAMESPACE], --netns NAME, or try `pathtrace lab demo`"
            ),
        };
        if args.exit_on_stop && !matches!(target, TargetSpec::Container { .. }) {
            bail!("--exit-on-stop is for --container or --pod: a namespace does not stop");
        }
        if args.max_flows == 0 {
            bail!("--max-flows 0: at least one flow must be kept; give 1 or more (default 65536)");
        }
        let (mut filter, expression) = trace_filter(args)?;
        // `--html` records the trace as a capture (the -w one, or one of its own).
        let mut args = args.clone();
        let html = match args.html.clone() {
            Some(out) => Some(html_spec(&out, &mut args)?),
            None => None,
        };
        let args = &args;
        // Packet bytes only go into a `-w` capture: without one the programs copy none.
        if args.write.is_none() {
            filter.snaplen = 0;
        }
        // 0: not given (a `TraceArgs` built in code).
        let sample = if args.sample == 0 {
            DEFAULT_SAMPLE
        } else {
            args.sample
        };
        let explicit_sample = sample != DEFAULT_SAMPLE;
        if args.write.is_some() && explicit_sample {
            bail!("--sample with -w: a capture stores every packet at every hook; drop --sample (or -w, to aggregate in the kernel)");
        }
        if args.every_packet && explicit_sample {
            bail!("--sample with --every-packet: every packet is followed already; give one of the two");
        }
        let mode = if args.every_packet || args.write.is_some() {
            ModeConfig::EVERY_PACKET
        } else {
            aggregate_mode(sample)
        };
        let load = LoadOptions {
            filter,
            ring_bytes: ring_bytes(args.ring_size)?,
            kernel_log: args.kernel_log,
            drop_reasons: true,
            mode,
            expression,
        };
        let to_stdout = args.write.as_deref() == Some(Path::new("-"));
        if to_stdout && (args.max_size.is_some() || args.max_files.is_some()) {
            bail!("-w - streams one capture to stdout: it cannot rotate; drop --max-size/--max-files or write to a file");
        }
        if args.tui {
            if to_stdout {
                bail!("--tui with -w -: the terminal view and the capture would both write to stdout; write the capture to a file");
            }
            use std::io::IsTerminal as _;
            if !(std::io::stdout().is_terminal() && std::io::stdin().is_terminal()) {
                bail!("--tui needs a terminal, and stdin or stdout is not one (piped or redirected); leave out --tui for text lines, or --json for programs");
            }
        }
        let capture = args.write.as_ref().map(|path| CaptureSpec {
            path: path.clone(),
            snaplen: args.snaplen,
            options: WriterOptions {
                max_size: args.max_size,
                max_files: args.max_files,
            },
        });
        Ok(Self {
            target,
            endpoints: endpoints(&args.runtime),
            to: args.to,
            uplinks: args.uplinks.clone(),
            load,
            tc_mode: args.tc_mode.into(),
            duration: args.duration,
            count: args.count,
            format: Format::of_json_flag(args.json),
            tui: args.tui,
            max_flows: args.max_flows,
            capture,
            html,
        })
    }

    /// `lab demo`'s trace of its lab: the container namespace toward the wan host.
    pub(crate) fn lab(
        netns: &str,
        to: IpAddr,
        json: bool,
        duration: Duration,
        tc_mode: TcMode,
    ) -> anyhow::Result<Self> {
        let args = TraceArgs {
            netns: Some(netns.to_string()),
            to: Some(to),
            json,
            duration: Some(duration),
            snaplen: CAPTURE_DEFAULT,
            ring_size: 8192,
            max_flows: 65536,
            ..TraceArgs::default()
        };
        Ok(Self {
            tc_mode,
            ..Self::from_args(&args)?
        })
    }
}

/// Checks that the report can be written (before anything is attached) and gives `--html` its
/// capture: the `-w` file, or a temporary one next to the report.
fn html_spec(out: &Path, args: &mut TraceArgs) -> anyhow::Result<HtmlSpec> {
    if args.write.as_deref() == Some(Path::new("-")) {
        bail!("--html with -w -: the report is made from the capture, which then goes to stdout; write the capture to a file");
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(|| {
            format!(
                "cannot write the report to {}; choose a writable path with --html",
                out.display()
            )
        })?;
    let temporary_capture = args.write.is_none();
    if temporary_capture {
        let name = out
            .file_name()
            .map_or("report".into(), |n| n.to_string_lossy().into_owned());
        args.write = Some(out.with_file_name(format!(".{name}.pathtrace-capture.pcapng")));
    }
    Ok(HtmlSpec {
        out: out.to_path_buf(),
        temporary_capture,
    })
}

/// What `verify` traces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum VerifyTarget {
    Container(Wanted),
    Netns(String),
}

/// A verify run, validated.
#[derive(Clone, Debug)]
pub(crate) struct VerifyConfig {
    pub target: VerifyTarget,
    /// Which runtimes a container or pod is looked for in.
    pub endpoints: Endpoints,
    pub probe: Probe,
    /// `--to` as given, for the report.
    pub to: String,
    pub expect: Expectations,
    /// `--uplink`: more host interfaces to trace as uplinks.
    pub uplinks: Vec<String>,
    pub format: Format,
    pub tc_mode: TcMode,
    /// Only the probe's protocol and destination are emitted.
    pub load: LoadOptions,
}

impl VerifyConfig {
    pub(crate) fn from_args(args: &VerifyArgs) -> anyhow::Result<Self> {
        let target = match (wanted(args.container.as_ref(), &args.runtime)?, &args.netns) {
            (Some(w), None) => VerifyTarget::Container(w),
            (None, Some(spec)) => VerifyTarget::Netns(spec.clone()),
            _ => bail!("verify needs one of --container NAME, --pod NAME or --netns NAME"),
        };
        let probe = Probe::parse(&args.to, args.proto.as_deref())?;
        let filter = FilterSpec {
            proto: Some(probe.proto),
            host: Some(Prefix::host(probe.dst)),
            port: None,
        };
        let (mut kernel, mut expression) = (filter.kernel(CAPTURE_DEFAULT), None);
        if let Some(user) = Expression::from_args(&args.expression, None)? {
            let own = Expression::new(&filter.expression_text())?.expect("a proto and a host");
            let expr = own.and(&user)?;
            crate::filter::ebpf::translate(expr.program())?;
            kernel.flags = FILTER_EXPR;
            expression = Some(expr);
        }
        let path = match &args.expect_path {
            Some(p) => Some(
                p.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::parse::<ExpectHop>)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(anyhow::Error::msg)?,
            ),
            None => None,
        };
        Ok(Self {
            target,
            endpoints: endpoints(&args.runtime),
            probe,
            to: args.to.clone(),
            expect: Expectations {
                snat: args.expect_snat,
                via: args.expect_via.clone(),
                path,
                drop: args.expect_drop,
            },
            uplinks: args.uplinks.clone(),
            format: Format::of_json_flag(args.json),
            tc_mode: args.tc_mode.into(),
            load: LoadOptions {
                filter: kernel,
                ring_bytes: ring_bytes(1024)?,
                kernel_log: false,
                drop_reasons: true,
                // A probe's few packets, each followed at every hook.
                mode: ModeConfig::EVERY_PACKET,
                expression,
            },
        })
    }
}

/// `--sample`'s default N.
const DEFAULT_SAMPLE: u32 = 64;

/// A flow's first packets an entry hook sends in full in aggregate mode: its hop chain and
/// NAT steps in both directions, from its first exchange.
pub(crate) const FIRST_PACKETS: u32 = 8;

/// The kernel's settings for the default mode at `--sample 1/n`.
pub(crate) fn aggregate_mode(n: u32) -> ModeConfig {
    ModeConfig {
        aggregate: 1,
        sample_below: tracer_common::sample::sample_below(n),
        first_n: FIRST_PACKETS,
        coarse_clock: u32::from(
            aya::util::KernelVersion::current()
                .is_ok_and(|v| v >= aya::util::KernelVersion::new(5, 11, 0)),
        ),
    }
}

/// `--container NAME` or `--pod NAME`, with `-n`; `None` when neither is given.
pub(crate) fn wanted(
    container: Option<&String>,
    r: &crate::cli::RuntimeArgs,
) -> anyhow::Result<Option<Wanted>> {
    let namespace = r.namespace.clone();
    Ok(match (container, &r.pod) {
        (_, Some(pod)) => Some(Wanted {
            name: pod.clone(),
            pod: true,
            namespace,
        }),
        (Some(name), None) => Some(Wanted {
            name: name.clone(),
            pod: false,
            namespace,
        }),
        (None, None) if namespace.is_some() => {
            bail!("-n NAMESPACE narrows --pod NAME or --container NAME: give one of them")
        }
        (None, None) => None,
    })
}

/// `--runtime-endpoint` and `--runtime`.
pub(crate) fn endpoints(r: &crate::cli::RuntimeArgs) -> Endpoints {
    Endpoints {
        cri: r.runtime_endpoint.clone(),
        only: r.runtime,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> TraceArgs {
        TraceArgs {
            snaplen: 128,
            ..Default::default()
        }
    }

    #[test]
    fn no_flags_no_filter() {
        let cfg = filter_config(&args()).unwrap();
        assert_eq!(cfg.flags, 0);
        assert_eq!(cfg.snaplen, 128);
    }

    #[test]
    fn to_becomes_host_filter() {
        let mut a = args();
        a.to = Some("10.200.2.2".parse().unwrap());
        let cfg = filter_config(&a).unwrap();
        assert_eq!(cfg.flags, FILTER_ADDR);
        assert_eq!((cfg.family, cfg.prefix_len), (4, 32));
        assert_eq!(&cfg.addr[..4], &[10, 200, 2, 2]);
    }

    #[test]
    fn proto_port_prefix() {
        let mut a = args();
        a.filter_proto = Some("UDP".into());
        a.filter_port = Some(53);
        a.filter_host = Some("2001:db8::/32".into());
        let cfg = filter_config(&a).unwrap();
        assert_eq!(cfg.flags, FILTER_ADDR | FILTER_PORT | FILTER_PROTO);
        assert_eq!(
            (cfg.proto, cfg.port, cfg.family, cfg.prefix_len),
            (17, 53, 6, 32)
        );
    }

    #[test]
    fn bad_input() {
        let mut a = args();
        a.filter_proto = Some("sctp".into());
        assert!(matches!(filter_config(&a), Err(FilterError::Proto(_))));
        let mut a = args();
        a.filter_host = Some("10.0.0.0/33".into());
        assert!(matches!(filter_config(&a), Err(FilterError::Host(_))));
        let mut a = args();
        a.filter_host = Some("10.0.0.0/24".into());
        a.to = Some("10.0.1.1".parse().unwrap());
        assert!(matches!(filter_config(&a), Err(FilterError::HostAndTo(..))));
        let mut a = args();
        a.snaplen = 1000;
        assert_eq!(filter_config(&a), Err(FilterError::Snaplen(1000)));
    }
}
