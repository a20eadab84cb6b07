//! Where a pcap-filter expression (`man 7 pcap-filter`) stops being pcap-filter syntax.
//!
//! libpcap compiles the expression itself, but says only "syntax error", with no position.
//! [`check`] reads the same language, libpcap 1.10's `scanner.l` and `grammar.y`, token for token,
//! and says which column is wrong and why. It follows libpcap where libpcap is odd, because
//! refusing what tcpdump accepts is the worse mistake:
//!
//! - The scanner takes the longest match and breaks ties by rule order: `1000-2000` is one name
//!   (a port range), and so is `len-1`; `001122334455` is a MAC address, `08` a bad octal number.
//! - Keywords are never names: `ip proto tcp` is wrong, `ip proto \tcp` is right.
//! - An id alone (`or 443`) inherits the qualifiers of what came before it. After a primitive that
//!   has none (`tcp and 80`), libpcap refuses it ("syntax error in filter expression"), and so do
//!   we. A parenthesized expression passes on what came before *it*: `tcp and (port 80) and 443`
//!   is refused, `port 80 and (tcp) and 443` is not.
//! - Parentheses hold different things in different places: after a qualifier only ids
//!   (`port (80 or 443)`), at the start only primitives and arithmetic, after `and` any of them;
//!   ids in parentheses may not start with a parenthesis (`host ((a) or b)` is refused).
//!
//! Meaning (unknown names, an IPv4 address after `port`) is left to libpcap, except where
//! libpcap's own message is "syntax error", the size of `proto[x:size]`, and keywords of other
//! link types (`vpi`, `type mgt`, `on eth0`), which never compile for Ethernet.

use std::{net::Ipv6Addr, sync::OnceLock};

/// Parentheses and brackets nest at most this deep (the parser recurses on them).
const MAX_DEPTH: usize = 64;

/// Where and why an expression is not pcap-filter syntax.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} at column {column}")]
pub struct SyntaxError {
    /// 1-based column (in chars) of the first character of the offending token (or one past the
    /// end for "unexpected end").
    pub column: usize,
    /// What is wrong there, in a phrase: "expected a port number or name after `port`, found
    /// `and`", "unbalanced `(`", "unexpected end of expression after `and`".
    pub message: String,
}

/// Checks `expr`; Ok for every expression libpcap 1.10 accepts syntactically (DLT_EN10MB).
///
/// An empty expression (or only whitespace) is Ok: it means every packet.
#[expect(
    unreachable_pub,
    reason = "the API as specified; `filter::Expression::new` is how the crate's users reach it"
)]
pub fn check(expr: &str) -> Result<(), SyntaxError> {
    let mut parser = Parser::new(expr);
    if parser.tokens.is_empty() {
        return Ok(());
    }
    let first = parser.operand(Shapes::TERM, false)?;
    parser.tail(Shapes::OPERAND, first.qualified)?;
    match parser.kind() {
        None => Ok(()),
        Some(Kind::Op(Op::Close)) => Err(parser.error_here("unbalanced `)`".to_owned())),
        Some(_) => Err(parser.unexpected("`and` or `or`")),
    }
}

// ---- Tokens -------------------------------------------------------------------------------

