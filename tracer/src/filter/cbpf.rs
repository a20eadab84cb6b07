//! Classic BPF: what libpcap's compiler makes of an expression, and an interpreter of it that
//! gives libpcap's own verdicts (its `bpf_filter`, instruction by instruction), for the frames
//! userspace judges (`show FILE EXPR`, `-w OUT`).
//!
//! libpcap is loaded at run time (`dlopen`), not linked: pathtrace runs on hosts without it, and
//! only an expression needs it.

use std::{
    ffi::{c_char, c_int, c_uint, c_void, CStr, CString},
    sync::{Mutex, OnceLock},
};

/// `DLT_EN10MB`: every hook pathtrace attaches to carries Ethernet frames.
const DLT_EN10MB: c_int = 1;
/// The sonames distributions ship libpcap under, most common first.
const SONAMES: [&str; 3] = ["libpcap.so.0.8", "libpcap.so.1", "libpcap.so"];
/// Instructions the interpreter runs at most on one frame: a backward jump (only `protochain`
/// makes them) cannot hang it.
const STEP_LIMIT: usize = 1 << 16;

/// One classic BPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Instruction classes and fields, as <pcap/bpf.h> spells them.
pub(crate) const LD: u16 = 0x00;
pub(crate) const LDX: u16 = 0x01;
pub(crate) const ST: u16 = 0x02;
pub(crate) const STX: u16 = 0x03;
pub(crate) const ALU: u16 = 0x04;
pub(crate) const JMP: u16 = 0x05;
pub(crate) const RET: u16 = 0x06;
pub(crate) const MISC: u16 = 0x07;
pub(crate) const W: u16 = 0x00;
pub(crate) const H: u16 = 0x08;
pub(crate) const B: u16 = 0x10;
pub(crate) const IMM: u16 = 0x00;
pub(crate) const ABS: u16 = 0x20;
pub(crate) const IND: u16 = 0x40;
pub(crate) const MEM: u16 = 0x60;
pub(crate) const LEN: u16 = 0x80;
pub(crate) const MSH: u16 = 0xa0;
pub(crate) const ADD: u16 = 0x00;
pub(crate) const SUB: u16 = 0x10;
pub(crate) const MUL: u16 = 0x20;
pub(crate) const DIV: u16 = 0x30;
pub(crate) const OR: u16 = 0x40;
pub(crate) const AND: u16 = 0x50;
pub(crate) const LSH: u16 = 0x60;
pub(crate) const RSH: u16 = 0x70;
pub(crate) const NEG: u16 = 0x80;
pub(crate) const MOD: u16 = 0x90;
pub(crate) const XOR: u16 = 0xa0;
pub(crate) const JA: u16 = 0x00;
pub(crate) const JEQ: u16 = 0x10;
pub(crate) const JGT: u16 = 0x20;
pub(crate) const JGE: u16 = 0x30;
pub(crate) const JSET: u16 = 0x40;
pub(crate) const K: u16 = 0x00;
pub(crate) const X: u16 = 0x08;
pub(crate) const A: u16 = 0x10;
pub(crate) const TAX: u16 = 0x00;
pub(crate) const TXA: u16 = 0x80;
/// Scratch memory words (`BPF_MEMWORDS`).
pub(crate) const MEMWORDS: u32 = 16;

#[inline]
pub(crate) fn class(code: u16) -> u16 {
    code & 0x07
}
#[inline]
pub(crate) fn size(code: u16) -> u16 {
    code & 0x18
}
#[inline]
pub(crate) fn mode(code: u16) -> u16 {
    code & 0xe0
}
#[inline]
pub(crate) fn op(code: u16) -> u16 {
    code & 0xf0
}
#[inline]
pub(crate) fn src(code: u16) -> u16 {
    code & 0x08
}

/// Why libpcap gave no program.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(
        "filter expressions need libpcap, which this host lacks ({0}); install it \
         (apt-get install libpcap0.8, dnf install libpcap) or use --filter-proto/--filter-host/--filter-port"
    )]
    NoLibpcap(String),
    /// libpcap's own message (`illegal port number 99999 > 65535`).
    #[error("{0}")]
    Rejected(String),
    #[error("the expression holds a NUL byte")]
    Nul,
}

/// The few libpcap entry points the compiler needs.
struct Libpcap {
    open_dead: OpenDead,
    compile: Compile,
    geterr: GetErr,
    freecode: FreeCode,
    close: Close,
}

