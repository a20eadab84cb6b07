//! The command line. `main.rs` parses it and dispatches to `cmd::<verb>`.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::attach::TcMode;

const EXAMPLES: &str = "\
Examples:
  sudo pathtrace lab demo                      build the built-in lab, trace it, tear it down
  sudo pathtrace --container minio             live hop paths and NAT for a container (Docker, Podman)
  sudo pathtrace --pod web -n shop              the same for a Kubernetes pod, through the CRI socket
  sudo pathtrace --netns pt1-ctr --to 10.200.2.2 --json --duration 5
  sudo pathtrace --container web -w web.pcapng then: pathtrace show web.pcapng
  sudo pathtrace inspect --container minio     the static path: veth pairs, bridge, NAT rules, route
  sudo pathtrace verify --container web --to 10.0.0.5:443 --expect-snat 192.0.2.10";

#[derive(Debug, Parser)]
#[command(
    name = "pathtrace",
    version,
    about = "Shows the path every packet of a container takes through the host's network namespaces, and where NAT rewrites it",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub trace: TraceArgs,
    /// More log output on stderr (-v: info, -vv: debug, -vvv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

impl Cli {
    /// [`Cli::parse`] of the process's arguments, where `-v` (and the other global flags) may
    /// also come before the verb: `pathtrace -vv lab demo` is `pathtrace lab demo -vv`.
    pub fn parse_args() -> Self {
        Self::parse_from(verbs_first(std::env::args_os()))
    }
}