/// One token of libpcap's scanner, keywords grouped by what the grammar does with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `NUM`: decimal, `0x` hex, octal, or a named constant such as `tcp-syn`.
    Num(u32),
    /// `ID`: a host, service or protocol name, a `\`-escaped keyword, a port range.
    Name,
    /// `HID`: an IPv4 address, whole or partial (`10.1`).
    Ipv4,
    /// `HID6`, `EID`, `AID`: IPv6, MAC, ARCnet (`$` and a hex byte) addresses.
    Ipv6,
    Mac,
    Arcnet,
    /// `ether`, `ip`, `tcp`, ... (`pname`): a primitive alone, or qualifying what follows.
    Protocol,
    /// `src`, `dst` (`dqual`).
    Src,
    Dst,
    /// What the id after it is (`aqual`, `proto`, `protochain`, `gateway`).
    Addr(Addr),
    /// `mask`, between a network and its netmask.
    Mask,
    /// `broadcast`, `multicast`, after an optional protocol.
    Cast,
    /// `less`, `greater`, `ifindex`: followed by a plain number.
    WithNum,
    /// `rnr`: after `llc` (alone it is pflog's).
    Rnr,
    /// `byte NUM op NUM`.
    Byte,
    /// `vlan`, `mpls`, `pppoes`, `geneve`: optionally followed by a number.
    Tag,
    /// `llc`: optionally followed by a name or `rnr`.
    Llc,
    /// `inbound`, `outbound`, `pppoed`: primitives of one word.
    Alone,
    /// `len`, `length`: the packet's length, in arithmetic.
    Len,
    And,
    Or,
    /// `not`, `!`.
    Not,
    /// A keyword of another link type (ATM's `vpi`, 802.11's `type`, pflog's `on`): libpcap
    /// refuses every one of them for Ethernet.
    Foreign(&'static str),
    Op(Op),
    /// What the scanner refuses (`LEX_ERROR`, or an address it flags as bogus).
    Bad(Bad),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Addr {
    Host,
    Net,
    Port,
    Portrange,
    Proto,
    Protochain,
    Gateway,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Colon,
    Slash,
    Minus,
    /// `&`, `|`, `<`, `>`, `=` are also `byte`'s operators.
    Amp,
    Pipe,
    Lt,
    Gt,
    Eq,
    /// `+`, `*`, `%`, `^`, `<<`, `>>`.
    Arith,
    /// `>=`, `<=`, `!=`.
    Rel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bad {
    Char,
    Octal,
    Overflow,
    Mac,
    Ipv6,
}

#[derive(Clone, Copy, Debug)]
struct Token<'a> {
    kind: Kind,
    text: &'a str,
    column: usize,
}

impl Kind {
    fn is_id(self) -> bool {
        matches!(
            self,
            Kind::Name | Kind::Ipv4 | Kind::Ipv6 | Kind::Mac | Kind::Arcnet
        )
    }

    /// A word that could have been a name, but is a keyword (`\tcp` is the name).
    fn is_keyword(self) -> bool {
        !matches!(
            self,
            Kind::Num(_) | Kind::Op(_) | Kind::Bad(_) | Kind::And | Kind::Or | Kind::Not
        ) && !self.is_id()
    }

    fn is_op(self, test: fn(Op) -> bool) -> bool {
        matches!(self, Kind::Op(op) if test(op))
    }
}

impl Op {
    fn is_arith(self) -> bool {
        matches!(self, Op::Slash | Op::Minus | Op::Amp | Op::Pipe | Op::Arith)
    }

    fn is_relation(self) -> bool {
        matches!(self, Op::Lt | Op::Gt | Op::Eq | Op::Rel)
    }
}

/// Splits `expr` as libpcap's scanner does. Never fails: what it refuses becomes a [`Kind::Bad`]
/// token, reported only if the parser gets that far (as libpcap's would).
fn lex(expr: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let (mut at, mut column) = (0, 1);
    while let Some(rest) = expr.get(at..).filter(|rest| !rest.is_empty()) {
        let (kind, len) = match rest.as_bytes() {
            [b' ' | b'\t' | b'\r' | b'\n', ..] => (None, 1),
            _ => scan(rest),
        };
        // `scan` ends tokens on char boundaries; the fallback only guards against a bug there.
        let text = rest.get(..len.max(1)).unwrap_or(rest);
        if let Some(kind) = kind {
            tokens.push(Token { kind, text, column });
        }
        at += text.len();
        column += text.chars().count();
    }
    tokens
}

/// The token `rest` starts with, and its length in bytes.
fn scan(rest: &str) -> (Option<Kind>, usize) {
    let b = rest.as_bytes();
    let (kind, len) = match b {
        [b'&', b'&', ..] => (Kind::And, 2),
        [b'|', b'|', ..] => (Kind::Or, 2),
        [b'>' | b'<' | b'!', b'=', ..] => (Kind::Op(Op::Rel), 2),
        [b'=', b'=', ..] => (Kind::Op(Op::Eq), 2),
        [b'<', b'<', ..] | [b'>', b'>', ..] => (Kind::Op(Op::Arith), 2),
        [b'!', ..] => (Kind::Not, 1),
        // `::1` is an address; a lone `:` separates an offset from a size.
        [b':', ..] => match ipv6_len(b) {
            0 => (Kind::Op(Op::Colon), 1),
            len => (ipv6(prefix(rest, len)), len),
        },
        // `\` and anything up to a space, `!` or a parenthesis is a name, even a keyword.
        [b'\\', name @ ..] => {
            let stop = |c: &u8| matches!(c, b' ' | b'!' | b'(' | b')' | b'\n' | b'\t');
            match name.iter().position(stop).unwrap_or(name.len()) {
                0 => (Kind::Bad(Bad::Char), 1),
                len => (Kind::Name, 1 + len),
            }
        }
        [b'$', hex @ ..] => match hex_run(hex).min(2) {
            0 => (Kind::Bad(Bad::Char), 1),
            len => (Kind::Arcnet, 1 + len),
        },
        [c, ..] if c.is_ascii_alphanumeric() => word(rest),
        [c, ..] => {
            let op = match c {
                b'(' => Op::Open,
                b')' => Op::Close,
                b'[' => Op::OpenBracket,
                b']' => Op::CloseBracket,
                b'/' => Op::Slash,
                b'-' => Op::Minus,
                b'&' => Op::Amp,
                b'|' => Op::Pipe,
                b'<' => Op::Lt,
                b'>' => Op::Gt,
                b'=' => Op::Eq,
                b'+' | b'*' | b'%' | b'^' => Op::Arith,
                _ => {
                    return (
                        Some(Kind::Bad(Bad::Char)),
                        rest.chars().next().map_or(1, char::len_utf8),
                    )
                }
            };
            (Kind::Op(op), 1)
        }
        [] => (Kind::Bad(Bad::Char), 1),
    };
    (Some(kind), len)
}

/// A token starting with a letter or digit: flex's longest match among the rules that can
/// start so, the earliest rule on a tie (keywords, MAC, number, IPv4, IPv6, constant, name).
fn word(rest: &str) -> (Kind, usize) {
    let b = rest.as_bytes();
    // `[A-Za-z0-9]([-_.A-Za-z0-9]*[.A-Za-z0-9])?`
    let run = b
        .iter()
        .take_while(|&&c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        .count();
    let id = b
        .iter()
        .take(run)
        .rposition(|&c| c.is_ascii_alphanumeric() || c == b'.');
    let id = id.map_or(1, |i| i + 1);
    let word = prefix(rest, id);
    let (mac, v4, v6, bogus) = (mac_len(b), ipv4_len(b), ipv6_len(b), bogus_mac_len(b));
    let num = longest("N", b).unwrap_or(0);
    let best = [mac, num, v4, v6, bogus].into_iter().fold(id, usize::max);
    let kind = match keyword(word) {
        Some(kind) if id == best => kind,
        _ if mac == best => Kind::Mac,
        _ if num == best => number(prefix(rest, num)).map_or_else(Kind::Bad, Kind::Num),
        _ if v4 == best => Kind::Ipv4,
        _ if v6 == best => ipv6(prefix(rest, v6)),
        _ if bogus == best => Kind::Bad(Bad::Mac),
        _ => constant(word).map_or(Kind::Name, Kind::Num),
    };
    (kind, best)
}

fn keyword(word: &str) -> Option<Kind> {
    Some(match word {
        "link" | "ether" | "ppp" | "slip" | "fddi" | "tr" | "wlan" | "arp" | "rarp" | "ip"
        | "sctp" | "tcp" | "udp" | "icmp" | "igmp" | "igrp" | "pim" | "vrrp" | "carp" | "radio"
        | "ip6" | "icmp6" | "ah" | "esp" | "atalk" | "aarp" | "decnet" | "lat" | "sca"
        | "moprc" | "mopdl" | "iso" | "esis" | "es-is" | "isis" | "is-is" | "l1" | "l2" | "iih"
        | "lsp" | "snp" | "csnp" | "psnp" | "clnp" | "stp" | "ipx" | "netbeui" => Kind::Protocol,
        "src" => Kind::Src,
        "dst" => Kind::Dst,
        "host" => Kind::Addr(Addr::Host),
        "net" => Kind::Addr(Addr::Net),
        "port" => Kind::Addr(Addr::Port),
        "portrange" => Kind::Addr(Addr::Portrange),
        "proto" => Kind::Addr(Addr::Proto),
        "protochain" => Kind::Addr(Addr::Protochain),
        "gateway" => Kind::Addr(Addr::Gateway),
        "mask" => Kind::Mask,
        "broadcast" | "multicast" => Kind::Cast,
        "less" | "greater" | "ifindex" => Kind::WithNum,
        "rnr" | "rulenum" => Kind::Rnr,
        "byte" => Kind::Byte,
        "vlan" | "mpls" | "pppoes" | "geneve" => Kind::Tag,
        "llc" => Kind::Llc,
        "inbound" | "outbound" | "pppoed" => Kind::Alone,
        "len" | "length" => Kind::Len,
        "and" => Kind::And,
        "or" => Kind::Or,
        "not" => Kind::Not,
        "address1" | "addr1" | "address2" | "addr2" | "address3" | "addr3" | "address4"
        | "addr4" | "ra" | "ta" | "type" | "subtype" | "direction" | "dir" => {
            Kind::Foreign("802.11")
        }
        "vpi" | "vci" | "lane" | "metac" | "bcc" | "oam" | "oamf4" | "oamf4ec" | "oamf4sc"
        | "sc" | "ilmic" | "connectmsg" | "metaconnect" => Kind::Foreign("ATM"),
        "fisu" | "lssu" | "lsu" | "msu" | "hfisu" | "hlssu" | "hmsu" | "sio" | "opc" | "dpc"
        | "sls" | "hsio" | "hopc" | "hdpc" | "hsls" => Kind::Foreign("SS7"),
        "on" | "ifname" | "rset" | "ruleset" | "srnr" | "subrulenum" | "reason" | "action" => {
            Kind::Foreign("pflog")
        }
        _ => return None,
    })
}

/// The scanner's named numbers, `name value` as `scanner.l` lists them.
const CONSTANTS: &str = "icmptype 0 icmpcode 1 icmp-echoreply 0 icmp-unreach 3 \
    icmp-sourcequench 4 icmp-redirect 5 icmp-echo 8 icmp-routeradvert 9 icmp-routersolicit 10 \
    icmp-timxceed 11 icmp-paramprob 12 icmp-tstamp 13 icmp-tstampreply 14 icmp-ireq 15 \
    icmp-ireqreply 16 icmp-maskreq 17 icmp-maskreply 18 \
    icmp6type 0 icmp6code 1 icmp6-destinationunreach 1 icmp6-packettoobig 2 \
    icmp6-timeexceeded 3 icmp6-parameterproblem 4 icmp6-echo 128 icmp6-echoreply 129 \
    icmp6-multicastlistenerquery 130 icmp6-multicastlistenerreportv1 131 \
    icmp6-multicastlistenerdone 132 icmp6-routersolicit 133 icmp6-routeradvert 134 \
    icmp6-neighborsolicit 135 icmp6-neighboradvert 136 icmp6-redirect 137 \
    icmp6-routerrenum 138 icmp6-nodeinformationquery 139 icmp6-nodeinformationresponse 140 \
    icmp6-ineighbordiscoverysolicit 141 icmp6-ineighbordiscoveryadvert 142 \
    icmp6-multicastlistenerreportv2 143 icmp6-homeagentdiscoveryrequest 144 \
    icmp6-homeagentdiscoveryreply 145 icmp6-mobileprefixsolicit 146 \
    icmp6-mobileprefixadvert 147 icmp6-certpathsolicit 148 icmp6-certpathadvert 149 \
    icmp6-multicastrouteradvert 151 icmp6-multicastroutersolicit 152 \
    icmp6-multicastrouterterm 153 \
    tcpflags 13 tcp-fin 1 tcp-syn 2 tcp-rst 4 tcp-push 8 tcp-ack 16 tcp-urg 32 tcp-ece 64 \
    tcp-cwr 128";

fn constant(word: &str) -> Option<u32> {
    let mut words = CONSTANTS.split_whitespace();
    while let (Some(name), Some(value)) = (words.next(), words.next()) {
        if name == word {
            return value.parse().ok();
        }
    }
    None
}

/// The first `len` bytes of `s`; the scanner's lengths all end on ASCII, so on a char boundary.
fn prefix(s: &str, len: usize) -> &str {
    s.get(..len).unwrap_or(s)
}

/// libpcap's `stou`: `0x` hex, a leading `0` octal, else decimal; 32 bits.
fn number(text: &str) -> Result<u32, Bad> {
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => match text.strip_prefix('0') {
            Some(octal) if !octal.is_empty() => (octal, 8),
            _ => (text, 10),
        },
    };
    if radix == 8 && digits.bytes().any(|d| d > b'7') {
        return Err(Bad::Octal);
    }
    // Only digits of the radix are left, so the only failure is overflow.
    u32::from_str_radix(digits, radix).map_err(|_| Bad::Overflow)
}

/// An address the IPv6 rule matched; libpcap then asks `getaddrinfo` whether it is one.
fn ipv6(text: &str) -> Kind {
    match text.parse::<Ipv6Addr>() {
        Ok(_) => Kind::Ipv6,
        Err(_) => Kind::Bad(Bad::Ipv6),
    }
}

fn hex_run(s: &[u8]) -> usize {
    s.iter().take_while(|c| c.is_ascii_hexdigit()).count()
}

/// The longest start of `s` that `pattern` matches, trying every length of every atom (the
/// recursion is as deep as the pattern is long). A pattern is the scanner's regular expression
/// in atoms: `N` a number (`{N}`: digits, or `0x` and hex digits), `B` one or two hex digits,
/// `W` one to four, `Q` four, `X` twelve; any other byte stands for itself.
fn longest(pattern: &str, s: &[u8]) -> Option<usize> {
    let (atom, rest) = match pattern.as_bytes() {
        [] => return Some(0),
        [atom, ..] => (*atom, pattern.get(1..).unwrap_or("")),
    };
    let (hex, none) = (hex_run(s), core::ops::RangeInclusive::new(1, 0));
    let (lengths, more) = match atom {
        b'N' => {
            let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
            match s {
                [b'0', b'x' | b'X', tail @ ..] => (1..=digits, 3..=2 + hex_run(tail)),
                _ => (1..=digits, none),
            }
        }
        b'B' => (1..=hex.min(2), none),
        b'W' => (1..=hex.min(4), none),
        b'Q' => (4..=hex.min(4), none),
        b'X' => (12..=hex.min(12), none),
        c if s.first() == Some(&c) => (1..=1, none),
        _ => (none.clone(), none),
    };
    let ends = lengths
        .chain(more)
        .filter_map(|n| Some(n + longest(rest, s.get(n..)?)?));
    ends.max()
}

fn longest_of<'p>(patterns: impl IntoIterator<Item = &'p str>, s: &[u8]) -> usize {
    patterns
        .into_iter()
        .filter_map(|p| longest(p, s))
        .max()
        .unwrap_or(0)
}

