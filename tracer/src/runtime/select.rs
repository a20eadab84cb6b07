//! Every container runtime this host runs, looked in together: Docker (`DOCKER_HOST` or its
//! socket), Podman (`CONTAINER_HOST` or `/run/podman/podman.sock`, its Docker-compatible
//! service) and the CRI (`--runtime-endpoint`, `CONTAINER_RUNTIME_ENDPOINT`, else containerd's
//! and CRI-O's sockets). A runtime asked for by name (an environment variable, a flag) must
//! answer; one found at its default place is used when it answers and otherwise only said in the
//! message when nothing is found.

use std::path::Path;

use futures::{future::BoxFuture, stream::BoxStream, FutureExt as _, StreamExt as _};

use super::{
    cri::{self, Cri},
    docker::{self, Docker, Flavor},
    ContainerRuntime, FlowNotes, Listed, RuntimeError, Target, TargetEvent, TargetPath, Unknown,
    Wanted,
};

/// Where Podman's service listens when `CONTAINER_HOST` is not set.
pub(crate) const PODMAN_DEFAULT: &str = "unix:///run/podman/podman.sock";

/// `--runtime`: look in one runtime only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    Docker,
    Podman,
    /// Kubernetes: containerd or CRI-O, through the CRI.
    Cri,
}

/// Which runtimes to look in, and where the CRI is.
#[derive(Clone, Debug, Default)]
pub(crate) struct Endpoints {
    /// `--runtime-endpoint`.
    pub cri: Option<String>,
    /// `--runtime`.
    pub only: Option<RuntimeKind>,
}

impl Endpoints {
    fn wants(&self, kind: RuntimeKind) -> bool {
        self.only.is_none_or(|k| k == kind)
    }
}

/// Several runtimes can hold the same name.
#[derive(Debug, thiserror::Error)]
#[error("{what} is in more than one runtime: {}; pick one with --runtime docker|podman|cri", .matches.join(", "))]
pub(crate) struct Ambiguous {
    pub what: String,
    pub matches: Vec<String>,
}

/// No runtime answers on this host.
#[derive(Debug, thiserror::Error)]
#[error("no container runtime answers here: {}", .tried.join("; "))]
pub(crate) struct NoRuntime {
    pub tried: Vec<String>,
}

/// The runtimes that answered, and what was found of the others.
pub(crate) struct Runtimes {
    all: Vec<Box<dyn ContainerRuntime>>,
    /// Why a runtime that might be here is not used (`Podman: its API socket ... is not
    /// listening: start it with ...`).
    absent: Vec<String>,
    /// `a`, `a or b`, `a, b or c`.
    names: String,
}

/// Every runtime `ep` allows that this host runs.
pub(crate) async fn connect(ep: &Endpoints) -> Result<Runtimes, RuntimeError> {
    let (docker, podman, cris) =
        futures::join!(connect_docker(ep), connect_podman(ep), connect_cris(ep));
    let mut all: Vec<Box<dyn ContainerRuntime>> = Vec::new();
    let mut absent = Vec::new();
    let mut docker_at = None;
    match docker? {
        Ok(d) => {
            docker_at = Some(d.endpoint().to_string());
            all.push(Box::new(d));
        }
        Err(why) => absent.extend(why),
    }
    match podman? {
        // podman-docker links Docker's socket to Podman's: the same service, once.
        Ok(p) if same_socket(docker_at.as_deref(), p.endpoint()) => {}
        Ok(p) => all.push(Box::new(p)),
        Err(why) => absent.extend(why),
    }
    for c in cris? {
        match c {
            Ok(c) => all.push(Box::new(c)),
            Err(why) => absent.extend(why),
        }
    }
    if all.is_empty() {
        return Err(RuntimeError::new(NoRuntime { tried: absent }));
    }
    let names = join_or(all.iter().map(|r| r.name().to_string()).collect());
    Ok(Runtimes { all, absent, names })
}

/// `Ok(Err(why))`: not here (said only if nothing is found); `Err`: asked for and failing.
type Found<T> = Result<Result<T, Option<String>>, RuntimeError>;

async fn connect_docker(ep: &Endpoints) -> Found<Docker> {
    if !ep.wants(RuntimeKind::Docker) {
        return Ok(Err(None));
    }
    let explicit = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
    let host = explicit
        .clone()
        .unwrap_or_else(|| docker::DEFAULT_HOST.to_string());
    if explicit.is_none() && !socket_exists(&host) {
        return Ok(Err(Some(format!("Docker: no socket at {host}"))));
    }
    match Docker::connect_to(&host, docker::DEFAULT_TIMEOUT).await {
        // A Docker socket Podman serves (podman-docker) is Podman's, and found as Podman.
        Ok(d) if d.flavor() == Flavor::Podman && ep.only == Some(RuntimeKind::Docker) => {
            Ok(Err(Some(format!("{host} is Podman's, not Docker's"))))
        }
        Ok(d) => Ok(Ok(d)),
        Err(e) if explicit.is_some() || ep.only == Some(RuntimeKind::Docker) => {
            Err(RuntimeError::new(e))
        }
        Err(e) => Ok(Err(Some(format!("Docker: {e}")))),
    }
}

