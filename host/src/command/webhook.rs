//! The `webhook` path: each command POSTed as JSON to a URL; a 2xx answer confirms it.
//!
//! `http://` or `https://` (with the path's `ca_file`) over HTTP/1.1 with kept-alive
//! connections ([`HttpClient`]). The body is the command as `iotrules` serializes it
//! (`device`, `name`, `params`, …).

use super::http::{HttpClient, Url};
use super::{Failure, Transport};
use crate::config::CommandPathConfig;
use crate::event::Command;

/// POSTs commands to one URL.
pub struct WebhookTransport {
    client: HttpClient,
    /// The request target (path and query).
    target: String,
    authorization: Option<String>,
}

impl WebhookTransport {
    /// From a `webhook` path's config.
    pub fn new(config: &CommandPathConfig) -> anyhow::Result<Self> {
        let url = config
            .url
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("command_path \"{}\": no url", config.name))?;
        Self::for_url(
            url.as_str(),
            config.authorization.as_ref().map(|s| s.expose().to_owned()),
            config
                .ca_file
                .as_ref()
                .map(|f| std::path::Path::new(f.as_str())),
        )
        .map_err(|reason| anyhow::anyhow!("command_path \"{}\": {reason}", config.name))
    }

    /// For an `http://` or `https://host[:port][/path]` URL.
    pub fn for_url(
        url: &str,
        authorization: Option<String>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let url = Url::parse(url)?;
        Ok(WebhookTransport {
            client: HttpClient::new(&url, ca_file)?,
            target: url.target,
            authorization,
        })
    }
}

impl Transport for WebhookTransport {
    async fn deliver(&self, command: &Command) -> Result<(), Failure> {
        let body = serde_json::to_vec(command)
            .map_err(|e| Failure::permanent(format!("cannot encode: {e}")))?;
        let mut headers = vec![("content-type", "application/json")];
        if let Some(authorization) = &self.authorization {
            headers.push(("authorization", authorization));
        }
        let answer = self
            .client
            .send(hyper::Method::POST, &self.target, &headers, body)
            .await?;
        let status = answer.status;
        if status.is_success() {
            return Ok(());
        }
        let reason = format!("answered {status}: {}", answer.excerpt());
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