fn ipv4_len(s: &[u8]) -> usize {
    longest_of(["N.N", "N.N.N", "N.N.N.N"], s)
}

fn mac_len(s: &[u8]) -> usize {
    longest_of(
        ["B:B:B:B:B:B", "B-B-B-B-B-B", "B.B.B.B.B.B", "Q.Q.Q", "X"],
        s,
    )
}

/// `{B}:+({B}:+)+`: what looks like a MAC address, cut short; libpcap flags it as bogus.
fn bogus_mac_len(s: &[u8]) -> usize {
    let (mut at, mut groups) = (0, 0);
    loop {
        let rest = s.get(at..).unwrap_or_default();
        let hex = hex_run(rest);
        let colons = rest.iter().skip(hex).take_while(|&&c| c == b':').count();
        if !(1..=2).contains(&hex) || colons == 0 {
            return if groups >= 2 { at } else { 0 };
        }
        (at, groups) = (at + hex + colons, groups + 1);
    }
}

/// The scanner's IPv6 rules: eight groups, or fewer around one `::`, each form also with its
/// last 32 bits as an IPv4 address.
fn ipv6_len(s: &[u8]) -> usize {
    static PATTERNS: OnceLock<Vec<String>> = OnceLock::new();
    let patterns = PATTERNS.get_or_init(|| {
        let groups = |n| vec!["W"; n].join(":");
        let mut patterns = vec![groups(8), format!("{}N.N.N.N", "W:".repeat(6))];
        for before in 0..=7 {
            for after in 0..=7 - before {
                patterns.push(format!("{}::{}", groups(before), groups(after)));
                if before + after <= 5 {
                    patterns.push(format!("{}::{}N.N.N.N", groups(before), "W:".repeat(after)));
                }
            }
        }
        patterns
    });
    match s.first() {
        Some(c) if c.is_ascii_hexdigit() || *c == b':' => {
            longest_of(patterns.iter().map(String::as_str), s)
        }
        _ => 0,
    }
}

// ---- Grammar ------------------------------------------------------------------------------

/// What an operand turned out to be. libpcap's grammar allows different ones in different
/// places, and parentheses take the shape of what they hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// A primitive, or an expression in parentheses (`term`): `tcp port 80`, `ip[0] = 69`.
    Term,
    /// An id of its own (`nid`): `localhost`, `10.0.0.0/8`, `not 80`.
    Nid,
    /// Ids in parentheses (`paren pid ')'`): `(80 or 443)`.
    Ids,
    /// A number, perhaps in parentheses (`pnum`): an id or arithmetic, by what follows.
    Num,
    /// Arithmetic that is not only a number (`narth`): `ip[0] & 0xf`, `len`.
    Arith,
}