async fn connect_podman(ep: &Endpoints) -> Found<Docker> {
    if !ep.wants(RuntimeKind::Podman) {
        return Ok(Err(None));
    }
    let explicit = std::env::var("CONTAINER_HOST")
        .ok()
        .filter(|h| !h.is_empty());
    let host = explicit
        .clone()
        .unwrap_or_else(|| PODMAN_DEFAULT.to_string());
    let asked = explicit.is_some() || ep.only == Some(RuntimeKind::Podman);
    if !socket_exists(&host) {
        let why = podman_not_serving(&host);
        return match (asked, why) {
            (true, why) => Err(RuntimeError::new(NoRuntime {
                tried: vec![why.unwrap_or_else(|| format!("Podman: no socket at {host}"))],
            })),
            (false, why) => Ok(Err(why)),
        };
    }
    match Docker::connect_to(&host, docker::DEFAULT_TIMEOUT).await {
        Ok(p) => Ok(Ok(p)),
        Err(e) if asked => Err(RuntimeError::new(e)),
        Err(e) => Ok(Err(Some(format!("Podman: {e}")))),
    }
}

/// When podman is installed but its API socket is not there: how to start it. pathtrace does
/// not start a service of its own (it would run with the host's Podman configuration for as
/// long as the trace, and a stray one would outlive a killed pathtrace).
fn podman_not_serving(host: &str) -> Option<String> {
    let installed = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .any(|dir| dir.join("podman").is_file());
    installed.then(|| {
        let sock = host.strip_prefix("unix://").unwrap_or(host);
        format!(
            "Podman is installed but its API socket {sock} is not listening: start it with `podman system service --time=0 unix://{sock} &` (or `systemctl start podman.socket`)"
        )
    })
}

async fn connect_cris(ep: &Endpoints) -> Result<Vec<Result<Cri, Option<String>>>, RuntimeError> {
    if !ep.wants(RuntimeKind::Cri) {
        return Ok(Vec::new());
    }
    let explicit = ep.cri.clone().or_else(|| {
        std::env::var("CONTAINER_RUNTIME_ENDPOINT")
            .ok()
            .filter(|h| !h.is_empty())
    });
    if let Some(endpoint) = explicit {
        return Cri::connect(&endpoint)
            .await
            .map(|c| vec![Ok(c)])
            .map_err(RuntimeError::new);
    }
    let tries = cri::DEFAULT_ENDPOINTS.iter().map(|endpoint| async move {
        if !socket_exists(endpoint) {
            return Err(None);
        }
        Cri::connect(endpoint).await.map_err(|e| {
            tracing::debug!("CRI at {endpoint}: {e}");
            Some(format!("CRI: {e}"))
        })
    });
    let found = futures::future::join_all(tries).await;
    if ep.only == Some(RuntimeKind::Cri) && !found.iter().any(Result::is_ok) {
        let tried = found
            .into_iter()
            .filter_map(|r| r.err().flatten())
            .collect::<Vec<_>>();
        let tried = match tried.is_empty() {
            true => vec![format!(
                "CRI: no socket at {} (give --runtime-endpoint unix:///PATH)",
                cri::DEFAULT_ENDPOINTS.join(" or ")
            )],
            false => tried,
        };
        return Err(RuntimeError::new(NoRuntime { tried }));
    }
    Ok(found)
}

fn socket_path(endpoint: &str) -> Option<&str> {
    endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.starts_with('/').then_some(endpoint))
}

/// A unix endpoint whose socket exists, or any other endpoint (tcp: asked for, tried).
fn socket_exists(endpoint: &str) -> bool {
    socket_path(endpoint).is_none_or(|p| Path::new(p).exists())
}

fn same_socket(a: Option<&str>, b: &str) -> bool {
    let canon = |e: &str| socket_path(e).and_then(|p| std::fs::canonicalize(p).ok());
    a.is_some_and(|a| canon(a).is_some() && canon(a) == canon(b))
}

fn join_or(mut names: Vec<String>) -> String {
    match names.len() {
        0 => String::new(),
        1 => names.remove(0),
        _ => {
            let last = names.pop().unwrap_or_default();
            format!("{} or {last}", names.join(", "))
        }
    }
}

impl Runtimes {
    /// `Docker (unix:///var/run/docker.sock)`, one per runtime that answered.
    pub(crate) fn answering(&self) -> Vec<String> {
        self.all
            .iter()
            .map(|r| format!("{} ({})", r.name(), r.endpoint()))
            .collect()
    }

    /// Why each runtime that might be here is not used.
    pub(crate) fn absent(&self) -> &[String] {
        &self.absent
    }

