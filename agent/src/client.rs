//! Client of the agent's unix-socket API (hyper over a `UnixStream`).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent listens on the socket (absent, stale, or refused).
    #[error("no agent is listening on {path}: {source}")]
    NotRunning {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent on {path}: {detail}")]
    Http { path: PathBuf, detail: String },
    #[error("the agent answered {status} to {uri}: {body}")]
    Status {
        uri: String,
        status: StatusCode,
        body: String,
    },
    #[error("decoding the agent's answer to {uri}: {source}")]
    Decode {
        uri: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Percent-encodes `s` for use as a query-string value.
pub fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `POST uri` with a JSON body on the agent's socket; the answer is ignored unless it is an
/// error status.
pub async fn post_json(
    socket: &Path,
    uri: &str,
    body: &serde_json::Value,
) -> Result<(), ClientError> {
    let bytes = serde_json::to_vec(body).map_err(|source| ClientError::Decode {
        uri: uri.to_owned(),
        source,
    })?;
    request(socket, "POST", uri, Some(bytes)).await.map(|_| ())
}

/// `GET uri` on the agent's socket, decoded from JSON.
pub async fn get_json<T: DeserializeOwned>(socket: &Path, uri: &str) -> Result<T, ClientError> {
    let body = request(socket, "GET", uri, None).await?;
    serde_json::from_slice(&body).map_err(|source| ClientError::Decode {
        uri: uri.to_owned(),
        source,
    })
}

/// Connects to the agent's socket and sends one request; the response, its body unread.
async fn send(
    socket: &Path,
    method: &str,
    uri: &str,
    body: Option<Vec<u8>>,
) -> Result<
    (
        hyper::Response<hyper::body::Incoming>,
        tokio::task::JoinHandle<()>,
    ),
    ClientError,
> {
    let http = |detail: String| ClientError::Http {
        path: socket.to_owned(),
        detail,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::NotRunning {
            path: socket.to_owned(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(e.to_string()))?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::HOST, "berth")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| http(e.to_string()))?;
    Ok((response, connection))
}

/// One request on the agent's socket; the body of a successful answer.
pub async fn request(
    socket: &Path,
    method: &str,
    uri: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, ClientError> {
    let (response, connection) = send(socket, method, uri, body).await?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Http {
            path: socket.to_owned(),
            detail: e.to_string(),
        })?
        .to_bytes();
    connection.abort();
    if !status.is_success() {
        return Err(ClientError::Status {
            uri: uri.to_owned(),
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(body)
}

/// `GET uri` on the agent's socket, handing each chunk of the (streamed) body to `on_chunk` as
/// it arrives, until the agent ends the body or `on_chunk` returns false.
pub async fn stream(
    socket: &Path,
    uri: &str,
    mut on_chunk: impl FnMut(&[u8]) -> bool,
) -> Result<(), ClientError> {
    let http = |detail: String| ClientError::Http {
        path: socket.to_owned(),
        detail,
    };
    let (response, connection) = send(socket, "GET", uri, None).await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        return Err(ClientError::Status {
            uri: uri.to_owned(),
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| http(e.to_string()))?;
        if let Some(data) = frame.data_ref()
            && !on_chunk(data)
        {
            break;
        }
    }
    connection.abort();
    Ok(())
}