type OpenDead = unsafe extern "C" fn(c_int, c_int) -> *mut c_void;
type Compile =
    unsafe extern "C" fn(*mut c_void, *mut BpfProgram, *const c_char, c_int, c_uint) -> c_int;
type GetErr = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type FreeCode = unsafe extern "C" fn(*mut BpfProgram);
type Close = unsafe extern "C" fn(*mut c_void);

/// `struct bpf_program`.
#[repr(C)]
struct BpfProgram {
    bf_len: c_uint,
    bf_insns: *mut Insn,
}

impl Libpcap {
    /// The process's libpcap, loaded once; the error says which sonames were tried.
    fn get() -> Result<&'static Libpcap, CompileError> {
        static LIB: OnceLock<Result<Libpcap, String>> = OnceLock::new();
        LIB.get_or_init(Self::load)
            .as_ref()
            .map_err(|e| CompileError::NoLibpcap(e.clone()))
    }

    fn load() -> Result<Libpcap, String> {
        let handle = SONAMES
            .iter()
            .find_map(|name| {
                let c = CString::new(*name).ok()?;
                // SAFETY: a NUL-terminated soname; the handle is kept for the process's life.
                let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
                (!h.is_null()).then_some(h)
            })
            .ok_or_else(|| format!("none of {} could be loaded", SONAMES.join(", ")))?;
        let sym = |name: &CStr| {
            // SAFETY: `handle` is a live library handle and `name` NUL-terminated.
            let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
            if p.is_null() {
                Err(format!("libpcap has no {}", name.to_string_lossy()))
            } else {
                Ok(p)
            }
        };
        // SAFETY: the symbols are libpcap's documented functions with these C signatures
        // (pcap(3PCAP)); a function pointer has the size and representation of a data pointer
        // on the platforms pathtrace runs on.
        unsafe {
            Ok(Libpcap {
                open_dead: std::mem::transmute::<*mut c_void, OpenDead>(sym(c"pcap_open_dead")?),
                compile: std::mem::transmute::<*mut c_void, Compile>(sym(c"pcap_compile")?),
                geterr: std::mem::transmute::<*mut c_void, GetErr>(sym(c"pcap_geterr")?),
                freecode: std::mem::transmute::<*mut c_void, FreeCode>(sym(c"pcap_freecode")?),
                close: std::mem::transmute::<*mut c_void, Close>(sym(c"pcap_close")?),
            })
        }
    }
}

/// libpcap's optimised program for `expr` on Ethernet frames, as `tcpdump -d` prints it.
pub fn compile(expr: &str) -> Result<Vec<Insn>, CompileError> {
    // libpcap's compiler keeps global state in older releases: one compile at a time.
    static LOCK: Mutex<()> = Mutex::new(());
    let lib = Libpcap::get()?;
    let text = CString::new(expr).map_err(|_| CompileError::Nul)?;
    let _one = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: libpcap's API used as documented: a dead handle for the link type, a program
    // compiled into `prog`, copied out, then freed, and the handle closed, on every path.
    unsafe {
        let pcap = (lib.open_dead)(DLT_EN10MB, 262_144);
        if pcap.is_null() {
            return Err(CompileError::Rejected("pcap_open_dead failed".into()));
        }
        let mut prog = BpfProgram {
            bf_len: 0,
            bf_insns: std::ptr::null_mut(),
        };
        // Netmask 0, as tcpdump reading a file passes it: `ip broadcast` then means
        // 255.255.255.255 and 0.0.0.0 only (no subnet's broadcast address).
        let rc = (lib.compile)(pcap, &mut prog, text.as_ptr(), 1, 0);
        let out = if rc != 0 {
            let msg = CStr::from_ptr((lib.geterr)(pcap)).to_string_lossy();
            Err(CompileError::Rejected(
                msg.trim_start_matches("can't parse filter expression: ")
                    .to_string(),
            ))
        } else {
            let insns = std::slice::from_raw_parts(prog.bf_insns, prog.bf_len as usize).to_vec();
            (lib.freecode)(&mut prog);
            Ok(insns)
        };
        (lib.close)(pcap);
        out
    }
}

