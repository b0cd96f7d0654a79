//! The KV wire protocol: one command per line, one reply per command (see images/README.md).
//!
//! Lines end in `\n` (a `\r` before it is dropped, so `nc -C` and telnet work). Keys are
//! 1..=256 bytes with no whitespace. A value is the rest of the line after `SET key `, so
//! it may hold spaces but not CR or LF; the todo app stores compact JSON, which never does.

use std::fmt;
use std::io::{self, BufRead, Read};

/// The longest line a peer may send: a 64 KiB value plus the command and key, with room.
pub const MAX_LINE: usize = 80 * 1024;
pub const MAX_KEY: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ping,
    Get(String),
    Set(String, String),
    Del(String),
    /// Adds one to an integer value (a missing key counts as 0) and returns the result.
    Incr(String),
    /// The keys starting with a prefix (all keys for an empty prefix), sorted.
    Keys(String),
    /// Like KEYS, but every line is `key value`: one round trip for a listing.
    Scan(String),
    Info,
    /// Asks for replication: a full snapshot, then a stream of writes (replicas send it).
    Sync,
}

impl Command {
    pub fn is_write(&self) -> bool {
        matches!(self, Command::Set(..) | Command::Del(_) | Command::Incr(_))
    }
}

/// One reply line (ARR is followed by its item lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Pong,
    Val(String),
    Nil,
    Int(i64),
    Arr(Vec<String>),
    Err(String),
}

impl fmt::Display for Reply {
    /// The exact bytes on the wire, each line ending in `\n`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Ok => writeln!(f, "OK"),
            Reply::Pong => writeln!(f, "PONG"),
            Reply::Val(v) => writeln!(f, "VAL {v}"),
            Reply::Nil => writeln!(f, "NIL"),
            Reply::Int(n) => writeln!(f, "INT {n}"),
            Reply::Arr(items) => {
                writeln!(f, "ARR {}", items.len())?;
                items.iter().try_for_each(|i| writeln!(f, "{i}"))
            }
            // An error message must stay on its line.
            Reply::Err(m) => writeln!(f, "ERR {}", m.replace(['\r', '\n'], " ")),
        }
    }
}

/// Why a line is not a valid command; sent back as `ERR <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError(pub String);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtoError {}

fn perr<T>(m: impl Into<String>) -> Result<T, ProtoError> {
    Err(ProtoError(m.into()))
}

