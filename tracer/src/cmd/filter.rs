//! Turns the `--filter-*`, `--to` and `--snaplen` flags into the kernel's load-time filter, in one
//! pure function (the flags never reach the kernel any other way).

use std::net::IpAddr;

use tracer_common::{
    config::{FilterConfig, FILTER_ADDR, FILTER_PORT, FILTER_PROTO},
    event::CAPTURE_MAX,
};

use crate::{
    cli::TraceArgs,
    model::{Prefix, Proto},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("--filter-proto {0:?}: expected tcp, udp, icmp or icmpv6")]
    Proto(String),
    #[error("--filter-host {0:?}: expected an address or ADDR/LEN, e.g. 10.0.0.0/24")]
    Host(String),
    #[error("--filter-host {0:?} and --to {1} disagree; give one of them")]
    HostAndTo(String, IpAddr),
    #[error("--snaplen {0}: expected 1..={CAPTURE_MAX}")]
    Snaplen(u16),
}

pub fn filter_config(args: &TraceArgs) -> Result<FilterConfig, FilterError> {
    let mut cfg = FilterConfig::NONE;
    if args.snaplen == 0 || usize::from(args.snaplen) > CAPTURE_MAX {
        return Err(FilterError::Snaplen(args.snaplen));
    }
    cfg.snaplen = args.snaplen;
    if let Some(p) = &args.filter_proto {
        let proto = match p.parse::<Proto>() {
            Ok(proto @ (Proto::Tcp | Proto::Udp | Proto::Icmp | Proto::Icmpv6)) => proto,
            _ => return Err(FilterError::Proto(p.clone())),
        };
        cfg.flags |= FILTER_PROTO;
        cfg.proto = proto.number();
    }
    if let Some(port) = args.filter_port {
        cfg.flags |= FILTER_PORT;
        cfg.port = port;
    }
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
    if let Some(Prefix { addr, len }) = host {
        cfg.flags |= FILTER_ADDR;
        cfg.prefix_len = len;
        match addr {
            IpAddr::V4(a) => {
                cfg.family = 4;
                cfg.addr[..4].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                cfg.family = 6;
                cfg.addr = a.octets();
            }
        }
    }
    Ok(cfg)
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