/// The arguments with the global flags that come before a verb moved after it. The default
/// verb's options conflict with the verbs (`pathtrace --container x inspect` is refused), and
/// clap counts a global flag given before a verb as one of them.
fn verbs_first(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    use clap::CommandFactory as _;
    let mut args: Vec<_> = args.into_iter().collect();
    let is_global = |a: &std::ffi::OsString| {
        a.to_str().is_some_and(|a| {
            a == "--verbose"
                || (a.len() > 1 && a.starts_with('-') && a[1..].bytes().all(|b| b == b'v'))
        })
    };
    let globals = args.iter().skip(1).take_while(|a| is_global(a)).count();
    let verb = args.get(1 + globals).and_then(|a| a.to_str());
    let is_verb = verb.is_some_and(|v| {
        Cli::command()
            .get_subcommands()
            .any(|c| c.get_name() == v || c.get_all_aliases().any(|a| a == v))
    });
    if globals > 0 && is_verb {
        args[1..=globals + 1].rotate_left(globals);
    }
    args
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send one probe from the container / namespace, trace it, and check it against expectations
    /// (exit 0 pass, 1 fail, 2 error): what to run after a firewall change.
    #[command(after_help = "Examples:
  sudo pathtrace verify --container web --to 10.0.0.5:443 --expect-snat 192.0.2.10
  sudo pathtrace verify --netns pt1-ctr --to 10.200.2.2 --expect-via pt1-up0 --json
  sudo pathtrace verify --container web --to 10.0.0.5:443 --expect-path 'host:docker0,host:eth0 egress'
  sudo pathtrace verify --container web --to [fd00::5]:53 --proto udp --expect-drop")]
    Verify(VerifyArgs),
    /// Compare two captures: changed paths, NAT mappings, rules, drops (exit 0 same, 1 different).
    #[command(after_help = "Examples:
  pathtrace diff before.pcapng after.pcapng
  pathtrace diff before.pcapng after.pcapng --json | jq .
  pathtrace diff before.pcapng after.pcapng 'tcp port 443'")]
    Diff {
        /// The capture from before the change (`pathtrace -w FILE`).
        before: PathBuf,
        /// The capture from after it.
        after: PathBuf,
        /// One JSON line per change, then the verdict.
        #[arg(long)]
        json: bool,
        /// A pcap-filter expression: only the flows one of whose packets it keeps are compared.
        #[arg(value_name = "EXPRESSION")]
        expression: Vec<String>,
    },
    /// Replay a capture (`-w FILE`) into the same view as live; no root or eBPF needed.
    #[command(after_help = "Examples:
  pathtrace show web.pcapng
  pathtrace show web.pcapng --json | jq 'select(.type == \"flow\")'
  pathtrace show web.pcapng.1        (a rotated file; its siblings are read too)
  pathtrace show web.pcapng 'tcp[tcpflags] & tcp-syn != 0'
  pathtrace show web.pcapng 'port 443' -w web-443.pcapng
  pathtrace show web.pcapng --hook host:docker0 -w docker0.pcapng")]
    Show {
        /// A pcapng file pathtrace wrote (a file another tool wrote is shown per interface only).
        file: PathBuf,
        /// JSON lines, as the live `--json`.
        #[arg(long)]
        json: bool,
        /// Write the packets the expression keeps, each hook's copy judged on its own (what
        /// `tcpdump -r FILE EXPR` keeps), to this pcapng, with the file's topology; with
        /// --hook, only that hook's packets.
        #[arg(short = 'w', long = "write", value_name = "OUT")]
        write: Option<PathBuf>,
        /// With -w: only the packets of this hook (`host:docker0`, or `host:docker0 egress`
        /// for one direction), e.g. for Wireshark's TCP analysis, which takes a packet's copy
        /// at every hook for retransmissions.
        #[arg(long, value_name = "HOOK", requires = "write")]
        hook: Option<String>,
        /// A pcap-filter expression: only the flows one of whose packets it keeps are shown.
        #[arg(value_name = "EXPRESSION")]
        expression: Vec<String>,
    },
    /// A capture as one self-contained HTML page: the topology, each flow's hops with its NAT
    /// step and rule, per-hop latency percentiles and CDFs, drops with the kernel's reason.
    #[command(after_help = "Examples:
  pathtrace report web.pcapng -o web.html
  pathtrace report web.pcapng 'port 443' -o web-443.html")]
    Report {
        /// A pcapng file pathtrace wrote.
        file: PathBuf,
        /// The HTML file to write.
        #[arg(short = 'o', long = "output", value_name = "OUT.html")]
        out: PathBuf,
        /// A pcap-filter expression: only the flows one of whose packets it keeps are shown.
        #[arg(value_name = "EXPRESSION")]
        expression: Vec<String>,
    },
    /// Remove what a killed pathtrace left in netlink mode (its filters, the qdiscs it added).
    #[command(after_help = "Example:
  sudo pathtrace cleanup        after `kill -9` of a trace in --tc-mode netlink")]
    Cleanup {
        /// Even while another pathtrace runs (its hooks are removed too).
        #[arg(long)]
        force: bool,
    },
    /// What this host offers and what pathtrace will use (kernel, BTF, TCX or netlink, ring
    /// buffer, drop reasons, BPF memory accounting, NAT tools, conntrack, runtimes), each ok,
    /// fallback or missing with the fix (exit 0 when tracing can work here, 1 when it cannot).
    #[command(after_help = "Examples:
  sudo pathtrace doctor
  sudo pathtrace doctor && sudo pathtrace --container web")]
    Doctor,
    /// The built-in lab: a Docker-like topology in its own network namespaces.
    #[command(after_help = "Examples:
  sudo pathtrace lab demo
  sudo pathtrace lab up --name pt1 && sudo pathtrace --netns pt1-ctr --to 10.200.2.2
  sudo pathtrace lab down pt1")]
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// The static path of each running container (or one): veth pairs, bridge and its ports,
    /// NAT rules, published ports, the host's route out.
    #[command(after_help = "Examples:
  sudo pathtrace inspect
  sudo pathtrace inspect --container minio --to 10.0.0.5
  sudo pathtrace inspect --netns /proc/1234/ns/net --json")]
    Inspect(InspectArgs),
    /// Print a shell completion script for pathtrace to stdout.
    #[command(after_help = "Install:
  pathtrace completions bash | sudo tee /usr/share/bash-completion/completions/pathtrace
  pathtrace completions zsh | sudo tee /usr/local/share/zsh/site-functions/_pathtrace
  pathtrace completions fish > ~/.config/fish/completions/pathtrace.fish
  source <(pathtrace completions bash)        (this shell only)")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print pathtrace's man page (roff) to stdout, made from the same definition as --help.
    #[command(after_help = "Example:
  pathtrace man > pathtrace.1 && man ./pathtrace.1
  pathtrace man | sudo tee /usr/local/share/man/man1/pathtrace.1 >/dev/null")]
    Man,
}