    /// `pod shop/web: found in containerd (CRI) at unix:///...`, when more than one runtime
    /// was looked in.
    pub(crate) fn found_note(&self, wanted: &Wanted, target: &Target) -> Option<String> {
        (self.all.len() > 1).then(|| {
            let what = if wanted.pod { "pod" } else { "container" };
            format!(
                "{what} {} found in {} (looked in {})",
                target.name, target.runtime, self.names
            )
        })
    }

    fn of(&self, target: &Target) -> Option<&dyn ContainerRuntime> {
        self.all
            .iter()
            .find(|r| r.name() == target.runtime)
            .map(AsRef::as_ref)
    }

    /// Merges each runtime's answer: the one that has it, else the most telling error.
    fn choose(
        &self,
        wanted: &Wanted,
        answers: Vec<Result<Target, RuntimeError>>,
    ) -> Result<Target, RuntimeError> {
        let mut found = Vec::new();
        let mut unknown: Vec<Unknown> = Vec::new();
        let mut other = None;
        for a in answers {
            match a {
                Ok(t) => found.push(t),
                Err(e) => match e.unknown() {
                    Some(u) => unknown.push(u.clone()),
                    None => {
                        other.get_or_insert(e);
                    }
                },
            }
        }
        if found.len() > 1 {
            return Err(RuntimeError::new(Ambiguous {
                what: wanted.describe(),
                matches: found
                    .iter()
                    .map(|t| {
                        let id = t.id.get(..12).unwrap_or(&t.id);
                        format!("{} in {} (id {id})", t.name, t.runtime)
                    })
                    .collect(),
            }));
        }
        if let Some(t) = found.pop() {
            return Ok(t);
        }
        if let Some(e) = other {
            return Err(e);
        }
        // The runtimes that can hold what was asked (Docker and Podman hold no pods).
        let asked: Vec<String> = unknown
            .iter()
            .filter(|u| !u.runtime.is_empty())
            .map(|u| u.runtime.clone())
            .collect();
        let kubernetes = wanted.pod || wanted.namespace.is_some();
        let mut merged = Unknown {
            what: wanted.describe(),
            runtime: match asked.is_empty() {
                true if kubernetes => "any CRI runtime (none answers here)".to_string(),
                true => self.names.clone(),
                false => join_or(asked),
            },
            suggestions: Vec::new(),
            hints: Vec::new(),
        };
        for u in unknown {
            for s in u.suggestions {
                if !merged.suggestions.contains(&s) {
                    merged.suggestions.push(s);
                }
            }
            merged.hints.extend(u.hints);
        }
        let cri_only = |h: &&String| !kubernetes || h.starts_with("CRI");
        merged
            .hints
            .extend(self.absent.iter().filter(cri_only).cloned());
        if merged.suggestions.is_empty() && merged.hints.is_empty() {
            merged
                .hints
                .push("list what runs with `pathtrace inspect`".to_string());
        }
        Err(RuntimeError::new(merged))
    }
}

impl ContainerRuntime for Runtimes {
    fn name(&self) -> &str {
        &self.names
    }

    fn endpoint(&self) -> &str {
        ""
    }

    fn resolve<'a>(&'a self, wanted: &'a Wanted) -> BoxFuture<'a, Result<Target, RuntimeError>> {
        async move {
            let answers =
                futures::future::join_all(self.all.iter().map(|r| r.resolve(wanted))).await;
            self.choose(wanted, answers)
        }
        .boxed()
    }

    fn list_running(&self) -> BoxFuture<'_, Result<Vec<Listed>, RuntimeError>> {
        async move {
            let lists = futures::future::join_all(self.all.iter().map(|r| r.list_running())).await;
            let mut out = Vec::new();
            let mut first_err = None;
            let mut any_ok = false;
            for l in lists {
                match l {
                    Ok(l) => {
                        any_ok = true;
                        out.extend(l);
                    }
                    Err(e) => {
                        tracing::warn!("listing containers: {e}");
                        first_err.get_or_insert(e);
                    }
                }
            }
            match (any_ok, first_err) {
                (false, Some(e)) => Err(e),
                _ => Ok(out),
            }
        }
        .boxed()
    }

    fn watch(&self, target: &Target) -> BoxStream<'static, TargetEvent> {
        match self.of(target) {
            Some(r) => r.watch(target),
            None => {
                let reason = format!("no runtime {} to watch {} in", target.runtime, target.name);
                futures::stream::once(async move { TargetEvent::WatchEnded { reason } }).boxed()
            }
        }
    }

    fn flow_notes(&self, target: &Target, paths: &[TargetPath]) -> Option<Box<dyn FlowNotes>> {
        self.of(target)?.flow_notes(target, paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_join_with_or() {
        assert_eq!(join_or(vec!["Docker".into()]), "Docker");
        assert_eq!(
            join_or(vec![
                "Docker".into(),
                "Podman".into(),
                "containerd (CRI)".into()
            ]),
            "Docker, Podman or containerd (CRI)"
        );
    }
}
