//! docker-proxy, Docker's userland proxy: a connection to a published port from the host itself
//! (or with hairpin NAT off) is accepted by docker-proxy on the host and opened again from the
//! bridge's own address to the container. The container sees a client on its bridge and no DNAT
//! step exists to show, so the path alone would mislead; this says so on the flow.

use std::{collections::HashMap, net::IpAddr};

use crate::{
    correlate::{FlowId, FlowReport},
    discover::{conntrack, rtnl::Rtnl},
    model::{Endpoint, Orientation, Place, Proto},
    runtime::{FlowNotes, PublishedPort, Target, TargetPath},
};

/// The note for connections to a published port that docker-proxy opened from the host.
pub(super) const PROXY_NOTE: &str =
    "carried by docker-proxy (userland proxy) from the host, not by DNAT";

/// Verdicts kept at most; beyond, they are forgotten and asked again (a cache, not a record).
const MAX_VERDICTS: usize = 65_536;

/// Recognises docker-proxy's connections: from an address of the container's bridge to a
/// published container port, with no DNAT in their conntrack entry (a host process connecting to
/// the bridge address is DNATed in OUTPUT and also comes from there).
pub(super) struct ProxyHint {
    bridge_addrs: Vec<IpAddr>,
    published: Vec<PublishedPort>,
    /// Verdicts per flow, once conntrack answered.
    seen: HashMap<FlowId, Option<String>>,
}

impl ProxyHint {
    /// A hint for `target`, unless it publishes no port (then no flow can be docker-proxy's).
    pub(super) fn new(target: &Target, paths: &[TargetPath]) -> Option<Self> {
        if target.published.is_empty() {
            return None;
        }
        let bridges: Vec<u32> = paths
            .iter()
            .filter_map(|p| p.path.link(Place::Bridge).map(|b| b.ifindex))
            .collect();
        let mut bridge_addrs: Vec<IpAddr> = target
            .networks
            .iter()
            .filter(|n| n.bridge_name.is_some())
            .filter_map(|n| n.gateway)
            .collect();
        match Rtnl::open().and_then(|mut r| r.addrs()) {
            Ok(addrs) => bridge_addrs.extend(
                addrs
                    .into_iter()
                    .filter(|a| bridges.contains(&a.ifindex))
                    .map(|a| a.addr),
            ),
            Err(e) => tracing::debug!("bridge addresses: {e}"),
        }
        Some(Self {
            bridge_addrs,
            published: target.published.clone(),
            seen: HashMap::new(),
        })
    }

    /// The published port `server` is the container end of, when `client` is the bridge.
    fn published_port(
        &self,
        proto: Proto,
        client: Endpoint,
        server: Endpoint,
    ) -> Option<&PublishedPort> {
        if !self.bridge_addrs.contains(&client.addr) {
            return None;
        }
        self.published
            .iter()
            .find(|p| p.container_port == server.port && p.proto == proto)
    }

    fn remember(&mut self, id: FlowId, verdict: Option<String>) {
        if self.seen.len() >= MAX_VERDICTS {
            self.seen.clear();
        }
        self.seen.insert(id, verdict);
    }
}

impl FlowNotes for ProxyHint {
    fn notes(&mut self, f: &FlowReport) -> Vec<String> {
        if let Some(known) = self.seen.get(&f.id) {
            return known.iter().cloned().collect();
        }
        let (client, server) = match f.origin {
            Orientation::Inbound => (f.src, f.dst),
            Orientation::Outbound => (f.dst, f.src),
        };
        let Some(port) = self.published_port(f.proto, client, server) else {
            self.remember(f.id, None);
            return Vec::new();
        };
        let note = format!(
            "{PROXY_NOTE}: a client of host port {}/{} reached docker-proxy, which connected to \
             the container from the bridge address {}",
            port.host_port, port.proto, client.addr
        );
        match conntrack::lookup(f.proto, client, server) {
            // No entry with this original tuple: DNATed (its original destination was the
            // host port), or gone already; ask again on the next update when it was gone.
            Ok(None) => match conntrack::lookup_reply(f.proto, server, client) {
                Ok(Some(_)) => {
                    self.remember(f.id, None);
                    Vec::new()
                }
                _ => vec![note],
            },
            Ok(Some(_)) => {
                self.remember(f.id, Some(note.clone()));
                vec![note]
            }
            Err(e) => {
                tracing::debug!("conntrack: {e}");
                vec![note]
            }
        }
    }
}
