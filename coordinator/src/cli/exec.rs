//! `baton exec POD [-c CONTAINER] [-i] [-t] -- COMMAND [ARGS...]`, as kubectl has it: the
//! command runs in the pod's container on its node, stdin forwarded with `-i`, a terminal
//! with `-t` (raw mode here, window size and its changes sent along), and the command's
//! exit status becomes this process's.

use std::io::{IsTerminal, Read, Write};

use tokio::io::AsyncWriteExt;

use super::client::Client;
use super::CliError;
use crate::contract::exec::{read_server, ClientFrame, ServerFrame, MAX_FRAME, UPGRADE};
use crate::contract::routes::PodExecNamespaced;

#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// The pod (`NAME` or `pod/NAME`).
    pub pod: String,
    /// The container; the pod's first when not given.
    #[arg(short = 'c', long, env = "BATON_EXEC_CONTAINER")]
    pub container: Option<String>,
    /// Pass stdin to the command.
    #[arg(short = 'i', long, env = "BATON_EXEC_STDIN")]
    pub stdin: bool,
    /// Give the command a terminal (only when stdin is one).
    #[arg(short = 't', long, env = "BATON_EXEC_TTY")]
    pub tty: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

impl ExecArgs {
    fn route(
        &self,
        namespace: &str,
        tty: bool,
        size: Option<(u16, u16)>,
    ) -> Result<PodExecNamespaced, CliError> {
        let name = match self.pod.split_once('/') {
            Some(("pod" | "pods" | "po", n)) => n,
            Some((k, _)) => {
                return Err(CliError::Usage(format!(
                    "error: exec is for pods, not {k:?}"
                )))
            }
            None => self.pod.as_str(),
        };
        let on = |b: bool| b.then(|| "true".to_owned());
        Ok(PodExecNamespaced {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            container: self.container.clone(),
            command: serde_json::to_string(&self.command)
                .map_err(|e| CliError::Usage(e.to_string()))?,
            stdin: on(self.stdin),
            tty: on(tty),
            rows: size.map(|s| s.0.to_string()),
            cols: size.map(|s| s.1.to_string()),
        })
    }
}

/// The terminal's rows and columns.
fn window() -> Option<(u16, u16)> {
    let w = rustix::termios::tcgetwinsize(std::io::stdin()).ok()?;
    Some((w.ws_row, w.ws_col))
}

/// The terminal in raw mode until dropped (keys go to the remote terminal as typed).
struct Raw(rustix::termios::Termios);

impl Raw {
    fn enter() -> Option<Self> {
        let saved = rustix::termios::tcgetattr(std::io::stdin()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &raw,
        )
        .ok()?;
        Some(Self(saved))
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}

/// Runs the command; `Err(CliError::Exited(n))` when it exited with `n != 0`.
pub(super) async fn exec(client: &Client, args: &ExecArgs) -> Result<String, CliError> {
    let mut tty = args.tty;
    if tty && !std::io::stdin().is_terminal() {
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
        tty = false;
    }
    let size = if tty { window() } else { None };
    let upgraded = client
        .upgrade(&args.route(client.namespace(), tty, size)?, UPGRADE)
        .await?;
    let (mut from_server, mut to_server) = tokio::io::split(upgraded);
    let raw = if tty { Raw::enter() } else { None };
    // Stdin is read by a thread of its own: a read blocked on a terminal must not keep the
    // process from exiting when the command ends.
    let (input_tx, mut input) = tokio::sync::mpsc::channel::<ClientFrame>(4);
    if args.stdin {
        let tx = input_tx.clone();
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; MAX_FRAME];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.blocking_send(ClientFrame::Eof);
                        return;
                    }
                    Ok(n) => {
                        if tx
                            .blocking_send(ClientFrame::Stdin(buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    }
    if tty {
        if let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        {
            let tx = input_tx.clone();
            tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some((rows, cols)) = window() {
                        if tx.send(ClientFrame::Resize { rows, cols }).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }
    drop(input_tx);
    let writer = tokio::spawn(async move {
        while let Some(f) = input.recv().await {
            if to_server.write_all(&f.encode()).await.is_err() {
                return;
            }
            let _ = to_server.flush().await;
        }
    });
    let end = loop {
        match read_server(&mut from_server).await {
            Ok(Some(ServerFrame::Stdout(d))) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&d);
                let _ = out.flush();
            }
            Ok(Some(ServerFrame::Stderr(d))) => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(&d);
                let _ = err.flush();
            }
            Ok(Some(ServerFrame::Exit(code))) => break Ok(code),
            Ok(Some(ServerFrame::Error(why))) => break Err(CliError::Exec(why)),
            Ok(None) => {
                break Err(CliError::Exec(
                    "the connection closed before the command ended".into(),
                ))
            }
            Err(e) => break Err(CliError::Exec(format!("the exec stream broke: {e}"))),
        }
    };
    writer.abort();
    drop(raw);
    match end? {
        0 => Ok(String::new()),
        code => Err(CliError::Exited(code)),
    }
}
