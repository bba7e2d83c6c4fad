//! The `webhook` path: each command POSTed as JSON to a URL; a 2xx answer confirms it.
//!
//! `http://` or `https://` (with the path's `ca_file`) over HTTP/1.1 with kept-alive
//! connections ([`HttpClient`]). The body is the command as `iotrules` serializes it
//! (`device`, `name`, `params`, …).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::http::{HttpClient, Url};
use super::{Configured, Failure, Kind, PathConfig, PathSettings, SharedConfig, Transport};
use crate::config::{ConfigError, Expanded, Secret, Table};
use crate::event::Command;
use crate::time::Clock;

/// POSTs commands to one URL.
pub(crate) struct WebhookTransport {
    client: HttpClient,
    /// The request target (path and query).
    target: String,
    authorization: Option<String>,
}

/// The `webhook` kind.
pub const KIND: Kind = Kind {
    name: "webhook",
    read,
};

/// A `webhook` path's own keys.
#[derive(Default, Deserialize)]
#[serde(default)]
struct WebhookConfig {
    /// The URL commands are POSTed to (`http://` or `https://`).
    url: Option<Expanded>,
    /// An `Authorization` header value.
    authorization: Option<Secret>,
    /// `https://` URLs: a PEM file of CA certificates trusted besides the system's.
    ca_file: Option<Expanded>,
}

fn read(table: &Table) -> Result<Box<dyn Configured>, ConfigError> {
    let (shared, own) = table.read_both::<SharedConfig, WebhookConfig>()?;
    let settings = shared.settings(table)?;
    let url = table.required(&own.url, "url")?;
    Url::parse(url).map_err(|reason| table.invalid(reason))?;
    Ok(Box::new(Webhook {
        url: url.to_owned(),
        authorization: own.authorization,
        ca_file: own.ca_file.as_ref().map(|f| table.path(f)),
        settings,
    }))
}

/// A `webhook` path as configured.
struct Webhook {
    url: String,
    authorization: Option<Secret>,
    ca_file: Option<PathBuf>,
    settings: PathSettings,
}

impl PathConfig for Webhook {
    type Transport = WebhookTransport;

    fn lanes(&self) -> PathSettings {
        self.settings
    }

    fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    fn transport(&self, _name: &str, _clock: &Clock) -> Result<WebhookTransport, String> {
        WebhookTransport::for_url(
            &self.url,
            self.authorization.as_ref().map(|s| s.expose().to_owned()),
            self.ca_file.as_deref(),
        )
    }
}

impl WebhookTransport {
    /// For an `http://` or `https://host[:port][/path]` URL.
    pub(crate) fn for_url(
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
