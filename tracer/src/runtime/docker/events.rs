//! Lifecycle events of one container, from Docker's event stream: what drives re-discovery and
//! re-attach after `docker restart` (new namespace, new veth).

use std::{
    collections::HashMap,
    time::{SystemTime, UNIX_EPOCH},
};

use bollard::{container::InspectContainerOptions, system::EventsOptions};
use futures::{Stream, StreamExt};
use serde::Serialize;

use super::{api_error, Docker};

/// The Docker actions [`Docker::watch`] subscribes to: a container's lifecycle, and its network
/// attachments (`docker network connect` / `disconnect`).
const WATCHED_ACTIONS: [&str; 8] = [
    "start",
    "die",
    "stop",
    "restart",
    "destroy",
    "kill",
    "connect",
    "disconnect",
];

/// A lifecycle event of a watched container. Docker actions map as follows (others are ignored):
///
/// | Docker action | event |
/// |---|---|
/// | `start`   | [`Started`](Self::Started) with the new main pid (inspected when the event arrives; a start whose container is gone again is dropped: its `die` follows) |
/// | `kill`    | [`Killed`](Self::Killed) with the signal number (`docker stop`/`restart`/`kill` send one) |
/// | `die`     | [`Died`](Self::Died) with the exit code: the namespace and its veth are gone |
/// | `stop`    | [`Stopped`](Self::Stopped) (after `die`, when `docker stop`/`restart` stopped it) |
/// | `restart` | [`Restarted`](Self::Restarted), sent by `docker restart` *after* its `start` |
/// | `destroy` | [`Destroyed`](Self::Destroyed): the container was removed; nothing more will come |
///
/// `docker restart` gives `kill`, `die`, `stop`, `start`, `restart`; a restart policy gives `die`,
/// `start`. Re-attach on `Started` (new netns, new veth), detach on `Died`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ContainerEvent {
    Started {
        pid: u32,
    },
    Killed {
        signal: Option<i32>,
    },
    Died {
        exit_code: Option<i64>,
    },
    Stopped,
    Restarted,
    Destroyed,
    /// `docker network connect`: a new interface (and maybe a new bridge) in the namespace.
    NetworkConnected {
        network: String,
    },
    /// `docker network disconnect`: an interface gone from the namespace.
    NetworkDisconnected {
        network: String,
    },
    /// The event stream failed or Docker closed it; this is the last item.
    WatchEnded {
        reason: String,
    },
}

impl Docker {
    /// Lifecycle events of one container (see [`ContainerEvent`] for the mapping), from the
    /// moment of this call: the stream is lazy, but asks Docker for the events since then, so
    /// none is lost between this call and the first poll.
    pub fn watch(&self, container_id: &str) -> impl Stream<Item = ContainerEvent> + Send + 'static {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
            .ok();
        // Docker's `container` filter does not match network events (their actor is the
        // network): both types come, and the container is picked out here.
        let filters = HashMap::from([
            (
                "type".to_string(),
                vec!["container".to_string(), "network".to_string()],
            ),
            (
                "event".to_string(),
                WATCHED_ACTIONS.iter().map(|a| a.to_string()).collect(),
            ),
        ]);
        let container_id = container_id.to_string();
        let options = EventsOptions {
            since,
            until: None,
            filters,
        };
        let events = self.api.events(Some(options)).boxed();
        let docker = self.clone();
        futures::stream::unfold(Some(events), move |events| {
            let docker = docker.clone();
            let container_id = container_id.clone();
            async move {
                let mut events = events?;
                loop {
                    let reason = match events.next().await {
                        Some(Ok(msg)) => {
                            let action = msg.action.as_deref().unwrap_or_default();
                            let network =
                                msg.typ.map(|t| t.to_string()).as_deref() == Some("network");
                            let actor = msg.actor.unwrap_or_default();
                            let attrs = actor.attributes.unwrap_or_default();
                            let id = actor.id.unwrap_or_default();
                            let ours = if network {
                                attrs.get("container") == Some(&container_id)
                            } else {
                                id == container_id
                            };
                            if !ours {
                                continue;
                            }
                            if let Some(ev) = docker.event_from(action, &attrs, id).await {
                                return Some((ev, Some(events)));
                            }
                            continue;
                        }
                        Some(Err(e)) => {
                            api_error(&docker.endpoint, "watching events", e).to_string()
                        }
                        None => "Docker closed the event stream".to_string(),
                    };
                    return Some((ContainerEvent::WatchEnded { reason }, None));
                }
            }
        })
    }

    async fn event_from(
        &self,
        action: &str,
        attrs: &HashMap<String, String>,
        id: String,
    ) -> Option<ContainerEvent> {
        if action != "start" {
            return map_action(action, attrs);
        }
        let c = self
            .api
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .ok()?;
        let pid = u32::try_from(c.state?.pid?).ok().filter(|p| *p > 0)?;
        Some(ContainerEvent::Started { pid })
    }
}

/// Every watched action but `start` (which needs the new pid from the daemon).
pub(super) fn map_action(action: &str, attrs: &HashMap<String, String>) -> Option<ContainerEvent> {
    Some(match action {
        "kill" => ContainerEvent::Killed {
            signal: attrs.get("signal").and_then(|s| s.parse().ok()),
        },
        "die" => ContainerEvent::Died {
            exit_code: attrs.get("exitCode").and_then(|s| s.parse().ok()),
        },
        "stop" => ContainerEvent::Stopped,
        "restart" => ContainerEvent::Restarted,
        "destroy" => ContainerEvent::Destroyed,
        "connect" => ContainerEvent::NetworkConnected {
            network: attrs.get("name").cloned().unwrap_or_default(),
        },
        "disconnect" => ContainerEvent::NetworkDisconnected {
            network: attrs.get("name").cloned().unwrap_or_default(),
        },
        _ => return None,
    })
}
