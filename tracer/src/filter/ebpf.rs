//! Classic BPF to eBPF: libpcap's program for an expression becomes the body of the kernel
//! object's filter subprogram (`pathtrace_filter_expr`, see `tracer-ebpf`), written into the
//! object before it is loaded ([`patch_object`]).
//!
//! The subprogram takes the socket buffer in R1 and returns in R0 what the classic program's
//! `ret` gives: not 0 keeps the packet. A classic load reads the linear data in place when the
//! bytes are there and through `bpf_skb_load_bytes` otherwise; a load past the packet's end,
//! and a division by zero, return 0, as in libpcap's `bpf_filter`. Backward jumps (libpcap
//! makes them only for `protochain`) are refused: the verifier cannot bound such a loop.
//!
//! Registers: A in W6, X in W7 (32-bit operations keep their upper halves zero), the linear
//! data's start and end in R8 and R9, the context spilled at FP-8, FP-16 the buffer
//! `bpf_skb_load_bytes` fills, and the scratch words M[] at FP-80..FP-20.

use super::cbpf::{self, Insn};

/// The subprogram's symbol name ends so (Rust mangles the rest).
pub const STUB_SYMBOL: &str = "pathtrace_filter_expr";

/// Why a classic program has no eBPF form here.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    #[error(
        "the kernel side cannot evaluate this expression: it loops (instruction {0} jumps back; \
         libpcap does that for `protochain`; use `ip6 proto N` or `ip proto N`)"
    )]
    BackwardJump(usize),
    #[error("the kernel side cannot evaluate this expression: instruction {at} (code {code:#06x}) is not classic BPF it knows")]
    Unknown { at: usize, code: u16 },
    #[error(
        "the kernel side cannot evaluate this expression: instruction {0} reads the socket's packet \
         metadata (`inbound`, `outbound`), which a tc hook does not hold as a socket does; \
         select the direction with src/dst instead"
    )]
    Metadata(usize),
    #[error("the kernel side cannot evaluate this expression: instruction {0} jumps past the program's end")]
    OutOfRange(usize),
    #[error(
        "the expression is too large for the kernel side: {need} eBPF instructions, room for {room}; \
         split it, or filter less in the kernel"
    )]
    TooLarge { need: usize, room: usize },
}

/// Why the kernel object could not take the filter.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("the kernel object has no filter subprogram ({STUB_SYMBOL}): rebuild pathtrace")]
    NoStub,
    #[error("the kernel object is not an ELF file pathtrace can read: {0}")]
    Elf(&'static str),
    #[error(transparent)]
    Translate(#[from] TranslateError),
}

/// One eBPF instruction, as the kernel reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EInsn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl EInsn {
    fn bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.src << 4) | (self.dst & 0x0f);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

// eBPF opcodes (linux/bpf.h).
const BPF_LDX: u8 = 0x01;
const BPF_ST: u8 = 0x02;
const BPF_STX: u8 = 0x03;
const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_JMP32: u8 = 0x06;
const BPF_ALU64: u8 = 0x07;
const BPF_MEM: u8 = 0x60;
const BPF_W: u8 = 0x00;
const BPF_H: u8 = 0x08;
const BPF_B: u8 = 0x10;
const BPF_DW: u8 = 0x18;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_ADD: u8 = 0x00;
const BPF_RSH: u8 = 0x70;
const BPF_MOV: u8 = 0xb0;
const BPF_END: u8 = 0xd0;
const BPF_TO_BE: u8 = 0x08;
const BPF_JA: u8 = 0x00;
const BPF_JEQ: u8 = 0x10;
const BPF_JGT: u8 = 0x20;
const BPF_JNE: u8 = 0x50;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
/// `BPF_FUNC_skb_load_bytes`.
const SKB_LOAD_BYTES: i32 = 26;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const RA: u8 = 6;
const RX: u8 = 7;
const RDATA: u8 = 8;
const REND: u8 = 9;
const FP: u8 = 10;

