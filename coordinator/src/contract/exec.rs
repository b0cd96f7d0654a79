//! `baton exec` over HTTP: the `PodExec` route upgrades its connection (HTTP/1.1
//! `Upgrade: baton-exec`, answered `101 Switching Protocols`) and then both sides speak
//! these frames over it: a kind byte, a big-endian u32 length, the bytes.
//!
//! Why an upgrade and not WebSocket: the stream is ours at both ends (the CLI and the
//! server, through this one module), hyper and reqwest upgrade without a new dependency,
//! and the frames are five bytes of header instead of a WebSocket's masking and
//! fragmentation. A browser client (the dashboard) would need WebSocket; it can be added
//! beside this route with the same session underneath.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The protocol named in `Upgrade:`.
pub const UPGRADE: &str = "baton-exec";
/// The longest frame either side accepts.
pub const MAX_FRAME: usize = 64 * 1024;

/// Client to server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Stdin(Vec<u8>),
    /// The end of stdin.
    Eof,
    /// The terminal's new size (`-t`).
    Resize {
        rows: u16,
        cols: u16,
    },
}

/// Server to client. `Exit` or `Error` is the last frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command's status (128 + n when killed by signal n).
    Exit(i32),
    /// Why the command could not run, or the session broke.
    Error(String),
}

fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + data.len());
    out.push(kind);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

impl ClientFrame {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Stdin(d) => frame(0, d),
            Self::Eof => frame(1, &[]),
            Self::Resize { rows, cols } => {
                let mut d = rows.to_be_bytes().to_vec();
                d.extend_from_slice(&cols.to_be_bytes());
                frame(2, &d)
            }
        }
    }

    fn decode(kind: u8, data: Vec<u8>) -> io::Result<Self> {
        Ok(match (kind, data.len()) {
            (0, _) => Self::Stdin(data),
            (1, 0) => Self::Eof,
            (2, 4) => Self::Resize {
                rows: u16::from_be_bytes([data[0], data[1]]),
                cols: u16::from_be_bytes([data[2], data[3]]),
            },
            _ => return Err(bad(kind)),
        })
    }
}

impl ServerFrame {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Stdout(d) => frame(1, d),
            Self::Stderr(d) => frame(2, d),
            Self::Exit(code) => frame(3, &code.to_be_bytes()),
            Self::Error(why) => frame(4, why.as_bytes()),
        }
    }

    fn decode(kind: u8, data: Vec<u8>) -> io::Result<Self> {
        Ok(match (kind, data.len()) {
            (1, _) => Self::Stdout(data),
            (2, _) => Self::Stderr(data),
            (3, 4) => Self::Exit(i32::from_be_bytes([data[0], data[1], data[2], data[3]])),
            (4, _) => Self::Error(String::from_utf8_lossy(&data).into_owned()),
            _ => return Err(bad(kind)),
        })
    }
}

fn bad(kind: u8) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad exec frame (kind {kind})"),
    )
}

/// Reads one frame's kind and bytes; `None` at a clean end of stream.
async fn read_raw<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..]).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("exec frame of {len} bytes, over {MAX_FRAME}"),
        ));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    Ok(Some((head[0], data)))
}

pub async fn read_client<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<ClientFrame>> {
    match read_raw(r).await? {
        Some((k, d)) => ClientFrame::decode(k, d).map(Some),
        None => Ok(None),
    }
}

pub async fn read_server<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<ServerFrame>> {
    match read_raw(r).await? {
        Some((k, d)) => ServerFrame::decode(k, d).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let client = [
            ClientFrame::Stdin(b"ab".to_vec()),
            ClientFrame::Eof,
            ClientFrame::Resize { rows: 24, cols: 80 },
        ];
        let bytes: Vec<u8> = client.iter().flat_map(|f| f.encode()).collect();
        assert_eq!(&bytes[..7], &[0, 0, 0, 0, 2, b'a', b'b']);
        let mut r = &bytes[..];
        for f in &client {
            assert_eq!(read_client(&mut r).await.unwrap().as_ref(), Some(f));
        }
        assert_eq!(read_client(&mut r).await.unwrap(), None);
        let server = [
            ServerFrame::Stdout(b"o".to_vec()),
            ServerFrame::Stderr(b"e".to_vec()),
            ServerFrame::Exit(-3),
            ServerFrame::Error("why".into()),
        ];
        let bytes: Vec<u8> = server.iter().flat_map(|f| f.encode()).collect();
        let mut r = &bytes[..];
        for f in &server {
            assert_eq!(read_server(&mut r).await.unwrap().as_ref(), Some(f));
        }
        // A frame over the bound, or of an unknown kind, is refused.
        let mut big = &[1u8, 0, 2, 0, 0][..];
        assert!(read_server(&mut big).await.is_err());
        let mut odd = &[9u8, 0, 0, 0, 0][..];
        assert!(read_client(&mut odd).await.is_err());
    }
}