/// Runs `prog` on `frame` (the captured bytes) of `wire_len` bytes on the wire: the value its
/// `ret` gives, which keeps the frame when not 0. libpcap's `bpf_filter` exactly, with a bound
/// on the instructions run.
pub fn run(prog: &[Insn], frame: &[u8], wire_len: u32) -> u32 {
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; MEMWORDS as usize];
    let mut pc = 0usize;
    for _ in 0..STEP_LIMIT {
        let Some(i) = prog.get(pc) else { return 0 };
        pc += 1;
        let k = i.k;
        match class(i.code) {
            RET => return if src_a(i.code) { a } else { k },
            LD => {
                a = match mode(i.code) {
                    IMM => k,
                    LEN => wire_len,
                    MEM => *mem.get(k as usize).unwrap_or(&0),
                    ABS => match load(frame, u64::from(k), size(i.code)) {
                        Some(v) => v,
                        None => return 0,
                    },
                    IND => match load(frame, u64::from(x) + u64::from(k), size(i.code)) {
                        Some(v) => v,
                        None => return 0,
                    },
                    _ => return 0,
                }
            }
            LDX => {
                x = match mode(i.code) {
                    IMM => k,
                    LEN => wire_len,
                    MEM => *mem.get(k as usize).unwrap_or(&0),
                    MSH => match frame.get(k as usize) {
                        Some(b) => u32::from(b & 0x0f) << 2,
                        None => return 0,
                    },
                    _ => return 0,
                }
            }
            ST | STX => {
                let v = if class(i.code) == ST { a } else { x };
                match mem.get_mut(k as usize) {
                    Some(m) => *m = v,
                    None => return 0,
                }
            }
            ALU => {
                let v = if src(i.code) == X { x } else { k };
                a = match op(i.code) {
                    ADD => a.wrapping_add(v),
                    SUB => a.wrapping_sub(v),
                    MUL => a.wrapping_mul(v),
                    DIV if v == 0 => return 0,
                    DIV => a / v,
                    MOD if v == 0 => return 0,
                    MOD => a % v,
                    AND => a & v,
                    OR => a | v,
                    XOR => a ^ v,
                    LSH => a.checked_shl(v).unwrap_or(0),
                    RSH => a.checked_shr(v).unwrap_or(0),
                    NEG => a.wrapping_neg(),
                    _ => return 0,
                }
            }
            JMP => {
                let v = if src(i.code) == X { x } else { k };
                let taken = match op(i.code) {
                    JA => {
                        pc = pc.wrapping_add(k as i32 as isize as usize);
                        continue;
                    }
                    JEQ => a == v,
                    JGT => a > v,
                    JGE => a >= v,
                    JSET => a & v != 0,
                    _ => return 0,
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            MISC => {
                if i.code & 0xf8 == TXA {
                    a = x;
                } else {
                    x = a;
                }
            }
            _ => return 0,
        }
    }
    0
}

#[inline]
fn src_a(code: u16) -> bool {
    code & 0x18 == A
}

/// The big-endian value of `size` bytes at `off`, or `None` past the captured bytes.
fn load(frame: &[u8], off: u64, size: u16) -> Option<u32> {
    let off = usize::try_from(off).ok()?;
    let n = match size {
        W => 4,
        H => 2,
        B => 1,
        _ => return None,
    };
    let bytes = frame.get(off..off.checked_add(n)?)?;
    Some(bytes.iter().fold(0u32, |v, b| v << 8 | u32::from(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Vec<u8> {
        // Ethernet, IPv4 10.0.0.5 -> 10.1.2.3, TCP 40000 -> 443 SYN.
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&(40u16).to_be_bytes());
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 5]);
        f[30..34].copy_from_slice(&[10, 1, 2, 3]);
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&443u16.to_be_bytes());
        f[46] = 0x50;
        f[47] = 0x02;
        f
    }

    #[test]
    fn libpcap_programs_judge_a_frame_as_tcpdump_does() {
        let f = frame();
        let len = f.len() as u32;
        for (expr, keeps) in [
            ("tcp port 443 and host 10.0.0.5", true),
            ("udp", false),
            ("tcp[tcpflags] & tcp-syn != 0", true),
            ("tcp[tcpflags] & tcp-ack != 0", false),
            ("src host 10.1.2.3", false),
            ("net 10.0.0.0/8 and not port 53", true),
            ("len > 100", false),
            ("ip6 protochain 6", false),
            ("", true),
        ] {
            let prog = compile(expr).expect("libpcap compiles it");
            assert_eq!(run(&prog, &f, len) != 0, keeps, "{expr}");
        }
        // Cut inside the TCP header: the port load fails, as in libpcap.
        let prog = compile("tcp dst port 443").unwrap();
        assert_eq!(run(&prog, &f[..37], len), 0);
    }

    #[test]
    fn libpcap_says_why_it_refuses() {
        let e = compile("port 99999").unwrap_err().to_string();
        assert!(e.contains("99999"), "{e}");
        assert!(matches!(compile("tcp and"), Err(CompileError::Rejected(_))));
    }
}