/// `struct __sk_buff` fields.
const SKB_LEN: i16 = 0;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
/// Stack: the context, the load buffer, then M[0] (M[i] at `MEM_BASE + 4 * i`) deepest, so that a
/// program without scratch words has a 16-byte frame (the verifier counts what a subprogram
/// touches, and the kernels before 6.7 round each frame of a call chain up to 32 bytes against
/// the chain's 512).
const CTX_SLOT: i16 = -8;
const BUF_SLOT: i16 = -16;
const MEM_BASE: i16 = -80;
/// Classic loads from here up are Linux's ancillary data (`SKF_AD_OFF`, linux/filter.h).
const SKF_AD_OFF: u32 = 0xffff_f000;
/// Direct reads go up to this offset (the verifier's bound on packet offsets is 0xffff, and an
/// instruction's offset field is signed 16 bits).
const DIRECT_MAX: u32 = 0x7fff;

/// A jump's target before the layout is known.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// The first eBPF instruction of classic instruction N.
    Classic(usize),
    /// A label of this translation.
    Label(usize),
}

/// The eBPF body for classic `prog`: its instructions, with all jumps resolved.
pub fn translate(prog: &[Insn]) -> Result<Vec<EInsn>, TranslateError> {
    let mut t = Translator::default();
    t.prologue(prog.iter().any(uses_mem));
    for (at, i) in prog.iter().enumerate() {
        t.starts.push(t.code.len());
        t.insn(at, *i, prog.len())?;
    }
    t.starts.push(t.code.len());
    if let Some(reject) = t.reject {
        t.place(reject);
        t.emit(mov32_imm(R0, 0));
        t.emit(exit());
    }
    t.resolve()
}

/// Whether the instruction touches the scratch words (whose stack slots are then zeroed first:
/// the verifier refuses reads of stack never written).
fn uses_mem(i: &Insn) -> bool {
    use cbpf::{class, mode, LD, LDX, MEM, ST, STX};
    matches!(class(i.code), ST | STX) || (matches!(class(i.code), LD | LDX) && mode(i.code) == MEM)
}

#[derive(Default)]
struct Translator {
    code: Vec<EInsn>,
    /// For jumps: (instruction index, target).
    fixups: Vec<(usize, Target)>,
    labels: Vec<Option<usize>>,
    /// First eBPF instruction of each classic one, and one past the end.
    starts: Vec<usize>,
    /// The label every failed load and division by zero jumps to (`ret 0`).
    reject: Option<usize>,
}

impl Translator {
    fn emit(&mut self, i: EInsn) {
        self.code.push(i);
    }

    fn new_label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn place(&mut self, label: usize) {
        self.labels[label] = Some(self.code.len());
    }

    fn jump(&mut self, i: EInsn, to: Target) {
        self.fixups.push((self.code.len(), to));
        self.emit(i);
    }

    /// A jump to `to` that is always taken but conditional (on a register just zeroed): the
    /// code after it stays reachable for the verifier's check of the program's shape, which
    /// refuses an instruction no path reaches; it is never explored, and removed as dead code.
    fn always(&mut self, to: Target) {
        self.emit(mov32_imm(R2, 0));
        self.jump(jmp_imm(BPF_JEQ, R2, 0), to);
    }

    fn reject_label(&mut self) -> Target {
        let l = *self.reject.get_or_insert_with(|| {
            self.labels.push(None);
            self.labels.len() - 1
        });
        Target::Label(l)
    }

    fn prologue(&mut self, zero_mem: bool) {
        self.emit(stx(BPF_DW, FP, R1, CTX_SLOT));
        self.emit(ldx(BPF_W, RDATA, R1, SKB_DATA));
        self.emit(ldx(BPF_W, REND, R1, SKB_DATA_END));
        self.emit(mov32_imm(RA, 0));
        self.emit(mov32_imm(RX, 0));
        if zero_mem {
            for w in 0..cbpf::MEMWORDS as i16 / 2 {
                self.emit(st_imm(BPF_DW, FP, MEM_BASE + 8 * w, 0));
            }
        }
    }