/// What `pathtrace inspect` shows.
#[derive(Debug, Args, Clone, Default)]
pub struct InspectArgs {
    /// Only this container (Docker, Podman, or a Kubernetes container by its name in its pod;
    /// name, id or unique id prefix); default: every running container and pod.
    #[arg(long, short = 'c', value_name = "NAME|ID")]
    pub container: Option<String>,
    /// A network namespace instead of a container: a name under /var/run/netns or a path.
    #[arg(long, value_name = "NAME|PATH", conflicts_with_all = ["container", "pod"])]
    pub netns: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Destination: the host's route toward it (default: the default route).
    #[arg(long, value_name = "ADDR")]
    pub to: Option<IpAddr>,
    /// One JSON object per container on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Create a lab (container namespace, bridge, MASQUERADE, uplink to a "wan" namespace).
    Up {
        /// Name prefix (default: the first free `ptN`).
        #[arg(long)]
        name: Option<String>,
        /// Print the lab as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a lab and exactly what `lab up` made.
    Down {
        /// Lab name (default: the lab the last `lab up` made; the others are listed, not
        /// removed).
        name: Option<String>,
    },
    /// Up, trace ICMP/TCP/UDP from the lab container to the wan host, print, down.
    Demo {
        /// JSON lines, as the live `--json`.
        #[arg(long)]
        json: bool,
        /// TCX links (default when the kernel has them) or netlink clsact filters.
        #[arg(long, value_enum, default_value_t = TcModeArg::Auto)]
        tc_mode: TcModeArg,
        /// How long to trace.
        #[arg(long, value_parser = parse_duration, default_value = "3s")]
        duration: Duration,
    },
    /// List labs.
    List,
}

/// Which container runtime to look in, for a container or a Kubernetes pod.
#[derive(Debug, Args, Clone, Default)]
pub struct RuntimeArgs {
    /// A Kubernetes pod, found through the container runtime's CRI socket (no API server
    /// needed).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["container", "netns"])]
    pub pod: Option<String>,
    /// The Kubernetes namespace of --pod (default: default) or of --container (only Kubernetes
    /// containers of it).
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// The CRI socket, as crictl takes it (default: $CONTAINER_RUNTIME_ENDPOINT, else
    /// containerd's and CRI-O's).
    #[arg(long, value_name = "unix:///PATH")]
    pub runtime_endpoint: Option<String>,
    /// Look in this runtime only (default: every one this host runs).
    #[arg(long, value_enum)]
    pub runtime: Option<crate::runtime::RuntimeKind>,
}

/// `pathtrace verify`.
#[derive(Debug, Args, Clone, Default)]
pub struct VerifyArgs {
    /// Container to probe from: Docker, Podman or Kubernetes (name, id or unique id prefix).
    #[arg(long, short = 'c', value_name = "NAME|ID", conflicts_with = "netns")]
    pub container: Option<String>,
    /// Network namespace to probe from: a name under /var/run/netns or a path.
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Where the probe goes: HOST (ICMP echo) or HOST:PORT (TCP connect by default).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub to: String,
    /// tcp, udp or icmp.
    #[arg(long)]
    pub proto: Option<String>,
    /// The source address the probe must be rewritten to (MASQUERADE/SNAT).
    #[arg(long, value_name = "ADDR")]
    pub expect_snat: Option<IpAddr>,
    /// The interface the probe must leave the host by.
    #[arg(long, value_name = "IFACE")]
    pub expect_via: Option<String>,
    /// Also trace this host interface as an uplink (repeatable).
    #[arg(long = "uplink", value_name = "IFACE")]
    pub uplinks: Vec<String>,
    /// Hops the probe must take, in this order, comma-separated (`host:docker0` or `host:docker0
    /// ingress`); other hops may come between them.
    #[arg(long, value_name = "HOOK,HOOK,...")]
    pub expect_path: Option<String>,
    /// The probe must be dropped (a firewall rule that should block it).
    #[arg(long)]
    pub expect_drop: bool,
    /// The verdict as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// TCX links (default when the kernel has them) or netlink clsact filters.
    #[arg(long, value_enum, default_value_t = TcModeArg::Auto)]
    pub tc_mode: TcModeArg,
    /// A pcap-filter expression joined to the probe's own filter (`proto and host DST and
    /// (EXPR)`): only the probe packets it keeps are judged; one it rejects fails the check.
    #[arg(value_name = "EXPRESSION")]
    pub expression: Vec<String>,
}

/// The verbs: a trace's expression never holds one, so that `pathtrace --netns x inspect` (a
/// trace option before a verb) stays an error rather than the expression `inspect`.
const VERBS: [&str; 11] = [
    "verify",
    "diff",
    "show",
    "cleanup",
    "doctor",
    "lab",
    "inspect",
    "completions",
    "man",
    "report",
    "help",
];

fn expression_word(word: &str) -> Result<String, String> {
    if VERBS.contains(&word) {
        return Err(format!(
            "`{word}` is a pathtrace verb, not part of a filter expression: give the trace options after it (`pathtrace {word} --netns NAME`)"
        ));
    }
    Ok(word.to_string())
}

/// What to trace and how to show it.
#[derive(Debug, Args, Clone, Default)]
pub struct TraceArgs {
    /// Network namespace to trace: a name under /var/run/netns or a path (/proc/PID/ns/net).
    #[arg(long, value_name = "NAME|PATH", conflicts_with_all = ["container", "pod"])]
    pub netns: Option<String>,
    /// Container to trace: Docker, Podman, or a Kubernetes container by its name in its pod
    /// (name, id or unique id prefix).
    #[arg(long, value_name = "NAME|ID")]
    pub container: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Read a capture instead of tracing: another spelling of `pathtrace show FILE` (tcpdump's
    /// -r), with the same expression, --json and -w.
    #[arg(short = 'r', long = "read", value_name = "FILE", conflicts_with_all = ["netns", "container", "pod", "tui", "duration", "count"])]
    pub read: Option<PathBuf>,
    /// With --container or --pod: exit when it stops or is removed (default: keep what was
    /// seen and wait for it to start again).
    #[arg(long)]
    pub exit_on_stop: bool,
    /// Interface inside the namespace (default: the one with the default route).
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
    /// Destination: picks the uplink by route lookup and filters to traffic with this address.
    #[arg(long, value_name = "ADDR")]
    pub to: Option<IpAddr>,
    /// Also trace this host interface as an uplink (repeatable), for traffic routed out of an
    /// interface that is not on a default route (pathtrace says when it sees such traffic).
    #[arg(long = "uplink", value_name = "IFACE")]
    pub uplinks: Vec<String>,

    /// Only this protocol.
    #[arg(long = "filter-proto", value_name = "tcp|udp|icmp|icmpv6")]
    pub filter_proto: Option<String>,
    /// Only packets to or from this address or prefix (ADDR or ADDR/LEN).
    #[arg(long = "filter-host", value_name = "ADDR[/LEN]")]
    pub filter_host: Option<String>,
    /// Only packets to or from this port.
    #[arg(long = "filter-port", value_name = "PORT")]
    pub filter_port: Option<u16>,
    /// Read the filter expression from FILE (as tcpdump's -F).
    #[arg(
        short = 'f',
        long = "filter-file",
        value_name = "FILE",
        conflicts_with = "expression"
    )]
    pub filter_file: Option<PathBuf>,
    /// A pcap-filter expression, as tcpdump takes it (man 7 pcap-filter), e.g.
    /// 'tcp port 9000 and not host 10.0.0.5': a flow is traced when the expression keeps one of
    /// its packets at a hook where flows start (the container side; the uplink for published
    /// ports), and is then followed, both ways, through NAT at every hook.
    #[arg(value_name = "EXPRESSION", value_parser = expression_word)]
    pub expression: Vec<String>,

