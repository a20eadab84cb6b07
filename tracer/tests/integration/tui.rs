//! `--tui` for real: the view runs in a tmux pane of its own (a server on a socket of its own),
//! keys go in with `send-keys`, and what a person would see comes back with `capture-pane`:
//! the flow's row, the selected flow's hops with the MASQUERADE step between the bridge and the
//! uplink, the filter and the sort. `q` and Ctrl-C end the trace, give the terminal back (the
//! view is gone from the pane, the final report is there) and leave nothing attached. Without a
//! terminal, `--tui` is one line and exit 2.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::support::{kernel::KernelState, lab::TestLab, privileged, serial, BIN};

#[test]
fn tui_without_a_terminal_is_one_line_and_exit_2() {
    // stdout is a pipe here (as in CI): refused before anything is looked up or attached.
    let out = Command::new(BIN)
        .args(["--netns", "pt-no-such-netns", "--tui"])
        .output()
        .expect("run pathtrace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("--tui needs a terminal"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// A tmux server of the test's own, killed (with its panes) on drop.
pub(crate) struct Tmux {
    socket: String,
    rc_file: PathBuf,
}

impl Tmux {
    /// Runs `command` in a detached 150x50 session; its exit code goes to `rc_file`, and the
    /// pane stays (a shell waits) so that what it left on the terminal can be read.
    pub(crate) fn start(tag: &str, command: &str) -> Self {
        // A socket of its own each time: a server killed just before may still hold the last.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = format!("pt-{tag}-{}-{n}", std::process::id());
        let rc_file = std::env::temp_dir().join(format!("{socket}.rc"));
        std::fs::remove_file(&rc_file).ok();
        let t = Self { socket, rc_file };
        let script = format!("{command}; echo $? > {}; sleep 600", t.rc_file.display());
        t.tmux(&[
            "new-session",
            "-d",
            "-s",
            "pt",
            "-x",
            "150",
            "-y",
            "50",
            "sh",
            "-c",
            &script,
        ]);
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("run tmux (apt-get install tmux)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "pt"])
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.tmux(&["send-keys", "-t", "pt", k]);
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// The screen once `ready` holds of it (panics with the last screen after `limit`).
    pub(crate) fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.screen();
            if ready(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "no {what} after {limit:?}:\n{s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The command's exit code, once it ended.
    pub(crate) fn exit_code(&self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(rc) = std::fs::read_to_string(&self.rc_file) {
                if let Ok(rc) = rc.trim().parse() {
                    return rc;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pathtrace did not end within {limit:?}:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output()
            .ok();
        std::fs::remove_file(&self.rc_file).ok();
    }
}

#[test]
fn tui_under_tmux_shows_flows_hops_and_nat_and_gives_the_terminal_back() {
    let _serial = serial();
    if !privileged("tui_under_tmux_shows_flows_hops_and_nat_and_gives_the_terminal_back") {
        return;
    }
    let lab = TestLab::up("tu");
    let l = &lab.0;
    let before = KernelState::take(l);
    let traffic = lab.start_traffic();
    let command = format!("{BIN} --netns {} --to {} --tui", l.ctr_netns, l.wan_addr);
    for quit in ["q", "C-c"] {
        let tmux = Tmux::start("tui", &command);
        let ctr = l.ctr_addr.to_string();
        let screen = tmux.wait_for("tcp flow with its NAT", Duration::from_secs(30), |s| {
            s.lines()
                .any(|r| r.contains(" tcp ") && r.contains(&ctr) && r.contains("SNAT"))
        });
        eprintln!("--tui, first screen:\n{screen}");
        assert!(screen.contains("Flows ("), "{screen}");
        assert!(screen.contains("sorted by last seen"), "{screen}");
        assert!(screen.contains("packet sightings"), "status line: {screen}");
        assert!(screen.contains("q quit"), "keys: {screen}");
        // Only the TCP flows, then the first of them selected: its hops, in path order, the
        // NAT step between the bridge and the uplink.
        tmux.keys(&["/", "t", "c", "p", "Enter", "Home"]);
        let bridge = format!("● host:{}", l.bridge);
        let uplink = format!("● host:{}", l.uplink);
        let screen = tmux.wait_for("filtered view", Duration::from_secs(5), |s| {
            s.contains("filter: tcp") && s.contains(&uplink)
        });
        eprintln!("--tui, filtered to tcp:\n{screen}");
        let at = |needle: &str| {
            screen
                .find(needle)
                .unwrap_or_else(|| panic!("no {needle:?} on the screen:\n{screen}"))
        };
        let ctr_hop = at(&format!("● {}:{}", l.ctr_netns, l.ctr_ifname));
        let veth = at(&format!("● host:{}", l.host_veth));
        let br = at(&bridge);
        let snat = at("├─  => SNAT (MASQUERADE)");
        let up = at(&uplink);
        assert!(
            ctr_hop < veth && veth < br && br < snat && snat < up,
            "hops in path order with the NAT step between bridge and uplink:\n{screen}"
        );
        for row in screen
            .lines()
            .filter(|r| r.contains(" icmp ") || r.contains(" udp "))
        {
            assert!(
                !row.contains(&ctr),
                "the filter keeps only tcp flows: {row}"
            );
        }
        tmux.keys(&["s"]);
        tmux.wait_for("sorted by packets", Duration::from_secs(5), |s| {
            s.contains("sorted by packets")
        });
        tmux.keys(&[quit]);
        assert_eq!(
            tmux.exit_code(Duration::from_secs(20)),
            0,
            "{}",
            tmux.screen()
        );
        let after = tmux.screen();
        eprintln!("after {quit}:\n{after}");
        assert!(!after.contains("Flows ("), "the view is gone:\n{after}");
        assert!(
            after.contains(" evicted"),
            "the final report is on the terminal:\n{after}"
        );
        before.assert_restored(l, &format!("after --tui ended by {quit}"));
    }
    traffic.stop();
}