    fn insn(&mut self, at: usize, i: Insn, len: usize) -> Result<(), TranslateError> {
        use cbpf::*;
        let unknown = TranslateError::Unknown { at, code: i.code };
        let target = |off: u32| -> Result<Target, TranslateError> {
            let to = at as u64 + 1 + u64::from(off);
            if to >= len as u64 {
                return Err(TranslateError::OutOfRange(at));
            }
            Ok(Target::Classic(to as usize))
        };
        match class(i.code) {
            RET => {
                match i.code & 0x18 {
                    A => self.emit(mov32_reg(R0, RA)),
                    K => self.emit(mov32_imm(R0, i.k as i32)),
                    _ => return Err(unknown),
                }
                self.emit(exit());
            }
            LD | LDX => {
                let dst = if class(i.code) == LD { RA } else { RX };
                match mode(i.code) {
                    IMM => self.emit(mov32_imm(dst, i.k as i32)),
                    LEN => {
                        self.emit(ldx(BPF_DW, R1, FP, CTX_SLOT));
                        self.emit(ldx(BPF_W, dst, R1, SKB_LEN));
                    }
                    MEM => self.emit(ldx(BPF_W, dst, FP, mem_slot(i.k).ok_or(unknown)?)),
                    // Linux's ancillary loads (`inbound`, `outbound`): socket metadata, which a
                    // tc hook holds otherwise (a packet leaving has no PACKET_OUTGOING there).
                    ABS if dst == RA && i.k >= SKF_AD_OFF => {
                        return Err(TranslateError::Metadata(at))
                    }
                    ABS if dst == RA => {
                        self.load(RA, None, i.k, width(size(i.code)).ok_or(unknown)?)
                    }
                    IND if dst == RA => {
                        self.load(RA, Some(RX), i.k, width(size(i.code)).ok_or(unknown)?)
                    }
                    MSH if dst == RX => {
                        self.load(R5, None, i.k, 1);
                        self.emit(mov32_reg(RX, R5));
                        self.emit(alu32_imm(AND as u8, RX, 0x0f));
                        self.emit(alu32_imm(LSH as u8, RX, 2));
                    }
                    _ => return Err(unknown),
                }
            }
            ST | STX => {
                let src = if class(i.code) == ST { RA } else { RX };
                self.emit(stx(BPF_W, FP, src, mem_slot(i.k).ok_or(unknown)?));
            }
            ALU => self.alu(at, i)?,
            JMP => {
                let op = op(i.code);
                if op == JA {
                    if i.k as i32 >= 0 {
                        let to = target(i.k)?;
                        self.jump(ja(), to);
                    } else {
                        return Err(TranslateError::BackwardJump(at));
                    }
                    return Ok(());
                }
                let (t, f) = (target(u32::from(i.jt))?, target(u32::from(i.jf))?);
                if i.jt == i.jf {
                    self.jump(ja(), t);
                    return Ok(());
                }
                let (code, src) = match (op, src(i.code)) {
                    (JEQ | JGT | JGE | JSET, X) => (BPF_JMP32 | op as u8 | BPF_X, RX),
                    (JEQ | JGT | JGE | JSET, _) => (BPF_JMP32 | op as u8 | BPF_K, 0),
                    _ => return Err(unknown),
                };
                let imm = if src == 0 { i.k as i32 } else { 0 };
                self.jump(insn(code, RA, src, 0, imm), t);
                if i.jf != 0 {
                    self.jump(ja(), f);
                }
            }
            MISC => match i.code & 0xf8 {
                TXA => self.emit(mov32_reg(RA, RX)),
                TAX => self.emit(mov32_reg(RX, RA)),
                _ => return Err(unknown),
            },
            _ => return Err(unknown),
        }
        Ok(())
    }