/// Checks a key: non-empty, at most MAX_KEY bytes, no whitespace or control characters.
pub fn check_key(key: &str) -> Result<(), ProtoError> {
    if key.is_empty() {
        return perr("missing key");
    }
    if key.len() > MAX_KEY {
        return perr(format!("key longer than {MAX_KEY} bytes"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return perr("key contains whitespace or control characters");
    }
    Ok(())
}

/// Checks a value: it must fit on one line.
pub fn check_value(value: &str) -> Result<(), ProtoError> {
    if value.contains(['\r', '\n']) {
        return perr("value contains CR or LF");
    }
    if value.len() > MAX_LINE - MAX_KEY - 16 {
        return perr("value too long");
    }
    Ok(())
}

/// Parses one line (without its line end) into a command.
pub fn parse_command(line: &str) -> Result<Command, ProtoError> {
    let (name, rest) = match line.split_once(' ') {
        Some((n, r)) => (n, Some(r)),
        None => (line, None),
    };
    let name = name.to_ascii_uppercase();
    // Commands taking exactly one key (or, for KEYS/SCAN, an optional prefix).
    let one = |rest: Option<&str>| -> Result<String, ProtoError> {
        let k = rest.unwrap_or("");
        if k.contains(' ') {
            return perr(format!("{name} takes one key"));
        }
        check_key(k)?;
        Ok(k.to_owned())
    };
    let prefix = |rest: Option<&str>| -> Result<String, ProtoError> {
        match rest {
            None | Some("") => Ok(String::new()),
            Some(p) => one(Some(p)),
        }
    };
    let none = |cmd: Command| match rest {
        None => Ok(cmd),
        Some(_) => perr(format!("{name} takes no arguments")),
    };
    match name.as_str() {
        "" => perr("empty command"),
        "PING" => none(Command::Ping),
        "INFO" => none(Command::Info),
        "SYNC" => none(Command::Sync),
        "GET" => Ok(Command::Get(one(rest)?)),
        "DEL" => Ok(Command::Del(one(rest)?)),
        "INCR" => Ok(Command::Incr(one(rest)?)),
        "KEYS" => Ok(Command::Keys(prefix(rest)?)),
        "SCAN" => Ok(Command::Scan(prefix(rest)?)),
        "SET" => {
            let Some((key, value)) = rest.and_then(|r| r.split_once(' ')) else {
                return perr("usage: SET key value");
            };
            check_key(key)?;
            check_value(value)?;
            Ok(Command::Set(key.to_owned(), value.to_owned()))
        }
        _ => perr(format!("unknown command {name:?}")),
    }
}

/// Reads one line of at most `max` bytes, without its `\n` or `\r\n`. `Ok(None)` at a clean
/// end of stream. A longer line, a line cut off by the end of stream, or invalid UTF-8 is an
/// `InvalidData` error: the stream cannot be resynchronised after that, so callers close it.
pub fn read_line(r: &mut impl BufRead, max: usize) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(max as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        let why = if buf.len() > max {
            "line too long"
        } else {
            "connection closed mid-line"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidData, why));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

/// Reads one reply, including the item lines of an ARR.
pub fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let line = read_line(r, MAX_LINE)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))?;
    let (head, rest) = match line.split_once(' ') {
        Some((h, r)) => (h, Some(r)),
        None => (line.as_str(), None),
    };
    Ok(match (head, rest) {
        ("OK", None) => Reply::Ok,
        ("PONG", None) => Reply::Pong,
        ("NIL", None) => Reply::Nil,
        ("VAL", Some(v)) => Reply::Val(v.to_owned()),
        ("ERR", m) => Reply::Err(m.unwrap_or("").to_owned()),
        ("INT", Some(n)) => Reply::Int(
            n.parse()
                .map_err(|_| bad(format!("bad INT reply {line:?}")))?,
        ),
        ("ARR", Some(n)) => {
            let n: usize = n
                .parse()
                .map_err(|_| bad(format!("bad ARR reply {line:?}")))?;
            // Do not trust the count for an allocation; grow as lines really arrive.
            let mut items = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                items.push(read_line(r, MAX_LINE)?.ok_or_else(|| bad("ARR cut short".into()))?);
            }
            Reply::Arr(items)
        }
        _ => return Err(bad(format!("unexpected reply {line:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse_command("PING"), Ok(Command::Ping));
        assert_eq!(parse_command("ping"), Ok(Command::Ping));
        assert_eq!(parse_command("GET a"), Ok(Command::Get("a".into())));
        assert_eq!(
            parse_command("SET a  hello world "),
            Ok(Command::Set("a".into(), " hello world ".into()))
        );
        assert_eq!(
            parse_command("SET a "),
            Ok(Command::Set("a".into(), "".into()))
        );
        assert_eq!(parse_command("DEL a"), Ok(Command::Del("a".into())));
        assert_eq!(parse_command("INCR n"), Ok(Command::Incr("n".into())));
        assert_eq!(parse_command("KEYS"), Ok(Command::Keys("".into())));
        assert_eq!(
            parse_command("KEYS todo:"),
            Ok(Command::Keys("todo:".into()))
        );
        assert_eq!(
            parse_command("SCAN todo:"),
            Ok(Command::Scan("todo:".into()))
        );
        assert_eq!(parse_command("INFO"), Ok(Command::Info));
        assert_eq!(parse_command("SYNC"), Ok(Command::Sync));
    }

    #[test]
    fn rejects_bad_commands_with_a_reason() {
        for (line, why) in [
            ("", "empty command"),
            ("FLY a", "unknown command"),
            ("GET", "missing key"),
            ("GET a b", "takes one key"),
            ("SET a", "usage: SET"),
            ("SET", "usage: SET"),
            ("PING x", "takes no arguments"),
            ("GET a\tb", "whitespace"),
        ] {
            let e = parse_command(line).unwrap_err();
            assert!(e.0.contains(why), "{line:?}: {e}");
        }
        assert!(parse_command(&format!("GET {}", "k".repeat(MAX_KEY + 1))).is_err());
        assert!(parse_command(&format!("GET {}", "k".repeat(MAX_KEY))).is_ok());
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Ok,
            Reply::Pong,
            Reply::Val("a b {\"c\":1}".into()),
            Reply::Val(String::new()),
            Reply::Nil,
            Reply::Int(-3),
            Reply::Arr(vec![]),
            Reply::Arr(vec!["k1 v1".into(), "k2".into()]),
            Reply::Err("readonly replica".into()),
        ] {
            let wire = reply.to_string();
            assert_eq!(
                read_reply(&mut Cursor::new(wire.as_bytes())).unwrap(),
                reply,
                "{wire:?}"
            );
        }
        // Error text cannot break the framing.
        assert_eq!(Reply::Err("a\nb".into()).to_string(), "ERR a b\n");
    }

    #[test]
    fn line_reader_limits_and_framing() {
        let mut r = Cursor::new(b"PING\r\nGET a\n".to_vec());
        assert_eq!(read_line(&mut r, 16).unwrap().as_deref(), Some("PING"));
        assert_eq!(read_line(&mut r, 16).unwrap().as_deref(), Some("GET a"));
        assert_eq!(read_line(&mut r, 16).unwrap(), None);

        let long = format!("{}\n", "x".repeat(17));
        let e = read_line(&mut Cursor::new(long.into_bytes()), 16).unwrap_err();
        assert_eq!(e.to_string(), "line too long");
        let e = read_line(&mut Cursor::new(b"PIN".to_vec()), 16).unwrap_err();
        assert_eq!(e.to_string(), "connection closed mid-line");
        let e = read_line(&mut Cursor::new(b"\xff\n".to_vec()), 16).unwrap_err();
        assert_eq!(e.to_string(), "line is not UTF-8");
    }

    #[test]
    fn arr_cut_short_is_an_error() {
        assert!(read_reply(&mut Cursor::new(b"ARR 3\na\n".to_vec())).is_err());
        assert!(read_reply(&mut Cursor::new(b"ARR x\n".to_vec())).is_err());
        assert!(read_reply(&mut Cursor::new(b"WHAT\n".to_vec())).is_err());
    }
}
