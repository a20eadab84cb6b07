//! pcap-filter expressions, as tcpdump takes them: their syntax checked with positions
//! ([`syntax`]), libpcap's classic BPF for them ([`cbpf`]), which userspace runs on the frames
//! it judges, and its eBPF form ([`ebpf`]), which the kernel side runs at the hooks where flows
//! start.

pub mod cbpf;
pub mod ebpf;
pub(crate) mod syntax;

use std::{fmt, path::Path};

/// A pcap-filter expression and libpcap's program for it.
#[derive(Clone, PartialEq, Eq)]
pub struct Expression {
    text: String,
    program: Vec<cbpf::Insn>,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expression({:?})", self.text)
    }
}

/// Why an expression was refused: one line, naming where.
#[derive(Debug, thiserror::Error)]
pub enum ExprError {
    #[error("filter expression {text:?}: {err}")]
    Syntax {
        text: String,
        err: syntax::SyntaxError,
    },
    #[error("filter expression {text:?}: {msg}{at}")]
    Rejected {
        text: String,
        msg: String,
        /// ` at column N` when the message names a word of the expression.
        at: String,
    },
    #[error(transparent)]
    Libpcap(cbpf::CompileError),
    #[error("filter file {path}: {err}")]
    File { path: String, err: std::io::Error },
}

impl Expression {
    /// `text` checked and compiled; `None` for an empty expression (everything).
    pub fn new(text: &str) -> Result<Option<Self>, ExprError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        syntax::check(text).map_err(|err| ExprError::Syntax {
            text: text.to_string(),
            err,
        })?;
        let program = cbpf::compile(text).map_err(|e| match e {
            cbpf::CompileError::Rejected(msg) => ExprError::Rejected {
                at: column_of_named_word(text, &msg)
                    .map(|c| format!(" at column {c}"))
                    .unwrap_or_default(),
                text: text.to_string(),
                msg,
            },
            other => ExprError::Libpcap(other),
        })?;
        Ok(Some(Self {
            text: text.to_string(),
            program,
        }))
    }

    /// The words of a command line (`pathtrace ... tcp port 80`), or the file `-f` names (as
    /// tcpdump's `-F`: the whole file is the expression).
    pub fn from_args(words: &[String], file: Option<&Path>) -> Result<Option<Self>, ExprError> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| ExprError::File {
                    path: path.display().to_string(),
                    err,
                })?;
                Self::new(&text)
            }
            None => Self::new(&words.join(" ")),
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// libpcap's classic program.
    pub fn program(&self) -> &[cbpf::Insn] {
        &self.program
    }

    /// Whether tcpdump would keep the frame (`bytes` as captured, `wire_len` on the wire).
    pub fn keeps(&self, bytes: &[u8], wire_len: u32) -> bool {
        cbpf::run(&self.program, bytes, wire_len) != 0
    }

    /// The conjunction `(self) and (other)`.
    pub fn and(&self, other: &Expression) -> Result<Self, ExprError> {
        let text = format!("({}) and ({})", self.text, other.text);
        Self::new(&text).map(|e| e.expect("not empty"))
    }
}

/// The 1-based column of the word of `text` that libpcap's message names
/// (`illegal port number 99999 > 65535`, `unknown host 'foo'`): the one word of the expression
/// the message holds, or, of several, the one it quotes or the one with a digit.
fn column_of_named_word(text: &str, msg: &str) -> Option<usize> {
    let said: Vec<&str> = msg
        .split(|c: char| c.is_whitespace() || "\"`:,".contains(c))
        .collect();
    let mut named = Vec::new();
    let mut offset = 0;
    for word in text.split_inclusive(|c: char| c.is_whitespace() || "()".contains(c)) {
        let lead = word.len() - word.trim_start_matches(['(', '!']).len();
        let w = word[lead..].trim_end_matches(|c: char| c.is_whitespace() || "()".contains(c));
        if w.len() > 1 && said.iter().any(|m| m.trim_matches('\'') == w) {
            let column = text[..offset + lead].chars().count() + 1;
            let strong = msg.contains(&format!("'{w}'")) || w.chars().any(|c| c.is_ascii_digit());
            named.push((column, strong));
        }
        offset += word.len();
    }
    let strong: Vec<usize> = named.iter().filter(|n| n.1).map(|n| n.0).collect();
    match (strong.as_slice(), named.as_slice()) {
        ([one], _) => Some(*one),
        ([], [(one, _)]) => Some(*one),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_expression_names_its_column() {
        let e = Expression::new("tcp and port 99999")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at column 14"), "{e}");
        let e = Expression::new("tcp prt 80").unwrap_err().to_string();
        assert!(e.contains("column"), "{e}");
        assert!(Expression::new("  ").unwrap().is_none());
    }

    #[test]
    fn flag_filters_and_an_expression_combine() {
        let a = Expression::new("udp").unwrap().unwrap();
        let b = Expression::new("not port 53").unwrap().unwrap();
        assert_eq!(a.and(&b).unwrap().text(), "(udp) and (not port 53)");
    }
}
