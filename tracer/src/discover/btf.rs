//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find where
//! `struct sk_buff` keeps the fields the drop program reads, and the names of
//! `enum skb_drop_reason`.
//!
//! It is bounded and never panics on malformed input: every read is checked against the blob,
//! type chains and anonymous-member nesting are followed to a fixed depth, and an unknown type
//! kind (whose record size we cannot know) ends parsing with an error rather than a guess.

use std::{collections::BTreeMap, path::Path};

/// Where the running kernel publishes its BTF.
pub(crate) const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;
/// More types than any kernel has (vmlinux holds ~150 000); a bound for malformed input.
const MAX_TYPES: usize = 1 << 22;
/// How deep typedef/const chains and anonymous struct/union members are followed.
const MAX_DEPTH: usize = 16;
/// Members looked at, at most, in one search (nested anonymous members included).
const MAX_MEMBER_VISITS: usize = 1 << 20;

const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// Prefix the kernel puts on every drop reason but the first two.
const REASON_PREFIX: &str = "SKB_DROP_REASON_";

#[derive(Debug, thiserror::Error)]
pub(crate) enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not BTF data (magic {0:#06x})")]
    Magic(u16),
    #[error("malformed BTF header: {0}")]
    Header(&'static str),
    #[error("malformed BTF type #{id} at byte {at}: {what}")]
    Type {
        id: usize,
        at: usize,
        what: &'static str,
    },
    #[error("{0} not found in the kernel's BTF")]
    NotFound(&'static str),
    #[error("struct sk_buff field {field}: {what}")]
    Field {
        field: &'static str,
        what: &'static str,
    },
}

/// Parsed BTF: the raw blob plus an index of where each type record starts.
pub(crate) struct Btf {
    data: Vec<u8>,
    big_endian: bool,
    str_start: usize,
    str_end: usize,
    /// Byte offset of type `id`'s record at index `id - 1` (type 0 is `void`).
    types: Vec<usize>,
}

/// One type record's fixed part.
#[derive(Clone, Copy, Debug)]
struct Rec {
    name_off: u32,
    kind: u8,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    /// Byte offset of the kind-specific data that follows the 12-byte record.
    body: usize,
}

/// A member found inside a struct: where it starts and its type.
#[derive(Clone, Copy, Debug)]
struct Member {
    bit_offset: u64,
    bitfield: bool,
    type_id: u32,
}

/// Byte offsets of the `struct sk_buff` fields the drop program reads (see
/// `tracer_common::config::SkbOffsets`); their sizes were checked against what it assumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SkbLayout {
    pub head: u32,
    pub data: u32,
    pub len: u32,
    pub data_len: u32,
    pub network_header: u32,
    pub protocol: u32,
}

/// `enum skb_drop_reason`: value to name, without the `SKB_DROP_REASON_` prefix
/// (`NETFILTER_DROP`); `SKB_NOT_DROPPED_YET` and `SKB_CONSUMED` keep their names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DropReasons {
    pub names: BTreeMap<u32, String>,
    /// The value of `SKB_CONSUMED` (a normal free, not a drop), when the kernel has it.
    pub consumed: Option<u32>,
}

impl Btf {
    /// The running kernel's BTF.
    pub(crate) fn vmlinux() -> Result<Self, BtfError> {
        Self::from_file(VMLINUX)
    }

    pub(crate) fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data)
    }

    /// Checks the header and indexes every type record.
    pub(crate) fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let magic_le = data
            .get(..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or(BtfError::Header("shorter than its magic"))?;
        let big_endian = match magic_le {
            MAGIC => false,
            m if m.swap_bytes() == MAGIC => true,
            m => return Err(BtfError::Magic(m)),
        };
        let mut btf = Self {
            data,
            big_endian,
            str_start: 0,
            str_end: 0,
            types: Vec::new(),
        };
        let field = |i: usize| btf.u32_at(i).ok_or(BtfError::Header("truncated"));
        let hdr_len = field(4)? as usize;
        if hdr_len < HEADER_MIN || hdr_len > btf.data.len() {
            return Err(BtfError::Header("bad header length"));
        }
        let section = |off: usize, len: usize| -> Result<(usize, usize), BtfError> {
            let start = hdr_len
                .checked_add(field(off)? as usize)
                .ok_or(BtfError::Header("section offset overflows"))?;
            let end = start
                .checked_add(field(len)? as usize)
                .ok_or(BtfError::Header("section length overflows"))?;
            if end > btf.data.len() {
                return Err(BtfError::Header("section past the end of the data"));
            }
            Ok((start, end))
        };
        let (type_start, type_end) = section(8, 12)?;
        let (str_start, str_end) = section(16, 20)?;
        btf.str_start = str_start;
        btf.str_end = str_end;
        btf.types = btf.index_types(type_start, type_end)?;
        Ok(btf)
    }

    fn index_types(&self, start: usize, end: usize) -> Result<Vec<usize>, BtfError> {
        let mut types = Vec::new();
        let mut pos = start;
        while pos < end {
            let id = types.len() + 1;
            let bad = |what| BtfError::Type { id, at: pos, what };
            if types.len() >= MAX_TYPES {
                return Err(bad("too many types"));
            }
            let rec = self.rec_at(pos).ok_or(bad("record truncated"))?;
            let extra = match rec.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => rec.vlen * 12,
                KIND_ENUM | KIND_FUNC_PROTO => rec.vlen * 8,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                _ => return Err(bad("unknown kind")),
            };
            let next = rec.body + extra;
            if next > end {
                return Err(bad("record runs past the type section"));
            }
            types.push(pos);
            pos = next;
        }
        Ok(types)
    }

    #[cfg(test)]
    /// How many types (not counting `void`).
    pub(crate) fn type_count(&self) -> usize {
        self.types.len()
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.data.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn rec_at(&self, at: usize) -> Option<Rec> {
        let info = self.u32_at(at.checked_add(4)?)?;
        Some(Rec {
            name_off: self.u32_at(at)?,
            kind: ((info >> 24) & 0x1f) as u8,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 != 0,
            size_or_type: self.u32_at(at + 8)?,
            body: at + 12,
        })
    }

    fn rec(&self, id: u32) -> Option<Rec> {
        let at = *self.types.get((id as usize).checked_sub(1)?)?;
        self.rec_at(at)
    }

    /// The NUL-terminated string at `off` in the string section (empty when out of range).
    fn str_at(&self, off: u32) -> &[u8] {
        let Some(start) = self.str_start.checked_add(off as usize) else {
            return &[];
        };
        let Some(rest) = self.data.get(start..self.str_end) else {
            return &[];
        };
        let len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..len]
    }

    /// The first type of one of `kinds` named `name` that is not empty (skips forward
    /// declarations' twins with no members).
    fn find(&self, kinds: &[u8], name: &str) -> Option<(u32, Rec)> {
        (1..=self.types.len() as u32).find_map(|id| {
            let rec = self.rec(id)?;
            (kinds.contains(&rec.kind)
                && rec.vlen > 0
                && self.str_at(rec.name_off) == name.as_bytes())
            .then_some((id, rec))
        })
    }

    /// Follows typedef / const / volatile / restrict / type-tag links to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<Rec> {
        for _ in 0..MAX_DEPTH {
            let rec = self.rec(id)?;
            match rec.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = rec.size_or_type;
                }
                _ => return Some(rec),
            }
        }
        None
    }

    /// Searches a struct or union for a member by name, descending into anonymous struct and
    /// union members (where recent kernels keep `network_header` and friends). Offsets add up.
    /// `budget` bounds the work on malformed input, where anonymous members could nest the same
    /// large type again and again.
    fn member(&self, outer: Rec, name: &str, depth: usize, budget: &mut usize) -> Option<Member> {
        if depth >= MAX_DEPTH || !matches!(outer.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for i in 0..outer.vlen {
            *budget = budget.checked_sub(1)?;
            let at = outer.body + i * 12;
            let name_off = self.u32_at(at)?;
            let type_id = self.u32_at(at + 4)?;
            let raw = self.u32_at(at + 8)?;
            let (bit_offset, bitfield) = if outer.kind_flag {
                (u64::from(raw & 0x00ff_ffff), raw >> 24 != 0)
            } else {
                (u64::from(raw), false)
            };
            let member_name = self.str_at(name_off);
            if member_name == name.as_bytes() {
                return Some(Member {
                    bit_offset,
                    bitfield,
                    type_id,
                });
            }
            if member_name.is_empty() {
                let Some(inner) = self.resolve(type_id) else {
                    continue;
                };
                if let Some(found) = self.member(inner, name, depth + 1, budget) {
                    return Some(Member {
                        bit_offset: bit_offset + found.bit_offset,
                        ..found
                    });
                }
            }
        }
        None
    }

    /// Where `struct sk_buff` keeps the fields the drop program reads, with their sizes checked.
    pub(crate) fn skb_layout(&self) -> Result<SkbLayout, BtfError> {
        let (_, skb) = self
            .find(&[KIND_STRUCT], "sk_buff")
            .ok_or(BtfError::NotFound("struct sk_buff"))?;
        // (field, expected size in bytes; 0 = a pointer)
        let field = |field: &'static str, size: u32| -> Result<u32, BtfError> {
            let bad = |what| BtfError::Field { field, what };
            let mut budget = MAX_MEMBER_VISITS;
            let m = self
                .member(skb, field, 0, &mut budget)
                .ok_or(bad("not found"))?;
            if m.bitfield || m.bit_offset % 8 != 0 {
                return Err(bad("is a bitfield"));
            }
            let ty = self.resolve(m.type_id).ok_or(bad("type not resolvable"))?;
            let ok = match (size, ty.kind) {
                (0, KIND_PTR) => true,
                (_, KIND_INT | KIND_ENUM) => ty.size_or_type == size,
                _ => false,
            };
            if !ok {
                return Err(bad("has an unexpected type or size"));
            }
            u32::try_from(m.bit_offset / 8).map_err(|_| bad("offset out of range"))
        };
        Ok(SkbLayout {
            head: field("head", 0)?,
            data: field("data", 0)?,
            len: field("len", 4)?,
            data_len: field("data_len", 4)?,
            network_header: field("network_header", 2)?,
            protocol: field("protocol", 2)?,
        })
    }

    /// The names of `enum skb_drop_reason`.
    pub(crate) fn drop_reasons(&self) -> Result<DropReasons, BtfError> {
        let (_, rec) = self
            .find(&[KIND_ENUM, KIND_ENUM64], "skb_drop_reason")
            .ok_or(BtfError::NotFound("enum skb_drop_reason"))?;
        let mut out = DropReasons::default();
        let stride = if rec.kind == KIND_ENUM { 8 } else { 12 };
        for i in 0..rec.vlen {
            let at = rec.body + i * stride;
            let (Some(name_off), Some(lo)) = (self.u32_at(at), self.u32_at(at + 4)) else {
                break;
            };
            let hi = if rec.kind == KIND_ENUM64 {
                self.u32_at(at + 8).unwrap_or(0)
            } else {
                0
            };
            if hi != 0 {
                continue; // not a value the tracepoint can pass
            }
            let name = String::from_utf8_lossy(self.str_at(name_off));
            if name == "SKB_DROP_REASON_MAX" {
                continue;
            }
            if name == "SKB_CONSUMED" {
                out.consumed = Some(lo);
            }
            let short = name.strip_prefix(REASON_PREFIX).unwrap_or(&name);
            out.names.insert(lo, short.to_string());
        }
        Ok(out)
    }
}