    fn alu(&mut self, at: usize, i: Insn) -> Result<(), TranslateError> {
        use cbpf::*;
        let unknown = TranslateError::Unknown { at, code: i.code };
        let op = op(i.code);
        if op == NEG {
            self.emit(insn(BPF_ALU | NEG as u8, RA, 0, 0, 0));
            return Ok(());
        }
        if !matches!(op, ADD | SUB | MUL | DIV | OR | AND | LSH | RSH | MOD | XOR) {
            return Err(unknown);
        }
        if src(i.code) == K {
            match op {
                // libpcap's validator refuses these; its interpreter would give 0.
                DIV | MOD if i.k == 0 => {
                    let r = self.reject_label();
                    self.always(r);
                }
                LSH | RSH if i.k >= 32 => self.emit(mov32_imm(RA, 0)),
                _ => self.emit(alu32_imm(op as u8, RA, i.k as i32)),
            }
            return Ok(());
        }
        match op {
            DIV | MOD => {
                let r = self.reject_label();
                self.jump(jmp32_imm(BPF_JEQ, RX, 0), r);
            }
            LSH | RSH => {
                // A shift by 32 or more gives 0, as libpcap's interpreter says.
                let (big, done) = (self.new_label(), self.new_label());
                self.jump(jmp32_imm(BPF_JGT, RX, 31), Target::Label(big));
                self.emit(alu32_reg(op as u8, RA, RX));
                self.jump(ja(), Target::Label(done));
                self.place(big);
                self.emit(mov32_imm(RA, 0));
                self.place(done);
                return Ok(());
            }
            _ => {}
        }
        self.emit(alu32_reg(op as u8, RA, RX));
        Ok(())
    }

    /// `dst` = the big-endian `bytes`-byte value at `k` (plus X when `index`), or `ret 0` when
    /// the packet has no such bytes.
    fn load(&mut self, dst: u8, index: Option<u8>, k: u32, bytes: u8) {
        let size = match bytes {
            4 => BPF_W,
            2 => BPF_H,
            _ => BPF_B,
        };
        let reject = self.reject_label();
        let (slow, conv) = (self.new_label(), self.new_label());
        let n = u32::from(bytes);
        match index {
            None if k <= DIRECT_MAX - n => {
                // R2 = data + k + n; in place when that is within the linear data.
                self.emit(mov64_reg(R2, RDATA));
                self.emit(alu64_imm(BPF_ADD, R2, (k + n) as i32));
                self.jump(jmp_reg(BPF_JGT, R2, REND), Target::Label(slow));
                self.emit(ldx(size, dst, RDATA, k as i16));
                self.jump(ja(), Target::Label(conv));
                self.place(slow);
                self.emit(mov32_imm(R2, k as i32));
            }
            None => {
                // Only the helper reaches this far; `k` past 4 GiB is past every packet.
                if k > i32::MAX as u32 {
                    self.always(reject);
                    return;
                }
                self.place(slow);
                self.emit(mov32_imm(R2, k as i32));
            }
            Some(x) => {
                if k > i32::MAX as u32 {
                    self.always(reject);
                    return;
                }
                // R2 = X + k (64-bit: no wrap); in place when below DIRECT_MAX and within the
                // linear data.
                self.emit(mov64_reg(R2, x));
                self.emit(alu64_imm(BPF_ADD, R2, k as i32));
                self.jump(
                    jmp_imm(BPF_JGT, R2, (DIRECT_MAX - n) as i32),
                    Target::Label(slow),
                );
                self.emit(mov64_reg(R3, RDATA));
                self.emit(alu64_reg(BPF_ADD, R3, R2));
                self.emit(mov64_reg(R4, R3));
                self.emit(alu64_imm(BPF_ADD, R4, n as i32));
                self.jump(jmp_reg(BPF_JGT, R4, REND), Target::Label(slow));
                self.emit(ldx(size, dst, R3, 0));
                self.jump(ja(), Target::Label(conv));
                self.place(slow);
                // An offset past 4 GiB is past every packet (the helper takes 32 bits).
                self.emit(mov64_reg(R3, R2));
                self.emit(alu64_imm(BPF_RSH, R3, 32));
                self.jump(jmp_imm(BPF_JNE, R3, 0), reject);
            }
        }
        // The helper: R1 ctx, R2 offset, R3 buffer, R4 length.
        self.emit(ldx(BPF_DW, R1, FP, CTX_SLOT));
        self.emit(mov64_reg(R3, FP));
        self.emit(alu64_imm(BPF_ADD, R3, i32::from(BUF_SLOT)));
        self.emit(mov32_imm(R4, i32::from(bytes)));
        self.emit(insn(BPF_JMP | BPF_CALL, 0, 0, 0, SKB_LOAD_BYTES));
        self.jump(jmp_imm(BPF_JNE, R0, 0), reject);
        self.emit(ldx(size, dst, FP, BUF_SLOT));
        self.place(conv);
        if bytes > 1 {
            self.emit(insn(
                BPF_ALU | BPF_END | BPF_TO_BE,
                dst,
                0,
                0,
                i32::from(bytes) * 8,
            ));
        }
    }

