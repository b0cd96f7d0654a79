//! `PodExec`: `baton exec`, an upgraded connection carrying [`crate::contract::exec`]'s
//! frames, bridged to an exec session ([`crate::edge::exec`]). The core checks the request
//! and records the event ([`ApiOp::Exec`]) before anything reaches the node; the command's
//! bytes never pass through the core.
//!
//! Only an admin token gets here: the route is a `POST`, which the read-only role may not
//! call (`crate::security::auth::authorize`).

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use baton_proto::{BVec, ExecAction, ExecStream, MAX_EXEC_CHUNK};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};

use super::{AppState, Failure};
use crate::contract::exec::{read_client, ClientFrame, ServerFrame, UPGRADE};
use crate::core::{ApiError, ApiOp, ApiReply, ApiRequest, Event};
use crate::edge::exec::{ExecEvent, ExecQuery, ExecRx, ExecTx, KEEP_ALIVE};

/// The query of [`crate::contract::routes::PodExec`] (its path holds the name).
#[derive(Debug, Deserialize)]
pub(super) struct ExecParams {
    container: Option<String>,
    command: String,
    stdin: Option<String>,
    tty: Option<String>,
    rows: Option<String>,
    cols: Option<String>,
}

/// Who called: the token's name, put on the request by the token check.
#[derive(Debug, Clone)]
pub(super) struct TokenName(pub String);

fn bad(msg: String) -> Failure {
    Failure::from(ApiError::BadRequest(msg))
}

fn size(v: &Option<String>, name: &str) -> Result<u16, Failure> {
    match v.as_deref() {
        None => Ok(0),
        Some(s) => s
            .parse()
            .map_err(|_| bad(format!("{name} must be a number, not {s:?}"))),
    }
}

pub(super) async fn pod_exec(
    State(state): State<AppState>,
    Path(t): Path<super::api::Target>,
    Query(p): Query<ExecParams>,
    mut req: Request,
) -> Result<Response, Failure> {
    let name = t.key(crate::contract::ResourceKind::Pod);
    let flag = |v: &Option<String>| v.as_deref() == Some("true");
    let command: Vec<String> = serde_json::from_str(&p.command)
        .map_err(|_| bad("command must be a JSON array of strings".into()))?;
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok());
    if upgrade != Some(UPGRADE) {
        return Err(bad(format!(
            "exec needs an upgraded connection (Upgrade: {UPGRADE})"
        )));
    }
    let by = req
        .extensions()
        .get::<TokenName>()
        .map_or_else(|| "unknown".to_owned(), |t| t.0.clone());
    let Some(hub) = state.logs.clone() else {
        return Err(ApiError::Unavailable.into());
    };
    // The core decides (pod running, container known, node ready and v5) and records it.
    let (ask, rx) = ApiRequest::new(ApiOp::Exec {
        pod: name.clone(),
        container: p.container.clone(),
        command: command.clone(),
        by,
    });
    state
        .core
        .send(Event::Api(ask))
        .await
        .map_err(|_| Failure::from(ApiError::Unavailable))?;
    let target = match rx
        .await
        .map_err(|_| Failure::from(ApiError::Unavailable))??
    {
        ApiReply::Exec(t) => t,
        _ => return Err(ApiError::Internal("the core did not answer an exec".into()).into()),
    };
    let q = ExecQuery {
        node: baton_proto::NodeName::new(&target.node)
            .map_err(|e| Failure::from(ApiError::Internal(e.to_string())))?,
        pod_uid: target.pod_uid,
        container: target.container,
        command,
        stdin: flag(&p.stdin),
        tty: flag(&p.tty),
        rows: size(&p.rows, "rows")?,
        cols: size(&p.cols, "cols")?,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (tx, rx) = hub
        .exec()
        .open(q)
        .await
        .map_err(|e| Failure(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => pump(TokioIo::new(upgraded), tx, rx).await,
            Err(e) => tracing::info!(error = %e, "exec connection not upgraded"),
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE));
    Ok(resp)
}

type Io = TokioIo<hyper::upgrade::Upgraded>;

/// Bridges the connection and the session until the command's end, or until the client
/// goes (dropping `tx` then kills the command).
async fn pump(io: Io, mut tx: ExecTx, mut rx: ExecRx) {
    let (mut read, mut write) = tokio::io::split(io);
    // The client's frames, read by their own task so that a frame half read is never
    // lost to a `select!`; bounded, so an unread client stops being read.
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel::<ClientFrame>(1);
    let reader = tokio::spawn(async move { read_frames(&mut read, frames_tx).await });
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    loop {
        tokio::select! {
            ev = rx.next() => {
                let Some(ev) = ev else { break };
                let (frame, last) = match ev {
                    ExecEvent::Progress => {
                        if tx.credit_due() && tx.send(ExecAction::Credit).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    ExecEvent::Output(ExecStream::Stdout, d) => (ServerFrame::Stdout(d), false),
                    ExecEvent::Output(ExecStream::Stderr, d) => (ServerFrame::Stderr(d), false),
                    ExecEvent::Exit(code) => (ServerFrame::Exit(code), true),
                    ExecEvent::Failed(why) => (ServerFrame::Error(why), true),
                };
                if last {
                    tx.ended();
                }
                if write_frame(&mut write, &frame).await.is_err() {
                    break;
                }
                if last {
                    break;
                }
                if tx.credit_due() && tx.send(ExecAction::Credit).await.is_err() {
                    break;
                }
            }
            f = frames.recv(), if tx.stdin_room() => {
                let action = match f {
                    Some(ClientFrame::Stdin(d)) => match BVec::from_vec(d) {
                        Ok(d) => ExecAction::Stdin(d),
                        Err(_) => break,
                    },
                    Some(ClientFrame::Eof) => ExecAction::Eof,
                    Some(ClientFrame::Resize { rows, cols }) => ExecAction::Resize { rows, cols },
                    // The client went away (it ends stdin with an Eof frame, never by
                    // closing its side): the session is cancelled with `tx`.
                    None => break,
                };
                if tx.send(action).await.is_err() {
                    break;
                }
            }
            _ = keep_alive.tick() => {
                if tx.send(ExecAction::Credit).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = write.shutdown().await;
    reader.abort();
}

/// Reads the client's frames, splitting stdin into session-sized pieces.
async fn read_frames(read: &mut ReadHalf<Io>, out: tokio::sync::mpsc::Sender<ClientFrame>) {
    while let Ok(Some(f)) = read_client(read).await {
        let pieces = match f {
            ClientFrame::Stdin(d) => d
                .chunks(MAX_EXEC_CHUNK)
                .map(|c| ClientFrame::Stdin(c.to_vec()))
                .collect(),
            other => vec![other],
        };
        for p in pieces {
            if out.send(p).await.is_err() {
                return;
            }
        }
    }
}

async fn write_frame(w: &mut WriteHalf<Io>, f: &ServerFrame) -> std::io::Result<()> {
    w.write_all(&f.encode()).await?;
    w.flush().await
}