#[cfg(test)]
impl DropReasons {
    fn name(&self, reason: u32) -> Option<&str> {
        self.names.get(&reason).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a little-endian BTF blob from type records (without their ids) and strings.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn words(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }
        fn head(&mut self, name: &str, kind: u8, vlen: usize, flag: bool, size_or_type: u32) {
            let name = self.s(name);
            let info = (u32::from(kind) << 24) | vlen as u32 | (u32::from(flag) << 31);
            self.words(&[name, info, size_or_type]);
        }
        fn int(&mut self, name: &str, size: u32) {
            self.head(name, KIND_INT, 0, false, size);
            self.words(&[size * 8]);
        }
        fn members(&mut self, name: &str, kind: u8, size: u32, flag: bool, m: &[(&str, u32, u32)]) {
            self.head(name, kind, m.len(), flag, size);
            for (n, ty, off) in m {
                let n = self.s(n);
                self.words(&[n, *ty, *off]);
            }
        }
        fn blob(&self) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend_from_slice(&MAGIC.to_le_bytes());
            b.extend_from_slice(&[1, 0]);
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                b.extend_from_slice(&w.to_le_bytes());
            }
            b.extend_from_slice(&self.types);
            b.extend_from_slice(&self.strings);
            b
        }
    }

    /// A miniature of the real thing: `network_header` inside an anonymous struct inside an
    /// anonymous union, `protocol` behind a typedef, a bitfield, every extra-data kind.
    fn tiny() -> Vec<u8> {
        let mut b = Builder::new();
        // 1, 2: integers
        b.int("unsigned int", 4);
        b.int("__u16", 2);
        // 3: typedef __u16 __be16
        b.head("__be16", KIND_TYPEDEF, 0, false, 2);
        // 4: unsigned int *
        b.head("", KIND_PTR, 0, false, 1);
        // 5: const __be16
        b.head("", KIND_CONST, 0, false, 3);
        // 6: anonymous struct { __u8 flags:3 (bitfield); const __be16 protocol; __u16 network_header; }
        b.members(
            "",
            KIND_STRUCT,
            8,
            true,
            &[
                ("flags", 1, 3 << 24),
                ("protocol", 5, 16),
                ("network_header", 2, 32),
            ],
        );
        // 7: anonymous union { struct 6; unsigned int whole; }
        b.members("", KIND_UNION, 8, false, &[("", 6, 0), ("whole", 1, 0)]);
        // Other kinds with extra data, to prove the walk steps over them.
        b.head("arr", KIND_ARRAY, 0, false, 0); // 8
        b.words(&[1, 1, 4]);
        b.head("proto", KIND_FUNC_PROTO, 1, false, 1); // 9
        b.words(&[0, 1]);
        b.head("v", KIND_VAR, 0, false, 1); // 10
        b.words(&[0]);
        b.head(".data", KIND_DATASEC, 1, false, 4); // 11
        b.words(&[10, 0, 4]);
        b.head("tag", KIND_DECL_TAG, 0, false, 10); // 12
        b.words(&[u32::MAX]);
        // 13: a forward declaration of sk_buff, before the real one
        b.head("sk_buff", KIND_FWD, 0, false, 0);
        // 14: struct sk_buff
        b.members(
            "sk_buff",
            KIND_STRUCT,
            64,
            false,
            &[
                ("len", 1, 0),
                ("data_len", 1, 32),
                ("", 7, 64),
                ("head", 4, 192),
                ("data", 4, 256),
            ],
        );
        // 15: enum skb_drop_reason
        let names = [
            "SKB_NOT_DROPPED_YET",
            "SKB_CONSUMED",
            "SKB_DROP_REASON_NETFILTER_DROP",
        ];
        b.head("skb_drop_reason", KIND_ENUM, names.len() + 1, false, 4);
        for (i, n) in names.iter().enumerate() {
            let off = b.s(n);
            b.words(&[off, i as u32]);
        }
        let off = b.s("SKB_DROP_REASON_MAX");
        b.words(&[off, 3]);
        b.head("f", KIND_FUNC, 0, false, 9); // 16
        b.head("big", KIND_ENUM64, 1, false, 8); // 17
        let off = b.s("BIG");
        b.words(&[off, 1, 1]);
        b.blob()
    }

    #[test]
    fn finds_skb_fields_through_anonymous_members_and_typedefs() {
        let btf = Btf::parse(tiny()).expect("parse");
        assert_eq!(btf.type_count(), 17);
        assert_eq!(
            btf.skb_layout().expect("layout"),
            SkbLayout {
                head: 24,
                data: 32,
                len: 0,
                data_len: 4,
                network_header: 8 + 4,
                protocol: 8 + 2,
            }
        );
    }

    #[test]
    fn names_drop_reasons_without_the_prefix() {
        let btf = Btf::parse(tiny()).expect("parse");
        let reasons = btf.drop_reasons().expect("reasons");
        assert_eq!(reasons.name(2), Some("NETFILTER_DROP"));
        assert_eq!(reasons.name(1), Some("SKB_CONSUMED"));
        assert_eq!(reasons.name(3), None, "the MAX sentinel is not a reason");
        assert_eq!(reasons.consumed, Some(1));
    }

    #[test]
    fn rejects_malformed_blobs_without_panicking() {
        let good = tiny();
        assert!(matches!(Btf::parse(Vec::new()), Err(BtfError::Header(_))));
        assert!(matches!(
            Btf::parse(vec![1, 2, 3, 4]),
            Err(BtfError::Magic(_))
        ));
        // Every truncation, and every single-byte corruption of the header and type section.
        // Only that nothing panics matters here: every answer is fine.
        for len in 0..good.len() {
            drop(Btf::parse(good[..len].to_vec()).map(|b| (b.skb_layout(), b.drop_reasons())));
        }
        for i in 0..good.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                if let Ok(b) = Btf::parse(bad) {
                    drop((b.skb_layout(), b.drop_reasons()));
                }
            }
        }
    }

    #[test]
    fn a_self_referencing_typedef_ends() {
        let mut b = Builder::new();
        b.head("loop", KIND_TYPEDEF, 0, false, 1);
        b.members("sk_buff", KIND_STRUCT, 8, false, &[("head", 1, 0)]);
        let btf = Btf::parse(b.blob()).expect("parse");
        assert!(matches!(
            btf.skb_layout(),
            Err(BtfError::Field {
                field: "head",
                what: "type not resolvable"
            })
        ));
    }

    #[test]
    fn the_running_kernel() {
        if !Path::new(VMLINUX).exists() {
            eprintln!(
                "!!! btf::the_running_kernel: {VMLINUX} is missing (kernel without BTF) — NOT RUN"
            );
            return;
        }
        let btf = Btf::vmlinux().expect("parse vmlinux BTF");
        let layout = btf.skb_layout().expect("sk_buff layout");
        // Sanity: these sit in this order in every kernel since 5.x.
        assert!(layout.len < layout.data_len);
        assert!(layout.protocol < layout.network_header);
        assert!(layout.head < layout.data);
        let reasons = btf.drop_reasons().expect("drop reasons");
        assert!(
            reasons.names.values().any(|n| n == "NETFILTER_DROP"),
            "no NETFILTER_DROP in {:?}",
            reasons.names
        );
        assert_eq!(reasons.name(0), Some("SKB_NOT_DROPPED_YET"));
        assert!(reasons.consumed.is_some());
        eprintln!(
            "btf: {} types, sk_buff {layout:?}, {} drop reasons",
            btf.type_count(),
            reasons.names.len()
        );
    }
}