    /// JSON lines on stdout: one object per flow update, then a summary.
    #[arg(long)]
    pub json: bool,
    /// A full-screen live view on the terminal: the flows table (sortable, filterable), the
    /// selected flow's hops with its NAT step, a status line; `q` or Ctrl-C ends the trace.
    #[arg(long, conflicts_with = "json")]
    pub tui: bool,
    /// At the end, write the HTML report of the trace (as `pathtrace report` makes it): the
    /// trace is recorded as a capture for it (every packet, as -w), to the -w file when given,
    /// else to a temporary file next to this one, removed afterwards.
    #[arg(long, value_name = "FILE.html")]
    pub html: Option<PathBuf>,
    /// Stop after this long (e.g. 5s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many packet sightings (one per packet per hook, counted or sent), as
    /// tcpdump's -c.
    #[arg(short = 'c', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Write a pcapng capture (one interface per hook); `-` streams it to stdout (then the
    /// flows go to stderr), e.g. `-w - | tshark -r -`.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// With -w: start a new file (FILE.1, FILE.2, ...) when this one would pass this many bytes.
    #[arg(long, value_name = "BYTES", requires = "write")]
    pub max_size: Option<u64>,
    /// With -w: keep at most this many files (the oldest are deleted).
    #[arg(long, value_name = "N", requires = "write", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_files: Option<u32>,
    /// Bytes of each packet captured in the kernel (max 256).
    #[arg(long, default_value_t = tracer_common::event::CAPTURE_DEFAULT)]
    pub snaplen: u16,
    /// One event per packet per hook, every packet followed across every hook (what a -w
    /// capture stores, so -w implies it). By default the kernel counts every packet per flow
    /// per hook, exactly, and sends events only for a flow's first packets, TCP SYN/FIN/RST and
    /// a --sample of the rest.
    #[arg(long)]
    pub every_packet: bool,
    /// The default mode's sample: 1 in N packets, picked by their fingerprint so that a sampled
    /// packet is followed at every hook (per-hop latency rests on these); 1/1 follows all.
    #[arg(long, value_name = "1/N", default_value = "1/64", value_parser = parse_sample)]
    pub sample: u32,

