//! Following a container through its lifecycle while it is traced: the runtime's events
//! ([`TargetEvent`]) become requests to the running session ([`Control`]): re-attach the
//! container's own hooks after a restart (new namespace, new veth), say it stopped, end the trace
//! when it is removed. Runtime-neutral: the runtime's watch stream is all it reads.

use std::{collections::BTreeSet, net::IpAddr};

use futures::{stream::BoxStream, StreamExt as _};
use tokio::sync::mpsc;

use crate::{
    attach::AttachTarget,
    model::Place,
    runtime::{Target, TargetEvent},
};

use super::{
    plan::{container_hooks, target_addrs},
    session::Control,
};

/// What the follower needs to know about the trace.
pub(crate) struct Follow {
    /// The container's name, as messages give it.
    pub name: String,
    /// `container` or `pod`: what messages call it, and its flag (`--container`, `--pod`).
    pub what: &'static str,
    /// `Docker`: whose event stream it is.
    pub runtime: String,
    /// `--to`: picks the uplink of re-discovered paths.
    pub to: Option<IpAddr>,
    /// `--uplink`: more uplinks of re-discovered paths.
    pub uplinks: Vec<String>,
    /// End the trace when the container stops.
    pub exit_on_stop: bool,
    /// The container's main pid when the trace began.
    pub pid: Option<u32>,
    /// The NAT rules attribution uses: read again before a restarted target is re-attached.
    pub rules: Option<std::sync::Arc<super::plan::LiveRules>>,
}

/// Follows `events` until the container is removed or the stream ends. Returns `Some(why)` when
/// the container was removed, which ends the trace as an error.
pub(crate) async fn follow(
    mut events: BoxStream<'static, TargetEvent>,
    f: Follow,
    tx: mpsc::Sender<Control>,
) -> Option<String> {
    let (name, what) = (&f.name, f.what);
    // The main pid the hooks follow: a network change of another incarnation (a restart
    // disconnects and connects its networks) is the start's business.
    let mut pid = f.pid;
    let mut last_change: Option<(String, std::time::Instant)> = None;
    while let Some(ev) = events.next().await {
        let msg = match ev {
            TargetEvent::Started(target) => {
                pid = target.pid;
                // Before the new hooks see a packet: the new sandbox's NAT chains.
                if let Some(rules) = f.rules.clone() {
                    tokio::task::spawn_blocking(move || rules.refresh())
                        .await
                        .ok();
                }
                restarted(&target, &f)
            }
            TargetEvent::NetworksChanged { target, what } => {
                // Docker repeats some network events; one is enough.
                let again =
                    last_change
                        .as_ref()
                        .is_some_and(|(w, at): &(String, std::time::Instant)| {
                            *w == what && at.elapsed() < std::time::Duration::from_secs(2)
                        });
                if target.pid != pid || again {
                    continue;
                }
                last_change = Some((what.clone(), std::time::Instant::now()));
                rewired(&target, &what, &f)
            }
            TargetEvent::NetworksChangedUnresolved { what, why } => Control::Note(format!(
                "{what} {name} {what} but could not be re-attached: {why}"
            )),
            TargetEvent::StartedUnresolved { pid, why } => Control::Note(format!(
                "{what} {name} started again{} but could not be re-attached: {why}",
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
            )),
            TargetEvent::Stopped { exit_code } => {
                let code = exit_code
                    .map(|c| format!(" (exit code {c})"))
                    .unwrap_or_default();
                if f.exit_on_stop {
                    Control::Stop(format!(
                        "{what} {name} stopped{code}; exiting (--exit-on-stop)"
                    ))
                } else {
                    Control::Note(format!("{what} {name} stopped{code}; what was seen is kept, waiting for it to start again"))
                }
            }
            TargetEvent::Removed => {
                // Nothing can bring this container back: stop, and say so as an error.
                // The session may be gone already; then there is nobody left to tell.
                tx.send(Control::Stop(format!("{what} {name} was removed")))
                    .await
                    .ok();
                return Some(format!(
                    "{what} {name} was removed while being traced (what was seen is above); trace its replacement with --{what} <new name>"
                ));
            }
            TargetEvent::WatchEnded { reason } => Control::Note(format!(
                "{} event stream ended ({reason}); restarts of {name} are no longer followed",
                f.runtime
            )),
        };
        let stop = matches!(msg, Control::Stop(_));
        if tx.send(msg).await.is_err() || stop {
            return None;
        }
    }
    None
}

/// The host veths among `hooks`, each once, in name order: "veth1, veth2".
fn host_veths(hooks: &[AttachTarget]) -> String {
    let veths: BTreeSet<&str> = hooks
        .iter()
        .filter(|t| t.hook.place == Place::Veth)
        .map(|t| t.hook.ifname.as_str())
        .collect();
    veths.into_iter().collect::<Vec<_>>().join(", ")
}

/// The request after a restart: the container's own hooks again, on their old slots.
fn restarted(target: &Target, f: &Follow) -> Control {
    let pid = |then: &str| {
        target
            .pid
            .map(|p| format!("pid {p}{then}"))
            .unwrap_or_default()
    };
    match reattach(target, f.to, &f.uplinks) {
        Ok((attach, target_addrs, detach_slots)) => {
            let note = format!(
                "{} {} started again ({}new network namespace); following it on host {}",
                f.what,
                f.name,
                pid(", "),
                host_veths(&attach)
            );
            Control::Replace {
                detach_slots,
                attach,
                target_addrs,
                note,
            }
        }
        Err(e) => Control::Note(format!(
            "{} {} started again{} but could not be re-attached: {e:#}",
            f.what,
            f.name,
            target
                .pid
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default()
        )),
    }
}

/// After a network was connected or disconnected: every hook of the container's paths now (the
/// session keeps those it has, releases the others and attaches the new ones).
fn rewired(target: &Target, what: &str, f: &Follow) -> Control {
    let paths = target
        .paths(f.to, &f.uplinks)
        .map_err(anyhow::Error::from)
        .and_then(|paths| Ok((container_hooks(&paths)?, target_addrs(&paths))));
    match paths {
        Ok((attach, target_addrs)) => {
            let note = format!(
                "{} {} {what}; following it on host {}",
                f.what,
                f.name,
                host_veths(&attach)
            );
            Control::Rewire {
                attach,
                target_addrs,
                note,
            }
        }
        Err(e) => Control::Note(format!(
            "container {} {what} but could not be re-attached: {e:#}",
            f.name
        )),
    }
}

/// The container's own hooks on its new paths, its new addresses, and the slots to free.
fn reattach(
    target: &Target,
    to: Option<IpAddr>,
    uplinks: &[String],
) -> anyhow::Result<(Vec<AttachTarget>, Vec<IpAddr>, Vec<u8>)> {
    let paths = target.paths(to, uplinks)?;
    let own: Vec<AttachTarget> = container_hooks(&paths)?
        .into_iter()
        .filter(|t| t.hook.place.is_source())
        .collect();
    let slots = own.iter().map(|t| t.hook.slot).collect();
    Ok((own, target_addrs(&paths), slots))
}