/// The shapes an operand may take where it stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shapes(u8);

impl Shapes {
    const NONE: Self = Self(0);
    /// Where an expression starts, and after its `not`s.
    const TERM: Self = Self::of(Shape::Term);
    /// After a qualifier (`port`), and between ids in parentheses.
    const ID: Self = Self::FIRST_ID.or(Self::of(Shape::Ids));
    /// After `and` or `or`: a primitive, or an id that inherits the qualifiers before it.
    const OPERAND: Self = Self::TERM.or(Self::ID);
    /// The first of ids in parentheses (`qid`), which may not be in parentheses itself.
    const FIRST_ID: Self = Self::of(Shape::Nid).or(Self::of(Shape::Num));
    /// In arithmetic: inside `[...]`, after an operator.
    const ARITH: Self = Self::of(Shape::Num).or(Self::of(Shape::Arith));

    const fn of(shape: Shape) -> Self {
        Self(1 << shape as u8)
    }

    const fn or(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    fn or_if(self, yes: bool, other: Self) -> Self {
        Self(self.0 | if yes { other.0 } else { 0 })
    }

    fn has(self, shape: Shape) -> bool {
        self.0 & Self::of(shape).0 != 0
    }
}

/// A parsed operand of `and` and `or`, or of a qualifier, or of arithmetic.
#[derive(Clone, Copy, Debug)]
struct Operand {
    shape: Shape,
    /// Whether an id after this operand has qualifiers to inherit (libpcap's `q.addr` is set).
    qualified: bool,
    /// The token where its first id is, for the error when that has nothing to inherit.
    first: usize,
}

impl Operand {
    fn new(shape: Shape, qualified: bool, first: usize) -> Self {
        Self {
            shape,
            qualified,
            first,
        }
    }
}

/// A recursive-descent reading of `grammar.y`. Where an LR parser keeps several rules open
/// (a number may become an id or arithmetic, a parenthesis an expression or ids), an operand
/// is parsed against the set of [`Shapes`] its place allows and reports which one it took.
struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
    /// Parentheses and brackets open around `pos`.
    depth: usize,
    /// The column one past the end of the expression.
    end: usize,
}

impl<'a> Parser<'a> {
    fn new(expr: &'a str) -> Self {
        let (tokens, end) = (lex(expr), expr.chars().count() + 1);
        Self {
            tokens,
            pos: 0,
            depth: 0,
            end,
        }
    }

    /// The rest of a list after its first operand: `expr: expr and term | expr or id | ...` with
    /// `OPERAND`s, or `pid: qid and id | qid or id` with `ID`s, which inherit `qualified`.
    fn tail(&mut self, allowed: Shapes, mut qualified: bool) -> Result<(), SyntaxError> {
        while self.eat_and_or() {
            let operand = self.operand(allowed, qualified)?;
            if operand.shape == Shape::Term {
                qualified = operand.qualified;
            } else {
                self.inherit(qualified, operand.first)?;
            }
        }
        Ok(())
    }

    /// An operand that may take any of `allowed`, after `not`s (`term: not term`, `nid: not id`).
    fn operand(&mut self, mut allowed: Shapes, qualified: bool) -> Result<Operand, SyntaxError> {
        let mut negated = false;
        while self.kind() == Some(Kind::Not) {
            let inner = Shapes::NONE
                .or_if(allowed.has(Shape::Term), Shapes::TERM)
                .or_if(allowed.has(Shape::Nid), Shapes::ID);
            if inner == Shapes::NONE {
                return Err(self.unexpected(self.describe(allowed)));
            }
            (allowed, negated) = (inner, true);
            self.pos += 1;
        }
        let mut operand = self.primary(allowed, qualified)?;
        let arith = matches!(operand.shape, Shape::Num | Shape::Arith);
        if arith && (allowed.has(Shape::Term) || allowed.has(Shape::Arith)) {
            while self.at_op(Op::is_arith) {
                self.pos += 1;
                self.arith_atom()?;
                operand.shape = Shape::Arith;
            }
        }
        if arith && allowed.has(Shape::Term) && self.at_op(Op::is_relation) {
            self.pos += 1;
            self.operand(Shapes::ARITH, false)?;
            (operand.shape, operand.qualified) = (Shape::Term, false);
        }
        if !allowed.has(operand.shape) {
            return Err(self.unexpected("an arithmetic operator or a comparison"));
        }
        if negated && operand.shape != Shape::Term {
            operand.shape = Shape::Nid;
        }
        Ok(operand)
    }

    /// An operand without its `not`s and before any arithmetic operator.
    fn primary(&mut self, allowed: Shapes, qualified: bool) -> Result<Operand, SyntaxError> {
        let arith = allowed.has(Shape::Term) || allowed.has(Shape::Arith);
        let first = self.pos;
        let shape = match self.kind() {
            Some(Kind::Op(Op::Open)) => return self.group(allowed, qualified),
            Some(Kind::Num(_)) if arith || allowed.has(Shape::Num) => self.arith_atom()?,
            Some(Kind::Op(Op::Minus) | Kind::Len) if arith => self.arith_atom()?,
            Some(Kind::Protocol) if arith && self.at_accessor() => self.arith_atom()?,
            Some(kind) if kind.is_id() && allowed.has(Shape::Nid) => self.nid(kind)?,
            Some(kind) if kind.is_keyword() && kind != Kind::Mask && allowed.has(Shape::Term) => {
                let qualified = self.primitive()?;
                return Ok(Operand::new(Shape::Term, qualified, first));
            }
            _ if allowed.has(Shape::Nid) => {
                return Err(self.unexpected_name(self.describe(allowed)))
            }
            found => {
                let mut err = self.unexpected(self.describe(allowed));
                let text = self.tokens.get(self.pos).map_or("", |t| t.text);
                err.message += match found {
                    Some(Kind::Name) if text.contains('-') => {
                        " (one name to libpcap: put spaces around `-`)"
                    }
                    Some(kind) if kind.is_id() && allowed.has(Shape::Term) => {
                        " (an id needs a qualifier first)"
                    }
                    _ => "",
                };
                return Err(err);
            }
        };
        Ok(Operand::new(shape, qualified, first))
    }

    /// `( ... )`: an expression, ids, arithmetic or a number, as far as `allowed` lets it be.
    fn group(&mut self, allowed: Shapes, qualified: bool) -> Result<Operand, SyntaxError> {
        let open = self.enter()?;
        let (expr, ids) = (allowed.has(Shape::Term), allowed.has(Shape::Ids));
        let inside = Shapes::NONE
            .or_if(expr, Shapes::TERM)
            .or_if(ids, Shapes::FIRST_ID)
            .or_if(expr || allowed.has(Shape::Arith), Shapes::ARITH)
            .or_if(allowed.has(Shape::Num), Shapes::of(Shape::Num));
        let first = self.operand(inside, qualified)?;
        let shape = match first.shape {
            Shape::Term => {
                self.tail(Shapes::OPERAND, first.qualified)?;
                Shape::Term
            }
            Shape::Num if !(ids && self.at_and_or()) => Shape::Num,
            Shape::Arith => Shape::Arith,
            Shape::Nid | Shape::Ids | Shape::Num => {
                self.inherit(qualified, first.first)?;
                self.tail(Shapes::ID, qualified)?;
                Shape::Ids
            }
        };
        let expected = match shape {
            Shape::Num | Shape::Arith if !ids => "an arithmetic operator or `)`",
            _ => "`and`, `or` or `)`",
        };
        self.leave(open, Op::Close, expected)?;
        // `paren expr ')'` passes on the qualifiers from before the parenthesis, not inside it.
        Ok(Operand::new(shape, qualified, first.first))
    }