    fn resolve(mut self) -> Result<Vec<EInsn>, TranslateError> {
        for (at, to) in std::mem::take(&mut self.fixups) {
            let dest = match to {
                Target::Classic(n) => self.starts[n],
                Target::Label(l) => self.labels[l].expect("every label is placed"),
            };
            let off = dest as i64 - at as i64 - 1;
            self.code[at].off = i16::try_from(off).map_err(|_| TranslateError::TooLarge {
                need: self.code.len(),
                room: i16::MAX as usize,
            })?;
        }
        Ok(self.code)
    }
}

fn width(size: u16) -> Option<u8> {
    match size {
        cbpf::W => Some(4),
        cbpf::H => Some(2),
        cbpf::B => Some(1),
        _ => None,
    }
}

fn mem_slot(k: u32) -> Option<i16> {
    (k < cbpf::MEMWORDS).then(|| MEM_BASE + 4 * k as i16)
}

/// One instruction from its fields; the helpers below name the shapes the translation uses.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> EInsn {
    EInsn {
        code,
        dst,
        src,
        off,
        imm,
    }
}

fn ldx(size: u8, dst: u8, src: u8, off: i16) -> EInsn {
    insn(BPF_LDX | BPF_MEM | size, dst, src, off, 0)
}

fn stx(size: u8, dst: u8, src: u8, off: i16) -> EInsn {
    insn(BPF_STX | BPF_MEM | size, dst, src, off, 0)
}

fn st_imm(size: u8, dst: u8, off: i16, imm: i32) -> EInsn {
    insn(BPF_ST | BPF_MEM | size, dst, 0, off, imm)
}

fn mov32_imm(dst: u8, imm: i32) -> EInsn {
    alu32_imm(BPF_MOV, dst, imm)
}

fn mov32_reg(dst: u8, src: u8) -> EInsn {
    alu32_reg(BPF_MOV, dst, src)
}

fn mov64_reg(dst: u8, src: u8) -> EInsn {
    alu64_reg(BPF_MOV, dst, src)
}

fn alu32_imm(op: u8, dst: u8, imm: i32) -> EInsn {
    insn(BPF_ALU | op | BPF_K, dst, 0, 0, imm)
}

fn alu32_reg(op: u8, dst: u8, src: u8) -> EInsn {
    insn(BPF_ALU | op | BPF_X, dst, src, 0, 0)
}

fn alu64_imm(op: u8, dst: u8, imm: i32) -> EInsn {
    insn(BPF_ALU64 | op | BPF_K, dst, 0, 0, imm)
}

fn alu64_reg(op: u8, dst: u8, src: u8) -> EInsn {
    insn(BPF_ALU64 | op | BPF_X, dst, src, 0, 0)
}

fn jmp_imm(op: u8, dst: u8, imm: i32) -> EInsn {
    insn(BPF_JMP | op | BPF_K, dst, 0, 0, imm)
}

fn jmp32_imm(op: u8, dst: u8, imm: i32) -> EInsn {
    insn(BPF_JMP32 | op | BPF_K, dst, 0, 0, imm)
}

fn jmp_reg(op: u8, dst: u8, src: u8) -> EInsn {
    insn(BPF_JMP | op | BPF_X, dst, src, 0, 0)
}

fn ja() -> EInsn {
    insn(BPF_JMP | BPF_JA, 0, 0, 0, 0)
}

fn exit() -> EInsn {
    insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
}

/// The first instruction of `code` that no path from its start reaches, if any: the verifier
/// refuses a program with one (`unreachable insn`), whatever the values. Jumps are followed as
/// the verifier's shape check follows them (both edges of a conditional, only the target of
/// `ja`, nothing after `exit`).
pub fn first_unreachable(code: &[EInsn]) -> Option<usize> {
    let mut seen = vec![false; code.len()];
    let mut todo = vec![0usize];
    while let Some(at) = todo.pop() {
        let Some(i) = code.get(at) else { continue };
        if std::mem::replace(&mut seen[at], true) {
            continue;
        }
        let class = i.code & 0x07;
        let op = i.code & 0xf0;
        let to = (at as i64 + 1 + i64::from(i.off)) as usize;
        match (class == BPF_JMP || class == BPF_JMP32, op) {
            (true, BPF_EXIT) => {}
            (true, BPF_CALL) => todo.push(at + 1),
            (true, BPF_JA) if class == BPF_JMP => todo.push(to),
            (true, _) => todo.extend([at + 1, to]),
            // The wide immediate load takes two slots; the translation makes none.
            _ => todo.push(at + 1),
        }
    }
    seen.iter().position(|s| !s)
}

