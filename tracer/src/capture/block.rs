//! pcapng block and option numbers, and a builder for one little-endian block.

use bytes::BufMut;

pub(super) const SHB: u32 = 0x0A0D_0D0A;
pub(super) const IDB: u32 = 1;
pub(super) const EPB: u32 = 6;
/// Interface Statistics Block, and its start and end time options.
pub(super) const ISB: u32 = 5;
pub(super) const ISB_STARTTIME: u16 = 2;
pub(super) const ISB_ENDTIME: u16 = 3;
pub(super) const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
pub(super) const LINKTYPE_ETHERNET: u16 = 1;
/// LINKTYPE_USER0: the drops interface's records (JSON), which no dissector claims.
pub(super) const LINKTYPE_USER0: u16 = 147;
/// `if_name` of the interface that holds the kernel's drop reports.
pub(crate) const DROPS_IFNAME: &str = "pathtrace:drops";

pub(super) const OPT_END: u16 = 0;
pub(super) const OPT_COMMENT: u16 = 1;
pub(super) const SHB_HARDWARE: u16 = 2;
pub(super) const SHB_OS: u16 = 3;
pub(super) const SHB_USERAPPL: u16 = 4;
pub(super) const IF_NAME: u16 = 2;
pub(super) const IF_DESCRIPTION: u16 = 3;
pub(super) const IF_TSRESOL: u16 = 9;
pub(super) const IF_TSOFFSET: u16 = 14;
pub(super) const EPB_FLAGS: u16 = 2;
/// `opt_custom` codes: UTF-8 / binary, copyable; UTF-8 / binary, not to be copied.
pub(super) const OPT_CUSTOM: [u16; 4] = [2988, 2989, 19372, 19373];
pub(super) const OPT_CUSTOM_BINARY_COPY: u16 = 2989;

/// `epb_flags` bits 0-1: the packet's direction.
pub(super) const EPB_INBOUND: u32 = 1;
pub(super) const EPB_OUTBOUND: u32 = 2;

/// Block type, total length, (body), total length.
pub(super) const BLOCK_OVERHEAD: usize = 12;
/// Largest option value: the length field is 16 bits.
pub(super) const OPTION_MAX: usize = u16::MAX as usize;

/// One block being built, little-endian; [`Block::finish`] returns its complete bytes.
pub(super) struct Block {
    buf: Vec<u8>,
    has_options: bool,
}

impl Block {
    pub(super) fn new(block_type: u32) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.put_u32_le(block_type);
        buf.put_u32_le(0); // total length, set by `finish`
        Self {
            buf,
            has_options: false,
        }
    }

    pub(super) fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.put_u16_le(v);
        self
    }

    pub(super) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.put_u32_le(v);
        self
    }

    pub(super) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.put_u64_le(v);
        self
    }

    /// Raw bytes padded to 32 bits (packet data).
    pub(super) fn padded(&mut self, data: &[u8]) -> &mut Self {
        self.buf.put_slice(data);
        self.pad();
        self
    }

    /// One option; a value longer than an option can hold is cut (callers split what must not be).
    pub(super) fn option(&mut self, code: u16, value: &[u8]) -> &mut Self {
        let value = &value[..value.len().min(OPTION_MAX)];
        self.buf.put_u16_le(code);
        self.buf.put_u16_le(value.len() as u16);
        self.padded(value);
        self.has_options = true;
        self
    }

    /// A string option, cut at a character boundary when too long.
    pub(super) fn text(&mut self, code: u16, value: &str) -> &mut Self {
        let mut end = value.len().min(OPTION_MAX);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        self.option(code, &value.as_bytes()[..end])
    }

    fn pad(&mut self) {
        let pad = (4 - self.buf.len() % 4) % 4;
        self.buf.put_bytes(0, pad);
    }

    pub(super) fn finish(&mut self) -> Vec<u8> {
        if self.has_options {
            self.buf.put_u16_le(OPT_END);
            self.buf.put_u16_le(0);
        }
        let total = (self.buf.len() + 4) as u32;
        self.buf.put_u32_le(total);
        self.buf[4..8].copy_from_slice(&total.to_le_bytes());
        std::mem::take(&mut self.buf)
    }
}