    /// A primitive that starts with a keyword; whether it has qualifiers to pass on.
    fn primitive(&mut self) -> Result<bool, SyntaxError> {
        let protocol = self.eat(Kind::Protocol);
        let kind = self.kind();
        match kind {
            Some(Kind::Foreign(link)) => return Err(self.foreign(link)),
            Some(Kind::Rnr) if !protocol => return Err(self.foreign("pflog")),
            Some(Kind::Src | Kind::Dst | Kind::Addr(_) | Kind::Cast) => {}
            _ if protocol => return Ok(false),
            Some(Kind::WithNum | Kind::Byte | Kind::Tag | Kind::Llc | Kind::Alone) => {}
            _ => return Err(self.unexpected("a primitive")),
        }
        self.pos += 1;
        match kind {
            Some(Kind::Src) if self.eat_and_or() => self.expect(|k| k == Kind::Dst, "`dst`")?,
            Some(Kind::Dst) if self.eat_and_or() => self.expect(|k| k == Kind::Src, "`src`")?,
            Some(Kind::WithNum) => self.expect_num()?,
            Some(Kind::Byte) => {
                self.expect_num()?;
                let op = |k| matches!(k, Kind::Op(Op::Amp | Op::Pipe | Op::Lt | Op::Gt | Op::Eq));
                self.expect(op, "one of `&`, `|`, `<`, `>`, `=`")?;
                self.expect_num()?;
            }
            Some(Kind::Tag) if matches!(self.kind(), Some(Kind::Num(_) | Kind::Op(Op::Open))) => {
                self.pnum()?;
            }
            Some(Kind::Llc) if matches!(self.kind(), Some(Kind::Name | Kind::Rnr)) => self.pos += 1,
            _ => {}
        }
        match kind {
            // After a direction: `host`, `net`, `port`, `portrange` or nothing, then the id.
            Some(Kind::Src | Kind::Dst) => {
                let addr = |a| matches!(a, Addr::Host | Addr::Net | Addr::Port | Addr::Portrange);
                self.pos += usize::from(matches!(self.kind(), Some(Kind::Addr(a)) if addr(a)));
            }
            Some(Kind::Addr(_)) => {}
            _ => return Ok(false),
        }
        self.operand(Shapes::ID, true)?;
        Ok(true)
    }

    /// An id of its own (`nid`), but not `not id`.
    fn nid(&mut self, kind: Kind) -> Result<Shape, SyntaxError> {
        self.pos += 1;
        match kind {
            Kind::Ipv4 if self.eat(Kind::Mask) => {
                self.expect(|k| k == Kind::Ipv4, "a netmask such as 255.255.0.0")?;
            }
            Kind::Ipv4 | Kind::Ipv6 if self.eat(Kind::Op(Op::Slash)) => self.expect_num()?,
            _ => {}
        }
        Ok(Shape::Nid)
    }

    /// An arithmetic operand, before any binary operator: `-`s, then a number, `len`,
    /// `proto[...]` or arithmetic in parentheses.
    fn arith_atom(&mut self) -> Result<Shape, SyntaxError> {
        let mut negated = false;
        while self.eat(Kind::Op(Op::Minus)) {
            negated = true;
        }
        let shape = match self.kind() {
            Some(Kind::Op(Op::Open)) => {
                let shape = self.group(Shapes::ARITH, false)?.shape;
                return Ok(if negated { Shape::Arith } else { shape });
            }
            Some(Kind::Num(_)) if !negated => Shape::Num,
            Some(Kind::Num(_) | Kind::Len) => Shape::Arith,
            Some(Kind::Protocol) if self.at_accessor() => {
                self.pos += 1;
                let open = self.enter()?;
                self.operand(Shapes::ARITH, false)?;
                if self.eat(Kind::Op(Op::Colon)) {
                    self.size()?;
                }
                self.leave(open, Op::CloseBracket, "an arithmetic operator, `:` or `]`")?;
                return Ok(Shape::Arith);
            }
            _ => return Err(self.unexpected("a number or an arithmetic expression")),
        };
        self.pos += 1;
        Ok(shape)
    }

    /// The size in `proto[offset:size]`.
    fn size(&mut self) -> Result<(), SyntaxError> {
        match self.tokens.get(self.pos) {
            Some(t) if matches!(t.kind, Kind::Num(1 | 2 | 4)) => self.pos += 1,
            Some(t) if matches!(t.kind, Kind::Num(_)) => {
                let message = format!("the size must be 1, 2 or 4, not `{}`", t.text);
                return Err(error(t.column, message));
            }
            _ => return Err(self.unexpected("a size (1, 2 or 4)")),
        }
        Ok(())
    }

    /// `pnum`: a number in any number of parentheses, after `vlan` and the like.
    fn pnum(&mut self) -> Result<(), SyntaxError> {
        let first_open = self.pos;
        while self.eat(Kind::Op(Op::Open)) {}
        let opened = self.pos - first_open;
        self.expect_num()?;
        for unclosed in (0..opened).rev() {
            self.close(first_open + unclosed, Op::Close, "`)`")?;
        }
        Ok(())
    }

    // ---- Helpers --------------------------------------------------------------------------

    fn kind(&self) -> Option<Kind> {
        self.tokens.get(self.pos).map(|t| t.kind)
    }

    fn at_op(&self, test: fn(Op) -> bool) -> bool {
        self.kind().is_some_and(|k| k.is_op(test))
    }

    fn at_and_or(&self) -> bool {
        matches!(self.kind(), Some(Kind::And | Kind::Or))
    }

    /// A protocol followed by `[`.
    fn at_accessor(&self) -> bool {
        self.tokens
            .get(self.pos + 1)
            .is_some_and(|t| t.kind == Kind::Op(Op::OpenBracket))
    }

    fn eat(&mut self, kind: Kind) -> bool {
        let yes = self.kind() == Some(kind);
        self.pos += usize::from(yes);
        yes
    }

    fn eat_and_or(&mut self) -> bool {
        let yes = self.at_and_or();
        self.pos += usize::from(yes);
        yes
    }

    fn expect(&mut self, test: impl Fn(Kind) -> bool, expected: &str) -> Result<(), SyntaxError> {
        if !self.kind().is_some_and(test) {
            return Err(self.unexpected_name(expected));
        }
        self.pos += 1;
        Ok(())
    }

    fn expect_num(&mut self) -> Result<(), SyntaxError> {
        self.expect(|k| matches!(k, Kind::Num(_)), "a number")
    }

