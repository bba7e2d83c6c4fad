//! The `tuya-openapi` path: a command becomes `POST /v1.0/iot-03/devices/{id}/commands` with
//! `{"commands":[{"code": name, "value": params}]}` on Tuya's cloud OpenAPI, signed
//! ([`crate::dialect::tuya::openapi`]) and carrying an access token.
//!
//! Token: one per path, shared by its lanes behind an async lock, so concurrent lanes wait for
//! one token call instead of each making its own. It is fetched on first use
//! (`GET /v1.0/token?grant_type=1`), renewed with its refresh token ([`REFRESH_MARGIN_MS`])
//! before `expire_time` (a fresh grant when the refresh fails), and renewed the same way when
//! a call answers a token code (1010 expired, 1011 invalid, 1012 bad status), after which the
//! call is made once more.
//!
//! Other answers (`success:false` with `code`/`msg`), see [`classify`]: system errors and
//! throttling (500, 1110, 1111) are retried by the lane; everything else (bad signature or
//! credentials, bad parameters, permission, unknown or offline device, …) says the command
//! itself cannot go through and is not retried. HTTP 5xx and 429 are retried; another non-2xx
//! status is a refusal.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::http::{HttpClient, Url, path_only};
use super::{Failure, Kind, PathConfig, PathSettings, SharedConfig, Transport};
use crate::config::{ConfigError, Expanded, Secret, Table};
use crate::dialect::tuya::Region;
use crate::dialect::tuya::openapi::{self, ApiCredentials, DpCommand, Request};
use crate::event::Command;
use crate::time::Clock;

/// A token is renewed this long before its `expire_time`, so that no request goes out with
/// a token about to expire in flight.
pub(crate) const REFRESH_MARGIN_MS: u64 = 60_000;

/// The codes that say the token is expired, invalid or revoked: renew it and call again.
const TOKEN_CODES: [i64; 3] = [openapi::TOKEN_INVALID_CODE, 1011, 1012];

/// The `tuya-openapi` kind.
pub const KIND: Kind = Kind {
    name: "tuya-openapi",
    read: |table| Ok(Box::new(TuyaSettings::from_config(table)?)),
};

/// A `tuya-openapi` path's own keys.
#[derive(Default, Deserialize)]
#[serde(default)]
struct TuyaConfig {
    /// The API's base URL, overriding the one `region` gives.
    url: Option<Expanded>,
    /// The data centre (`cn`, `us`, `us-east`, `eu`, `eu-west`, `in`).
    region: Option<Expanded>,
    /// The cloud project's access id (`client_id`).
    access_id: Option<Expanded>,
    /// The cloud project's access secret (the signing key).
    access_key: Option<Secret>,
    /// `https://` URLs: a PEM file of CA certificates trusted besides the system's.
    ca_file: Option<Expanded>,
}

/// A `tuya-openapi` path's settings, checked.
#[derive(Debug, Clone)]
pub(crate) struct TuyaSettings {
    /// The API's base URL.
    pub url: Url,
    /// Extra trusted CAs.
    pub ca_file: Option<PathBuf>,
    /// `access_id` and `access_key`.
    pub credentials: ApiCredentials,
    /// The lanes, time-out and retries.
    pub lanes: PathSettings,
}

impl TuyaSettings {
    /// From the path's table; the error names the path and the key.
    pub fn from_config(table: &Table) -> Result<Self, ConfigError> {
        let (shared, config) = table.read_both::<SharedConfig, TuyaConfig>()?;
        let lanes = shared.settings(table)?;
        let url = match (&config.url, &config.region) {
            (Some(url), _) => url.as_str().to_owned(),
            (None, Some(region)) => {
                let region = region
                    .as_str()
                    .parse::<Region>()
                    .map_err(|e| table.invalid(format!("region: {e}")))?;
                format!("https://{}", region.openapi_host())
            }
            (None, None) => {
                return Err(table.invalid(
                    "a tuya-openapi path needs `region` (cn, us, us-east, eu, eu-west, in) or \
                     `url`",
                ));
            }
        };
        let url = Url::parse(&url).map_err(|reason| table.invalid(reason))?;
        let access_id = table.required(&config.access_id, "access_id")?;
        let access_key = table.required_secret(&config.access_key, "access_key")?;
        Ok(TuyaSettings {
            url,
            ca_file: config.ca_file.as_ref().map(|f| table.path(f)),
            credentials: ApiCredentials {
                client_id: access_id.to_owned(),
                secret: access_key.to_owned(),
            },
            lanes,
        })
    }
}

impl PathConfig for TuyaSettings {
    type Transport = TuyaTransport;

    fn lanes(&self) -> PathSettings {
        self.lanes
    }

    fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    fn transport(&self, _name: &str, clock: &Clock) -> Result<TuyaTransport, String> {
        TuyaTransport::new(self, clock.clone())
    }
}

/// An access token and when to renew it.
struct Token {
    access: String,
    refresh: String,
    /// Renew from this time on, Unix ms (the expiry less [`REFRESH_MARGIN_MS`]).
    renew_at_ms: u64,
}

/// Sends commands through Tuya's OpenAPI.
pub(crate) struct TuyaTransport {
    client: HttpClient,
    /// The base URL's path, without a trailing `/`, before every API path.
    prefix: String,
    credentials: ApiCredentials,
    clock: Clock,
    token: tokio::sync::Mutex<Option<Token>>,
}

/// How Tuya answered: `{"success": …, "code": …, "msg": …, "result": …}`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Reply {
    success: bool,
    code: Option<serde_json::Value>,
    msg: Option<String>,
    result: Option<Box<RawValue>>,
}

impl Reply {
    fn code(&self) -> Option<i64> {
        match &self.code {
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
    }

    /// `code 2001 (device is offline)`.
    fn describe(&self) -> String {
        let code = match &self.code {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(value) => value.to_string(),
            None => "none".into(),
        };
        format!(
            "Tuya code {code} ({})",
            self.msg.as_deref().unwrap_or("no message")
        )
    }
}

/// The `result` of a token call.
#[derive(Deserialize)]
struct Granted {
    access_token: String,
    /// Seconds.
    expire_time: u64,
    refresh_token: String,
}

/// Whether a vendor error code is worth another attempt: 500 (system error), 1110
/// (concurrent requests over the limit), 1111 (system busy). The token codes are handled
/// before this. Everything else, including codes not known here, is a refusal: retrying a
/// request the API judged wrong only repeats the refusal (and counts against the quota).
pub(crate) fn classify(code: Option<i64>) -> bool {
    matches!(code, Some(500 | 1110 | 1111))
}

impl TuyaTransport {
    /// A transport for `settings`, signing with the time of `clock`.
    pub fn new(settings: &TuyaSettings, clock: Clock) -> Result<Self, String> {
        Ok(TuyaTransport {
            client: HttpClient::new(&settings.url, settings.ca_file.as_deref())?,
            prefix: settings.url.target.trim_end_matches('/').to_owned(),
            credentials: settings.credentials.clone(),
            clock,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// One signed call of `path` with `access_token` (empty for token calls); a non-2xx
    /// status or a body that is not Tuya's answer is a failure.
    async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
        access_token: &str,
    ) -> Result<Reply, Failure> {
        let full_path = format!("{}{path}", self.prefix);
        let request = Request {
            method: method.as_str(),
            path: &full_path,
            query,
            body: &body,
            signed_headers: &[],
        };
        let nonce = format!("{:032x}", rand::random::<u128>());
        let signed = openapi::sign(
            &self.credentials,
            access_token,
            self.clock.now_ms(),
            &nonce,
            &request,
        );
        let target = request.url();
        let headers = openapi::headers(&self.credentials, access_token, &signed, &request);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = self.client.send(method, &target, &headers, body).await?;
        let status = answer.status;
        // A refresh path holds the refresh token: errors name the token path instead.
        let shown = if path.starts_with(openapi::TOKEN_PATH) {
            openapi::TOKEN_PATH
        } else {
            path_only(&target)
        };
        if !status.is_success() {
            let reason = format!("{shown} answered {status}: {}", answer.excerpt());
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                Failure::retry(reason)
            } else {
                Failure::permanent(reason)
            });
        }
        serde_json::from_slice(&answer.body).map_err(|e| {
            Failure::retry(format!(
                "{shown} answered something that is not Tuya's JSON ({e}): {}",
                answer.excerpt()
            ))
        })
    }

    /// A token call: a grant, or a refresh with `refresh_token`.
    async fn fetch_token(&self, refresh_token: Option<&str>) -> Result<Token, Failure> {
        let reply = match refresh_token {
            Some(refresh) => {
                self.call(
                    hyper::Method::GET,
                    &openapi::refresh_path(refresh),
                    &[],
                    Vec::new(),
                    "",
                )
                .await?
            }
            None => {
                self.call(
                    hyper::Method::GET,
                    openapi::TOKEN_PATH,
                    &[("grant_type", "1")],
                    Vec::new(),
                    "",
                )
                .await?
            }
        };
        let what = if refresh_token.is_some() {
            "refreshing the token"
        } else {
            "getting a token"
        };
        if !reply.success {
            let reason = format!("{what}: {}", reply.describe());
            return Err(if classify(reply.code()) {
                Failure::retry(reason)
            } else {
                Failure::permanent(reason)
            });
        }
        let granted: Granted = reply
            .result
            .as_deref()
            .ok_or_else(|| Failure::retry(format!("{what}: the answer has no result")))
            .and_then(|raw| {
                serde_json::from_str(raw.get())
                    .map_err(|e| Failure::retry(format!("{what}: the result is not a token: {e}")))
            })?;
        let expires_at = self
            .clock
            .now_ms()
            .saturating_add(granted.expire_time.saturating_mul(1000));
        Ok(Token {
            access: granted.access_token,
            refresh: granted.refresh_token,
            renew_at_ms: expires_at.saturating_sub(REFRESH_MARGIN_MS),
        })
    }

