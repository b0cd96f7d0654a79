//! A blocking client for the KV protocol, with timeouts so a dead store fails fast.

use std::fmt;
use std::io::{self, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::proto::{self, read_reply, Reply};
use crate::net;

#[derive(Debug)]
pub enum ClientError {
    /// Connect, read or write failed (the store is down, unreachable or too slow).
    Io(io::Error),
    /// The store answered `ERR ...`.
    Server(String),
    /// The store answered something the command does not expect.
    Protocol(String),
    /// The request itself is not valid (a bad key or value); nothing was sent.
    Invalid(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "kv: {e}"),
            ClientError::Server(m) => write!(f, "kv error: {m}"),
            ClientError::Protocol(m) => write!(f, "kv protocol: {m}"),
            ClientError::Invalid(m) => write!(f, "kv request: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects to `host:port` (host may be `host-gateway`), trying each resolved address.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr}: no addresses"));
        for sa in net::resolve(addr)? {
            match TcpStream::connect_timeout(&sa, timeout) {
                Ok(s) => {
                    s.set_read_timeout(Some(timeout))?;
                    s.set_write_timeout(Some(timeout))?;
                    s.set_nodelay(true)?;
                    let writer = s.try_clone()?;
                    return Ok(Client {
                        reader: BufReader::new(s),
                        writer,
                    });
                }
                Err(e) => last = io::Error::new(e.kind(), format!("connect {addr} ({sa}): {e}")),
            }
        }
        Err(ClientError::Io(last))
    }

    /// Sends one command line and reads its reply; an `ERR` becomes `ClientError::Server`.
    pub fn call(&mut self, line: &str) -> Result<Reply, ClientError> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        match read_reply(&mut self.reader)? {
            Reply::Err(m) => Err(ClientError::Server(m)),
            r => Ok(r),
        }
    }

    fn unexpected<T>(what: &str, r: Reply) -> Result<T, ClientError> {
        Err(ClientError::Protocol(format!(
            "{what}: unexpected reply {:?}",
            r.to_string().trim_end()
        )))
    }

    pub fn ping(&mut self) -> Result<(), ClientError> {
        match self.call("PING")? {
            Reply::Pong => Ok(()),
            r => Self::unexpected("PING", r),
        }
    }

    pub fn get(&mut self, key: &str) -> Result<Option<String>, ClientError> {
        proto::check_key(key).map_err(|e| ClientError::Invalid(e.0))?;
        match self.call(&format!("GET {key}"))? {
            Reply::Val(v) => Ok(Some(v)),
            Reply::Nil => Ok(None),
            r => Self::unexpected("GET", r),
        }
    }

    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ClientError> {
        proto::check_key(key).map_err(|e| ClientError::Invalid(e.0))?;
        proto::check_value(value).map_err(|e| ClientError::Invalid(e.0))?;
        match self.call(&format!("SET {key} {value}"))? {
            Reply::Ok => Ok(()),
            r => Self::unexpected("SET", r),
        }
    }

    /// Deletes a key; true if it existed.
    pub fn del(&mut self, key: &str) -> Result<bool, ClientError> {
        proto::check_key(key).map_err(|e| ClientError::Invalid(e.0))?;
        match self.call(&format!("DEL {key}"))? {
            Reply::Int(n) => Ok(n > 0),
            r => Self::unexpected("DEL", r),
        }
    }

    pub fn incr(&mut self, key: &str) -> Result<i64, ClientError> {
        proto::check_key(key).map_err(|e| ClientError::Invalid(e.0))?;
        match self.call(&format!("INCR {key}"))? {
            Reply::Int(n) => Ok(n),
            r => Self::unexpected("INCR", r),
        }
    }

    pub fn keys(&mut self, prefix: &str) -> Result<Vec<String>, ClientError> {
        match self.call(&format!("KEYS {prefix}"))? {
            Reply::Arr(keys) => Ok(keys),
            r => Self::unexpected("KEYS", r),
        }
    }

    /// Every `(key, value)` whose key starts with `prefix`, sorted by key.
    pub fn scan(&mut self, prefix: &str) -> Result<Vec<(String, String)>, ClientError> {
        match self.call(&format!("SCAN {prefix}"))? {
            Reply::Arr(lines) => lines
                .into_iter()
                .map(|l| match l.split_once(' ') {
                    Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
                    None => Err(ClientError::Protocol(format!("SCAN: bad line {l:?}"))),
                })
                .collect(),
            r => Self::unexpected("SCAN", r),
        }
    }

    /// The `INFO` line, e.g. `role=replica primary=10.0.0.1:6379 link=up keys=3`.
    pub fn info(&mut self) -> Result<String, ClientError> {
        match self.call("INFO")? {
            Reply::Val(v) => Ok(v),
            r => Self::unexpected("INFO", r),
        }
    }
}