/// `body` laid out to fill a subprogram of exactly `room` instructions: a jump the verifier
/// knows is always taken skips the padding, so every instruction is reachable (the verifier
/// refuses unreachable ones) and the padding is never explored (and is removed as dead code
/// after verification).
pub fn fill(body: &[EInsn], room: usize) -> Result<Vec<EInsn>, TranslateError> {
    let need = body.len() + 2;
    if need > room {
        return Err(TranslateError::TooLarge { need, room });
    }
    let pad = room - need;
    let mut out = Vec::with_capacity(room);
    out.push(mov32_imm(R0, 0));
    let mut skip = jmp_imm(BPF_JEQ, R0, 0);
    skip.off = i16::try_from(pad).map_err(|_| TranslateError::TooLarge { need, room })?;
    out.push(skip);
    if pad > 0 {
        out.extend(std::iter::repeat_n(mov32_imm(R0, 0), pad - 1));
        out.push(exit());
    }
    out.extend_from_slice(body);
    Ok(out)
}

/// Writes classic `prog` as the body of the object's filter subprogram, in place in `object`
/// (an ELF relocatable, as the loader reads it): the object's layout, symbols and relocations
/// are unchanged (the subprogram has none). Returns the eBPF instructions written.
pub fn patch_object(object: &mut [u8], prog: &[Insn]) -> Result<usize, PatchError> {
    let (offset, size) = elf::function(object, STUB_SYMBOL)?;
    let room = size / 8;
    let body = translate(prog)?;
    let filled = fill(&body, room)?;
    let bytes = object
        .get_mut(offset..offset + room * 8)
        .ok_or(PatchError::Elf("the subprogram lies past the file's end"))?;
    for (chunk, insn) in bytes.chunks_exact_mut(8).zip(&filled) {
        chunk.copy_from_slice(&insn.bytes());
    }
    Ok(body.len())
}

/// Just enough ELF64 (little-endian) to find a function's bytes.
mod elf {
    use super::PatchError;

    fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }
    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }
    fn u64_at(b: &[u8], at: usize) -> Option<usize> {
        usize::try_from(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)).ok()
    }

    /// The file offset and size of the function whose symbol name ends with `suffix`.
    pub(super) fn function(b: &[u8], suffix: &str) -> Result<(usize, usize), PatchError> {
        let bad = PatchError::Elf;
        if b.get(..4) != Some(b"\x7fELF".as_slice()) || b.get(4) != Some(&2) || b.get(5) != Some(&1)
        {
            return Err(bad("not a little-endian ELF64 file"));
        }
        let shoff = u64_at(b, 0x28).ok_or(bad("truncated header"))?;
        let shentsize = usize::from(u16_at(b, 0x3a).ok_or(bad("truncated header"))?);
        let shnum = usize::from(u16_at(b, 0x3c).ok_or(bad("truncated header"))?);
        let section = |i: usize| -> Option<(u32, usize, usize, u32)> {
            let s = shoff.checked_add(i.checked_mul(shentsize)?)?;
            // (type, file offset, size, link)
            Some((
                u32_at(b, s + 4)?,
                u64_at(b, s + 0x18)?,
                u64_at(b, s + 0x20)?,
                u32_at(b, s + 0x28)?,
            ))
        };
        const SHT_SYMTAB: u32 = 2;
        let (_, symoff, symsize, strndx) = (0..shnum)
            .filter_map(section)
            .find(|s| s.0 == SHT_SYMTAB)
            .ok_or(bad("no symbol table"))?;
        let (_, stroff, strsize, _) = section(strndx as usize).ok_or(bad("no string table"))?;
        let strtab = b
            .get(stroff..stroff + strsize)
            .ok_or(bad("string table past the end"))?;
        for sym in (symoff..symoff + symsize).step_by(24) {
            let name_at = u32_at(b, sym).ok_or(bad("symbol past the end"))? as usize;
            let name = strtab.get(name_at..).unwrap_or_default();
            let name = &name[..name.iter().position(|c| *c == 0).unwrap_or(name.len())];
            if !name.ends_with(suffix.as_bytes()) {
                continue;
            }
            let shndx = usize::from(u16_at(b, sym + 6).ok_or(bad("symbol past the end"))?);
            let value = u64_at(b, sym + 8).ok_or(bad("symbol past the end"))?;
            let size = u64_at(b, sym + 16).ok_or(bad("symbol past the end"))?;
            let (_, secoff, secsize, _) = section(shndx).ok_or(bad("symbol in no section"))?;
            if value + size > secsize || size % 8 != 0 || size == 0 {
                return Err(bad("the filter subprogram's bounds are not its section's"));
            }
            return Ok((secoff + value, size));
        }
        Err(PatchError::NoStub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_instruction_is_out_of_every_path() {
        // A load past 2 GiB fails at once, and so does a division by 0: the code after either is
        // never run, but it must stay reachable, or the verifier refuses the whole program.
        let ld = |k| Insn {
            code: 0x28,
            jt: 0,
            jf: 0,
            k,
        };
        let prog = [
            ld(0x8000_0000),
            Insn {
                code: 0x15,
                jt: 0,
                jf: 2,
                k: 7,
            },
            Insn {
                code: 0x34,
                jt: 0,
                jf: 0,
                k: 0,
            },
            Insn {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 1,
            },
            Insn {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0,
            },
        ];
        let body = translate(&prog).unwrap();
        assert_eq!(first_unreachable(&body), None, "{body:#?}");
        assert_eq!(first_unreachable(&fill(&body, 4000).unwrap()), None);
        let mut cut = body.clone();
        cut.insert(0, exit());
        assert_eq!(first_unreachable(&cut), Some(1));
        for expr in [
            "tcp port 443 and host 10.0.0.5",
            "ip6 and udp",
            "tcp[tcpflags] & tcp-syn != 0",
        ] {
            let body = translate(&cbpf::compile(expr).unwrap()).unwrap();
            assert_eq!(first_unreachable(&body), None, "{expr}");
        }
    }

    #[test]
    fn socket_metadata_is_refused_in_so_many_words() {
        for expr in ["inbound", "outbound", "tcp and inbound"] {
            let err = translate(&cbpf::compile(expr).unwrap()).unwrap_err();
            assert!(matches!(err, TranslateError::Metadata(_)), "{expr}: {err}");
            assert!(err.to_string().contains("`inbound`"), "{err}");
        }
    }

    #[test]
    fn every_jump_lands_inside_the_body_and_the_padding_is_skipped() {
        let prog = cbpf::compile("tcp port 443 and host 10.0.0.5 or udp[8:2] > 100").unwrap();
        let body = translate(&prog).unwrap();
        for (at, i) in body.iter().enumerate() {
            let class = i.code & 0x07;
            if (class == BPF_JMP || class == BPF_JMP32)
                && i.code & 0xf0 != BPF_CALL
                && i.code & 0xf0 != BPF_EXIT
            {
                let to = at as i64 + 1 + i64::from(i.off);
                assert!(
                    (0..body.len() as i64).contains(&to),
                    "insn {at} jumps to {to}"
                );
            }
        }
        let filled = fill(&body, 4000).unwrap();
        assert_eq!(filled.len(), 4000);
        assert_eq!(usize::from(filled[1].off as u16) + 2, 4000 - body.len());
        assert_eq!(&filled[4000 - body.len()..], &body[..]);
        assert!(matches!(
            fill(&body, body.len() + 1),
            Err(TranslateError::TooLarge { .. })
        ));
    }

    #[test]
    fn protochain_is_refused_not_widened() {
        let prog = cbpf::compile("ip6 protochain 6").unwrap();
        assert!(matches!(
            translate(&prog),
            Err(TranslateError::BackwardJump(_))
        ));
    }
}