    /// Steps into a parenthesis or bracket, refusing to nest deeper than [`MAX_DEPTH`].
    fn enter(&mut self) -> Result<usize, SyntaxError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error_here(format!("nested more than {MAX_DEPTH} deep")));
        }
        self.depth += 1;
        self.pos += 1;
        Ok(self.pos - 1)
    }

    /// Steps out of what [`Self::enter`] opened at token `open`.
    fn leave(&mut self, open: usize, close: Op, expected: &str) -> Result<(), SyntaxError> {
        self.close(open, close, expected)?;
        self.depth = self.depth.saturating_sub(1);
        Ok(())
    }

    /// The `close` that matches the `(` or `[` at token `open`.
    fn close(&mut self, open: usize, close: Op, expected: &str) -> Result<(), SyntaxError> {
        if self.eat(Kind::Op(close)) {
            return Ok(());
        }
        match self.tokens.get(open) {
            Some(t) if self.kind().is_none() => {
                Err(error(t.column, format!("unbalanced `{}`", t.text)))
            }
            _ => Err(self.unexpected(expected)),
        }
    }

    /// libpcap's "syntax error in filter expression": an id with no qualifier to inherit.
    fn inherit(&self, qualified: bool, first: usize) -> Result<(), SyntaxError> {
        match self.tokens.get(first) {
            Some(t) if !qualified => {
                let what = "needs a qualifier such as `host` or `port`: what comes before it has none to pass on";
                Err(error(t.column, format!("{} {what}", quote(t.text))))
            }
            _ => Ok(()),
        }
    }

    fn foreign(&self, link: &str) -> SyntaxError {
        let text = self.tokens.get(self.pos).map_or("", |t| t.text);
        self.error_here(format!(
            "`{text}` applies to {link} captures only, not to Ethernet"
        ))
    }

    /// What an operand that may take `allowed` is, in words, after the token before it.
    fn describe(&self, allowed: Shapes) -> &'static str {
        let previous = self.pos.checked_sub(1).and_then(|i| self.tokens.get(i));
        match previous.map(|t| t.kind) {
            _ if !allowed.has(Shape::Nid) && allowed.has(Shape::Term) => "a primitive",
            _ if allowed == Shapes::of(Shape::Num) => {
                "a number (ids in parentheses may not start with `(`)"
            }
            _ if !allowed.has(Shape::Nid) => "a number or an arithmetic expression",
            Some(Kind::Addr(addr)) => match addr {
                Addr::Host => "a host name or address",
                Addr::Net => "a network address",
                Addr::Port => "a port number or name",
                Addr::Portrange => "a port range such as 1000-2000",
                Addr::Proto | Addr::Protochain => "a protocol number or name",
                Addr::Gateway => "a host name",
            },
            Some(Kind::Src | Kind::Dst) => "`host`, `net`, `port`, `portrange` or an address",
            _ if allowed.has(Shape::Term) => "a primitive",
            _ => "an address, a name or a number",
        }
    }

    fn unexpected(&self, expected: &str) -> SyntaxError {
        self.unexpected_with(expected, false)
    }

    /// As [`Self::unexpected`], where a name would do: a keyword found there gets a hint.
    fn unexpected_name(&self, expected: &str) -> SyntaxError {
        self.unexpected_with(expected, true)
    }

    fn unexpected_with(&self, expected: &str, name: bool) -> SyntaxError {
        let previous = self.pos.checked_sub(1).and_then(|i| self.tokens.get(i));
        let after = previous
            .map(|t| format!(" after {}", quote(t.text)))
            .unwrap_or_default();
        let Some(found) = self.tokens.get(self.pos) else {
            return error(self.end, format!("unexpected end of expression{after}"));
        };
        let mut message = match found.kind {
            Kind::Bad(bad) => bad.message(found.text),
            _ => format!("expected {expected}{after}, found {}", quote(found.text)),
        };
        if name && found.kind.is_keyword() {
            message += &format!(" (a keyword; the name is `\\{}`)", found.text);
        }
        error(found.column, message)
    }

    fn error_here(&self, message: String) -> SyntaxError {
        error(
            self.tokens.get(self.pos).map_or(self.end, |t| t.column),
            message,
        )
    }
}

fn error(column: usize, message: String) -> SyntaxError {
    SyntaxError { column, message }
}

impl Bad {
    fn message(self, text: &str) -> String {
        let text = quote(text);
        match self {
            Bad::Char => format!("unexpected character {text}"),
            Bad::Octal => format!("{text} is not a number: a leading 0 means octal"),
            Bad::Overflow => format!("number {text} does not fit in 32 bits"),
            Bad::Mac => format!("{text} is not a MAC address"),
            Bad::Ipv6 => format!("{text} is not an IPv6 address"),
        }
    }
}