    /// TCX links (default when the kernel has them) or netlink clsact filters.
    #[arg(long, value_enum, default_value_t = TcModeArg::Auto)]
    pub tc_mode: TcModeArg,
    /// Ring buffer size in KiB (power of two).
    #[arg(long, default_value_t = 8192, value_name = "KIB")]
    pub ring_size: u32,
    /// Flows kept at most; the least recently active are evicted and counted.
    #[arg(long, default_value_t = 65536)]
    pub max_flows: usize,
    /// Kernel-side debug messages (aya-log), shown with -vv.
    #[arg(long)]
    pub kernel_log: bool,
}

/// `--sample 1/N` (or just `N`): N, at least 1.
fn parse_sample(s: &str) -> Result<u32, String> {
    let n = s.strip_prefix("1/").unwrap_or(s);
    match n.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "`{s}` is not a sampling rate: give 1/N with N a whole number of at least 1 (e.g. 1/64; 1/1 samples every packet)"
        )),
    }
}

/// `--tc-mode`: how programs are attached at tc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcModeArg {
    /// TCX links when the kernel has them (>= 6.6), netlink clsact filters otherwise.
    #[default]
    Auto,
    /// TCX links only.
    Tcx,
    /// cls_bpf filters on a clsact qdisc, over netlink.
    Netlink,
}

impl From<TcModeArg> for TcMode {
    fn from(mode: TcModeArg) -> Self {
        match mode {
            TcModeArg::Auto => Self::Auto,
            TcModeArg::Tcx => Self::Tcx,
            TcModeArg::Netlink => Self::Netlink,
        }
    }
}

/// `5s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 5s, 500ms, 2m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s, m or h")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 7.0 * 86400.0 {
        return Err(format!(
            "duration {s:?} out of range (more than 0, at most a week)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(verbs_first(line.split(' ').map(std::ffi::OsString::from)))
    }

    #[test]
    fn global_flags_before_or_after_the_verb() {
        for line in [
            "pathtrace -vv lab demo",
            "pathtrace lab demo -vv",
            "pathtrace -v -v lab demo",
        ] {
            let cli = parsed(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(cli.verbose, 2, "{line}");
            assert!(matches!(cli.command, Some(Command::Lab { .. })), "{line}");
        }
        let cli = parsed("pathtrace --verbose inspect --netns x").map(|c| c.verbose);
        assert_eq!(cli.ok(), Some(1));
        // The default verb keeps its flags where they are.
        let cli = parsed("pathtrace -v --netns x --duration 1s").map(|c| c.verbose);
        assert_eq!(cli.ok(), Some(1));
        // A trace option before a verb is still refused.
        assert!(parsed("pathtrace --netns x inspect").is_err());
    }

    #[test]
    fn the_verbs_a_trace_expression_refuses_are_the_verbs() {
        use clap::CommandFactory as _;
        let mut verbs: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .chain(["help".to_string()])
            .collect();
        verbs.sort();
        let mut ours: Vec<String> = VERBS.iter().map(|v| v.to_string()).collect();
        ours.sort();
        assert_eq!(verbs, ours);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
