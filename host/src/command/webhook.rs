//! The `webhook` path: each command POSTed as JSON to a URL; a 2xx answer confirms it.
//!
//! Plain `http://` over HTTP/1.1 with kept-alive connections (one per lane at most). The
//! body is the command as `iotrules` serializes it (`device`, `name`, `params`, …).

use std::sync::Mutex;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::{Failure, Transport};
use crate::config::CommandPathConfig;
use crate::event::Command;

/// POSTs commands to one URL.
pub struct WebhookTransport {
    /// `host:port` to connect to.
    authority: String,
    /// The request target (path and query).
    target: String,
    authorization: Option<String>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl WebhookTransport {
    /// From a `webhook` path's config (its `url` checked to be `http://`).
    pub fn new(config: &CommandPathConfig) -> anyhow::Result<Self> {
        let url = config
            .url
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("command_path \"{}\": no url", config.name))?;
        Self::for_url(
            url.as_str(),
            config.authorization.as_ref().map(|s| s.expose().to_owned()),
        )
        .map_err(|reason| anyhow::anyhow!("command_path \"{}\": {reason}", config.name))
    }

    /// For an `http://host[:port][/path]` URL.
    pub fn for_url(url: &str, authorization: Option<String>) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("url \"{url}\" is not http://"))?;
        let (authority, target) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("url \"{url}\" has no host"));
        }
        let authority = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(WebhookTransport {
            authority,
            target: target.to_owned(),
            authorization,
            idle: Mutex::default(),
        })
    }

    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        loop {
            let reused = self
                .idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pop();
            match reused {
                Some(mut sender) => {
                    if sender.ready().await.is_ok() {
                        return Ok(sender);
                    }
                }
                None => break,
            }
        }
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| Failure::retry(format!("cannot connect to {}: {e}", self.authority)))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                Failure::retry(format!(
                    "HTTP handshake with {} failed: {e}",
                    self.authority
                ))
            })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

impl Transport for WebhookTransport {
    async fn deliver(&self, command: &Command) -> Result<(), Failure> {
        let body = serde_json::to_vec(command)
            .map_err(|e| Failure::permanent(format!("cannot encode: {e}")))?;
        let mut request = hyper::Request::post(&self.target)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::permanent(format!("cannot build the request: {e}")))?;
        let mut sender = self.connection().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::retry(format!("POST {} failed: {e}", self.target)))?;
        let status = response.status();
        // Read the body to the end so the connection can carry the next request.
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::retry(format!("reading the answer failed: {e}")))?
            .to_bytes();
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(sender);
        if status.is_success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        let reason = format!("answered {status}: {}", text.trim());
        // A 4xx says the request itself is wrong, except for the two that ask to come back
        // later: a timeout waiting for the request, and too many requests.
        let later = matches!(status.as_u16(), 408 | 429);
        if status.is_client_error() && !later {
            Err(Failure::permanent(reason))
        } else {
            Err(Failure::retry(reason))
        }
    }
}