/// A token in backticks for a message, long ones cut short.
fn quote(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("`{}...`", prefix(text, cut)),
        None => format!("`{text}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::BTreeSet, process::Command};

    /// Expressions tcpdump 4.99 (libpcap 1.10) compiles for Ethernet, every part of the grammar.
    const VALID: &[&str] = &[
        "tcp",
        "ip6",
        "icmp6",
        "udp",
        "arp",
        "rarp",
        "sctp",
        "ether broadcast",
        "ether multicast",
        "broadcast",
        "multicast",
        "ip multicast",
        "ip6 multicast",
        "host localhost",
        "host 127.0.0.1",
        "src host 10.1.2.3",
        "dst host 10.1",
        "host localhost or 10.0.0.1",
        "host localhost and not 10.0.0.1",
        "src or dst host localhost",
        "src and dst net 10.0.0.0/8",
        "dst or src port 53",
        "net 10.0.0.0/8",
        "net 192.168",
        "net 10.0.0.0 mask 255.0.0.0",
        "ip net 172.16.0.0/12",
        "ip6 net fe80::/10",
        "ip6 host fe80::1",
        "host ::1",
        "ip6 host 2001:db8::ffff:1.2.3.4",
        "ip6 src host 1:2:3:4:5:6:7:8",
        "ether host 00:11:22:33:44:55",
        "ether src 00-11-22-33-44-55",
        "ether dst 0011.2233.4455",
        "ether host 001122334455",
        "port 80",
        "port http",
        "port domain",
        "tcp port ssh",
        "udp port 53",
        "tcp dst port 443",
        "tcp src port 1024",
        "portrange 1000-2000",
        "tcp portrange 6000-6010",
        "port 80 or 443",
        "not port 53 and 22",
        "tcp port 80 and (443 or 8080)",
        "port 80 and (host localhost or 443)",
        "host localhost and (tcp) and 127.0.0.1",
        "(port 80 or 443)",
        "port (80 or 443)",
        "port ((80) or 81)",
        "host (not (localhost) or localhost)",
        "not host localhost",
        "! tcp",
        "not not tcp",
        "tcp and not udp",
        "tcp && port 80 || udp",
        "ip proto \\tcp",
        "ip proto 17",
        "proto \\udp",
        "ip6 protochain 6",
        "ether proto \\ip",
        "ether proto 0x0800",
        "vlan",
        "vlan 100",
        "vlan 100 and tcp",
        "vlan (100)",
        "mpls",
        "mpls 42 and ip",
        "less 128",
        "greater 1500",
        "len > 100",
        "len <= 64",
        "length >= 1000",
        "tcp[tcpflags] & tcp-syn != 0",
        "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn",
        "tcp[13] & 2 != 0",
        "ip[0] & 0xf != 5",
        "ip[6:2] & 0x1fff = 0",
        "ip6[6] = 58",
        "ether[0] & 1 = 0",
        "icmp[icmptype] = icmp-echo",
        "icmp[icmptype] != icmp-echo and icmp[icmptype] != icmp-echoreply",
        "icmp[icmpcode] = 0",
        "icmp6[icmp6type] = icmp6-echo",
        "ip[2:2] > 576",
        "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420",
        "udp[8:4] = 0x12345678",
        "ip[9] = 6 && ip[0] >> 4 = 4",
        "len - 14 > 100",
        "(len + 1) * 2 < 3000",
        "ip[0] % 16 ^ 5 | 1 = 1",
        "-ip[0] < 0",
        "1 = 1",
        "0x10 = 020",
        "tcp[0:2] / 2 = 1",
        "ip and not (tcp or udp)",
        "((tcp))",
        "(tcp or udp) and host localhost",
        "ip host localhost and (tcp port 80 or udp port 53)",
        "not (port 22 or port 53)",
        "tcp port 80 and not src host 10.0.0.1",
        "ip broadcast",
        "inbound",
        "outbound",
        "pppoed",
        "pppoes 1",
        "geneve",
        "ifindex 1",
        "byte 0 = 1",
        "ip6 or tcp[tcpflags] & tcp-fin != 0",
        "   tcp   port   80   ",
        "tcp\tor\tudp",
    ];

    /// Expressions libpcap refuses: the column we name, and part of what we say.
    const INVALID: &[(&str, usize, &str)] = &[
        ("tcp port", 9, "unexpected end of expression after `port`"),
        (
            "port and 80",
            6,
            "expected a port number or name after `port`, found `and`",
        ),
        (
            "tcp port 80 and",
            16,
            "unexpected end of expression after `and`",
        ),
        (
            "host localhost or",
            18,
            "unexpected end of expression after `or`",
        ),
        (
            "host localhost and not",
            23,
            "unexpected end of expression after `not`",
        ),
        ("(tcp", 1, "unbalanced `(`"),
        ("tcp)", 4, "unbalanced `)`"),
        ("tcp port 80 and ((tcp port 81)", 17, "unbalanced `(`"),
        ("ether[0] & 1 = 0 and ether[1", 27, "unbalanced `[`"),
        ("()", 2, "expected a primitive after `(`, found `)`"),
        ("not", 4, "unexpected end of expression after `not`"),
        (
            "tcp and or udp",
            9,
            "expected a primitive after `and`, found `or`",
        ),
        (
            "tcp port 80 udp",
            13,
            "expected `and` or `or` after `80`, found `udp`",
        ),
        ("host localhost localhost", 16, "found `localhost`"),
        ("vlan 100 200", 10, "found `200`"),
        (
            "ip proto tcp",
            10,
            "found `tcp` (a keyword; the name is `\\tcp`)",
        ),
        ("localhost", 1, "needs a qualifier"),
        ("(localhost)", 2, "needs a qualifier"),
        ("80", 3, "unexpected end of expression after `80`"),
        ("ip[0]", 6, "unexpected end of expression after `]`"),
        ("ip[0] = 1 = 1", 11, "found `=`"),
        (
            "tcp[13 = 2",
            8,
            "expected an arithmetic operator, `:` or `]` after `13`, found `=`",
        ),
        (
            "tcp[13] & = 2",
            11,
            "expected a number or an arithmetic expression after `&`",
        ),
        ("len-1 > 5", 1, "put spaces around `-`"),
        ("tcp[0:3] = 1", 7, "the size must be 1, 2 or 4, not `3`"),
        ("tcp and 80", 9, "`80` needs a qualifier"),
        ("tcp and not localhost", 13, "`localhost` needs a qualifier"),
        ("tcp and (port 80) and 443", 23, "`443` needs a qualifier"),
        ("port 80 and (tcp or 443)", 21, "`443` needs a qualifier"),
        ("port 80 and (443 or host localhost)", 21, "found `host`"),
        (
            "host ((localhost))",
            8,
            "ids in parentheses may not start with `(`",
        ),
        (
            "tcp port (80 + 1)",
            14,
            "expected `and`, `or` or `)` after `80`, found `+`",
        ),
        ("net 10/8", 7, "found `/`"),
        (
            "net 10.0.0.0/(8)",
            14,
            "expected a number after `/`, found `(`",
        ),
        ("net 10.0.0.0 mask 0xff000000", 19, "expected a netmask"),
        ("less (100)", 6, "expected a number after `less`, found `(`"),
        (
            "src or localhost",
            8,
            "expected `dst` after `or`, found `localhost`",
        ),
        (
            "src or src host localhost",
            8,
            "expected `dst` after `or`, found `src`",
        ),
        ("byte 1 >= 2", 8, "found `>=`"),
        (
            "icmp[icmptype] = icmp-echo or",
            30,
            "unexpected end of expression after `or`",
        ),
        (
            "port 08",
            6,
            "`08` is not a number: a leading 0 means octal",
        ),
        ("port 99999999999", 6, "does not fit in 32 bits"),
        ("host 10.0.0.1 @ tcp", 15, "unexpected character `@`"),
        ("host localhost and é", 20, "unexpected character `é`"),
        (
            "ip6 host ::1.2.3.256",
            10,
            "`::1.2.3.256` is not an IPv6 address",
        ),
        ("ether host aa:bb:", 12, "`aa:bb:` is not a MAC address"),
        (
            "port 80 and -(443)",
            19,
            "unexpected end of expression after `)`",
        ),
        ("tcp or vpi 1", 8, "`vpi` applies to ATM captures only"),
        ("wlan type mgt", 6, "`type` applies to 802.11 captures only"),
        ("rnr 1", 1, "`rnr` applies to pflog captures only"),
        ("host on", 6, "found `on` (a keyword; the name is `\\on`)"),
    ];

    /// libpcap's verdict on `expr`, through `tcpdump -d` (no capture, no privileges): Ok, or
    /// its message.
    fn libpcap(expr: &str) -> Result<(), String> {
        let out = Command::new("tcpdump")
            .args(["-d", "-y", "EN10MB", "--", expr])
            .output()
            .unwrap_or_else(|e| {
                panic!("these tests compare with libpcap through `tcpdump -d`, which could not run ({e}): install tcpdump")
            });
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// [`libpcap`] on each of `exprs`, a few at a time.
    fn libpcap_all(exprs: &[String]) -> Vec<Result<(), String>> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let chunk = exprs.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let workers: Vec<_> = exprs
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().map(|e| libpcap(e)).collect::<Vec<_>>()))
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a tcpdump worker panicked"))
                .collect()
        })
    }

    /// libpcap could not parse it (rather than refusing what it means).
    fn is_syntax_error(message: &str) -> bool {
        message.contains("syntax error")
    }

    #[test]
    fn accepts_what_libpcap_accepts() {
        assert!(VALID.len() >= 80);
        let exprs: Vec<String> = VALID.iter().map(|e| e.to_string()).collect();
        for (expr, verdict) in exprs.iter().zip(libpcap_all(&exprs)) {
            assert_eq!(verdict, Ok(()), "tcpdump refuses {expr:?}: fix the list");
            assert_eq!(check(expr), Ok(()), "{expr:?}");
        }
    }

    #[test]
    fn refuses_what_libpcap_cannot_parse_and_says_where() {
        assert!(INVALID.len() >= 30);
        let exprs: Vec<String> = INVALID.iter().map(|(e, ..)| e.to_string()).collect();
        for ((expr, column, words), verdict) in INVALID.iter().zip(libpcap_all(&exprs)) {
            assert!(verdict.is_err(), "tcpdump accepts {expr:?}: fix the list");
            let err = check(expr).expect_err(expr);
            assert_eq!(err.column, *column, "{expr:?}: {err}");
            assert!(err.message.contains(words), "{expr:?}: {err}");
        }
    }

    #[test]
    fn the_scanner_takes_the_longest_match_and_the_earliest_rule() {
        let kinds = |expr| lex(expr).iter().map(|t| t.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds("1000-2000 len-1 tcpx es-is"),
            [Kind::Name, Kind::Name, Kind::Name, Kind::Protocol]
        );
        assert_eq!(
            kinds("001122334455 1.2.3.4.5.6 1.2.3.4.5"),
            [Kind::Mac, Kind::Mac, Kind::Name]
        );
        assert_eq!(
            kinds("10.1 0x1F 017 tcp-syn icmp6-echo"),
            [
                Kind::Ipv4,
                Kind::Num(31),
                Kind::Num(15),
                Kind::Num(2),
                Kind::Num(128)
            ]
        );
        assert_eq!(
            kinds("aa:bb:cc:dd:ee:ff:11:22 :: ::ffff:1.2.3.4"),
            [Kind::Ipv6; 3]
        );
        assert_eq!(
            kinds("0x 08 4294967296"),
            [Kind::Name, Kind::Bad(Bad::Octal), Kind::Bad(Bad::Overflow)]
        );
        assert_eq!(
            kinds("\\tcp $1f &&|| !="),
            [
                Kind::Name,
                Kind::Arcnet,
                Kind::And,
                Kind::Or,
                Kind::Op(Op::Rel)
            ]
        );
        assert_eq!(
            lex("a  é\tb").iter().map(|t| t.column).collect::<Vec<_>>(),
            [1, 4, 6]
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let nested = |n| format!("{}tcp{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
        let err = check(&nested(MAX_DEPTH + 1)).expect_err("too deep");
        assert_eq!(
            (err.column, err.message.as_str()),
            (MAX_DEPTH + 1, "nested more than 64 deep")
        );
        let brackets = format!(
            "{}0{} = 0",
            "ip[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert!(check(&brackets).is_err());
    }

    /// Whatever the input, an answer and no panic, in time linear in its length.
    #[test]
    fn odd_input_gets_an_answer() {
        let long = |s: &str| s.repeat(100_000);
        for expr in [
            long("("),
            long(")"),
            long("not "),
            long("- "),
            long("1"),
            long("0x1"),
            long("a-"),
            long("1."),
            long(":"),
            long("1:"),
            long("ff::"),
            long("tcp and "),
            long("\\"),
            long("$"),
            long("é"),
            "\0".to_owned(),
            "\u{feff}tcp".to_owned(),
            "tcp\u{b}".to_owned(),
        ] {
            check(&expr).ok();
        }
        assert_eq!(check(&format!("{}tcp", long("not "))), Ok(()));
        assert_eq!(check(&format!("{}1 = 1", long("- "))), Ok(()));
        assert_eq!(check(&format!("port 80{}", long(" or 80"))), Ok(()));
        assert_eq!(check(" \t\r\n"), Ok(()));
    }

    /// Every prefix of a valid expression: where libpcap cannot parse it we refuse it too, and
    /// where libpcap compiles it we accept it.
    #[test]
    fn agrees_with_libpcap_on_every_prefix() {
        let prefixes: BTreeSet<String> = VALID
            .iter()
            .flat_map(|e| e.char_indices().map(move |(i, _)| &e[..i]))
            .filter(|p| !p.trim().is_empty() && !p.ends_with(char::is_whitespace))
            .map(str::to_owned)
            .collect();
        let prefixes: Vec<String> = prefixes.into_iter().collect();
        let mut wrong = Vec::new();
        for (prefix, verdict) in prefixes.iter().zip(libpcap_all(&prefixes)) {
            match (&verdict, check(prefix)) {
                (Ok(()), Err(err)) => {
                    wrong.push(format!("{prefix:?}: libpcap accepts, we say {err}"))
                }
                (Err(msg), Ok(())) if is_syntax_error(msg) => {
                    wrong.push(format!("{prefix:?}: libpcap says {msg}, we accept"))
                }
                _ => {}
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {} prefixes:\n{}",
            wrong.len(),
            prefixes.len(),
            wrong.join("\n")
        );
    }

    /// Random strings of pcap-filter words against libpcap (`--ignored`: a few minutes).
    #[test]
    #[ignore = "runs tcpdump 20000 times"]
    fn agrees_with_libpcap_on_random_expressions() {
        const WORDS: &[&str] = &[
            "tcp",
            "udp",
            "ip",
            "ip6",
            "ether",
            "vlan",
            "host",
            "net",
            "port",
            "portrange",
            "proto",
            "src",
            "dst",
            "and",
            "or",
            "not",
            "!",
            "&&",
            "(",
            "(",
            ")",
            ")",
            "[",
            "]",
            ":",
            "80",
            "1",
            "4",
            "0x10",
            "localhost",
            "10.1",
            "10.0.0.0",
            "::1",
            "/",
            "mask",
            "255.0.0.0",
            "=",
            "!=",
            ">",
            "<=",
            "&",
            "+",
            "-",
            "*",
            "len",
            "\\tcp",
            "broadcast",
            "1000-2000",
            "00:11:22:33:44:55",
            "tcpflags",
            "tcp-syn",
            "less",
            "byte",
            "llc",
            "rnr",
            "type",
            "vpi",
            "http",
            "gateway",
            "protochain",
            "multicast",
            "mpls",
            "icmp",
            "arp",
            "inbound",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        // Half strings of random words, half valid expressions with a word or two changed.
        let mut exprs = BTreeSet::new();
        while exprs.len() < 20_000 {
            let mut words: Vec<&str> = if exprs.len() % 2 == 0 {
                (0..1 + next(8)).map(|_| WORDS[next(WORDS.len())]).collect()
            } else {
                VALID[next(VALID.len())].split_whitespace().collect()
            };
            for _ in 0..1 + next(2) {
                let at = next(words.len() + 1);
                match next(3) {
                    0 if at < words.len() => drop(words.remove(at)),
                    1 if at < words.len() => words[at] = WORDS[next(WORDS.len())],
                    _ => words.insert(at, WORDS[next(WORDS.len())]),
                }
            }
            exprs.insert(words.join(" "));
        }
        let exprs: Vec<String> = exprs.into_iter().collect();
        let mut wrong = Vec::new();
        for (expr, verdict) in exprs.iter().zip(libpcap_all(&exprs)) {
            match (&verdict, check(expr)) {
                (Ok(()), Err(err)) => {
                    wrong.push(format!("{expr:?}: libpcap accepts, we say {err}"))
                }
                (Err(msg), Ok(())) if is_syntax_error(msg) => {
                    wrong.push(format!("{expr:?}: libpcap says {msg}, we accept"))
                }
                (Err(msg), Err(err)) if !is_syntax_error(msg) => {
                    println!("{expr:?}: libpcap says {msg}, we say {err}")
                }
                _ => {}
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {}:\n{}",
            wrong.len(),
            exprs.len(),
            wrong.join("\n")
        );
    }
}
