//! The floor under the eBPF cost rows: a tc program that does nothing (`r0 = TCX_NEXT; exit`),
//! attached by the bench itself as a TCX link on a lab interface next to pathtrace's programs.
//! Its `run_time_ns / run_cnt` is what the kernel's statistics report for a program with no
//! work at all: the two clock reads around every run and the call itself. On a KVM guest those
//! clock reads are a large part of a short program's figure.
//!
//! Raw `bpf(2)` calls (two commands, a 2-instruction program) rather than an object file: the
//! program is too small to be worth a build step. The link and the program go away when this
//! is dropped (closing the fds detaches and frees them), also on every error path.

use std::{
    ffi::CString,
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result};
use nix::libc;

use super::proc::ProgStats;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;

/// An empty tc program attached (TCX, ingress) to one interface of the host namespace.
pub(super) struct EmptyProgram {
    prog: OwnedFd,
    _link: OwnedFd,
}

impl EmptyProgram {
    pub(super) fn attach(ifname: &str) -> Result<Self> {
        let name = CString::new(ifname)?;
        // SAFETY: a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        anyhow::ensure!(ifindex != 0, "no interface {ifname} in the host namespace");
        let prog = load_empty().context("loading the empty tc program")?;
        let link = tcx_link(&prog, ifindex)
            .with_context(|| format!("attaching the empty tc program to {ifname}"))?;
        Ok(Self { prog, _link: link })
    }

    /// The program's run statistics, from this process's fdinfo.
    pub(super) fn stats(&self) -> Result<ProgStats> {
        let path = format!("/proc/self/fdinfo/{}", self.prog.as_raw_fd());
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |k: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no {k} in {path}"))
        };
        Ok(ProgStats {
            id: u32::try_from(field("prog_id:")?)?,
            run_time_ns: field("run_time_ns:")?,
            run_cnt: field("run_cnt:")?,
        })
    }
}

/// `r0 = -1 (TCX_NEXT / TC_ACT_UNSPEC); exit`.
fn load_empty() -> Result<OwnedFd> {
    // struct bpf_insn { u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm; }
    let mov_r0_imm = [0xb7u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
    let exit = [0x95u8, 0, 0, 0, 0, 0, 0, 0];
    let insns = [mov_r0_imm, exit];
    let license = c"GPL";
    // union bpf_attr, BPF_PROG_LOAD: prog_type@0 insn_cnt@4 insns@8 license@16 ... prog_name@48.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let name = b"bench_empty";
    attr[48..48 + name.len()].copy_from_slice(name);
    bpf(BPF_PROG_LOAD, &attr)
}

/// A TCX ingress link for `prog` on `ifindex`.
fn tcx_link(prog: &OwnedFd, ifindex: u32) -> Result<OwnedFd> {
    // union bpf_attr, BPF_LINK_CREATE: prog_fd@0 target_ifindex@4 attach_type@8 flags@12.
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_TCX_INGRESS.to_ne_bytes());
    bpf(BPF_LINK_CREATE, &attr)
}

fn bpf(cmd: libc::c_long, attr: &[u8]) -> Result<OwnedFd> {
    // SAFETY: `attr` is valid for its length, which we pass; every pointer inside it points at
    // data that outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("bpf({cmd})"));
    }
    // SAFETY: the kernel just gave us this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd)?) })
}