    /// The access token to use: the cached one while it is fresh, otherwise a refreshed one
    /// (or a new grant when refreshing fails). `stale` is a token the API has just refused:
    /// if it is still the cached one, it is renewed regardless of its time.
    async fn access_token(&self, stale: Option<&str>) -> Result<String, Failure> {
        let mut cached = self.token.lock().await;
        let now = self.clock.now_ms();
        if let Some(token) = cached.as_ref() {
            let refused = stale == Some(token.access.as_str());
            if !refused && now < token.renew_at_ms {
                return Ok(token.access.clone());
            }
        }
        let renewed = match cached.as_ref() {
            Some(token) => match self.fetch_token(Some(&token.refresh)).await {
                Ok(renewed) => Ok(renewed),
                Err(failure) => {
                    tracing::debug!(
                        "Refreshing the Tuya token failed ({}); asking for a new one",
                        failure.reason
                    );
                    self.fetch_token(None).await
                }
            },
            None => self.fetch_token(None).await,
        };
        match renewed {
            Ok(token) => {
                let access = token.access.clone();
                *cached = Some(token);
                Ok(access)
            }
            Err(failure) => {
                // Forget a token that could not be renewed: the next attempt starts afresh.
                *cached = None;
                Err(failure)
            }
        }
    }
}

impl Transport for TuyaTransport {
    async fn deliver(&self, command: &Command) -> Result<(), Failure> {
        let value = RawValue::from_string(command.params.as_str().to_owned())
            .map_err(|e| Failure::permanent(format!("the params are not JSON: {e}")))?;
        let body = openapi::command_body(&[DpCommand {
            code: &command.name,
            value: &value,
        }]);
        let path = openapi::command_path(&command.device.id).map_err(Failure::permanent)?;
        let mut token = self.access_token(None).await?;
        let mut renewed = false;
        loop {
            let reply = self
                .call(hyper::Method::POST, &path, &[], body.clone(), &token)
                .await?;
            if reply.success {
                return Ok(());
            }
            let code = reply.code();
            if code.is_some_and(|code| TOKEN_CODES.contains(&code)) && !renewed {
                renewed = true;
                token = self.access_token(Some(&token)).await?;
                continue;
            }
            let reason = reply.describe();
            return Err(
                if classify(code) || code.is_some_and(|c| TOKEN_CODES.contains(&c)) {
                    Failure::retry(reason)
                } else {
                    Failure::permanent(reason)
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_errors_and_throttling_are_retried_and_the_rest_refused() {
        for code in [500, 1110, 1111] {
            assert!(classify(Some(code)), "{code}");
        }
        for code in [1004, 1106, 1109, 2001, 2008, 12345] {
            assert!(!classify(Some(code)), "{code}");
        }
        assert!(!classify(None));
    }

    fn config(extra: &str) -> Result<TuyaSettings, ConfigError> {
        let text = format!("[[command_path]]\nname = \"tuya\"\nkind = \"tuya-openapi\"\n{extra}\n");
        let config = crate::config::Config::parse(std::path::Path::new("x.toml"), &text)?;
        TuyaSettings::from_config(&config.command_paths[0])
    }

    #[test]
    fn the_region_gives_the_host_and_missing_fields_are_named() {
        let settings = config("region = \"eu\"\naccess_id = \"id\"\naccess_key = \"k\"").unwrap();
        assert_eq!(settings.url.authority(), "openapi.tuyaeu.com:443");
        assert!(settings.url.tls);
        let error = config("region = \"eu\"\naccess_id = \"id\"").unwrap_err();
        assert_eq!(
            error.to_string(),
            "command_path \"tuya\": a tuya-openapi path needs `access_key`"
        );
        let error = config("access_id = \"id\"\naccess_key = \"k\"").unwrap_err();
        assert!(error.to_string().contains("needs `region`"), "{error}");
        assert!(!format!("{settings:?}").contains("\"k\""));
    }
}
