//! The admin HTTP server: `/metrics` (Prometheus), `/healthz`, `/status` (JSON), and the
//! device twins: `/devices` (a page of every device's summary) and `/devices/{id}` (one
//! device's whole twin).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::plugin::Registry;
use crate::rules::Rules;
use crate::status::{ConnectorState, ConnectorStatus, Connectors, LastErrors, RecentError};

/// What the admin server (and the service's summary) reads.
pub struct Observed {
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// Recent errors.
    pub errors: Arc<LastErrors>,
    /// Connector states.
    pub connectors: Arc<Connectors>,
    /// The rules in service.
    pub rules: Arc<Rules>,
    /// The plugins.
    pub registry: Arc<Registry>,
    /// When the service started.
    pub started: Instant,
}

/// A running admin server.
pub struct AdminServer {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// The address it listens on (the port is the real one when the config asked for 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving, letting requests in progress finish.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Binds `address` and serves the admin routes for `observed`.
pub async fn serve(address: SocketAddr, observed: Arc<Observed>) -> std::io::Result<AdminServer> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    let app = router(observed);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(error) = served {
            tracing::error!("The admin server stopped: {error}");
        }
    });
    tracing::info!("Admin API on http://{address} (/metrics, /healthz, /status, /devices)");
    if let Some(warning) = exposure_warning(address) {
        tracing::warn!(%address, "{warning}");
    }
    Ok(AdminServer {
        address,
        stop,
        task,
    })
}

/// What to tell the operator when the admin API is reachable from other hosts: it has no
/// authentication, `/status` names the connectors, their identities (access ids, usernames,
/// topics), the rules and the recent errors, and `/devices` every device's last values.
fn exposure_warning(address: SocketAddr) -> Option<String> {
    (!address.ip().is_loopback()).then(|| {
        "The admin API listens beyond loopback: it has no authentication, and /status shows \
         connector identities, rules and recent errors to anyone who can reach it; listen on \
         127.0.0.1 (or ::1) unless a firewall or proxy guards the port"
            .to_owned()
    })
}

/// The routes, for serving or for calling in tests.
pub(crate) fn router(observed: Arc<Observed>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/devices", get(devices))
        .route("/devices/{id}", get(device))
        .with_state(observed)
}

/// How many devices `/devices` lists when the request does not say.
const DEFAULT_DEVICES_LIMIT: usize = 1000;
/// The most devices one `/devices` page lists: a bound on the answer's size (about 150 bytes
/// a device).
const MAX_DEVICES_LIMIT: usize = 10_000;

/// `/devices?limit=N&after=ID`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesQuery {
    /// At most this many (at most [`MAX_DEVICES_LIMIT`]).
    limit: Option<usize>,
    /// Those whose id sorts after this one: the `next_after` of the previous page.
    after: Option<String>,
}

/// `/devices`: a page of the devices' summaries, sorted by id.
#[derive(Serialize)]
struct Devices {
    /// How many devices have a twin.
    total: usize,
    /// The bound on devices (`[twin] max_devices`; 0: the twin is off).
    max_devices: usize,
    /// The limit applied to this page.
    limit: usize,
    devices: Vec<crate::twin::DeviceSummary>,
    /// The `after` of the next page, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<String>,
}

/// A JSON error answer.
fn json_error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn devices(
    State(observed): State<Arc<Observed>>,
    query: Result<Query<DevicesQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}; /devices takes `limit` (up to {MAX_DEVICES_LIMIT}) and `after` (a \
                     device id)",
                    rejection.body_text()
                ),
            );
        }
    };
    let limit = query
        .limit
        .unwrap_or(DEFAULT_DEVICES_LIMIT)
        .min(MAX_DEVICES_LIMIT);
    let twins = observed.registry.twins();
    let page = twins.page(query.after.as_deref(), limit);
    let next_after = (page.after > page.devices.len())
        .then(|| page.devices.last().map(|device| device.id.clone()))
        .flatten();
    Json(Devices {
        total: page.total,
        max_devices: twins.max_devices(),
        limit,
        devices: page.devices,
        next_after,
    })
    .into_response()
}

/// `/devices/{id}`: the device's whole twin; 404 when the host has none.
async fn device(State(observed): State<Arc<Observed>>, Path(id): Path<String>) -> Response {
    match observed.registry.twins().get(&id) {
        Some(twin) => Json(twin).into_response(),
        None => json_error(StatusCode::NOT_FOUND, format!("no twin of device \"{id}\"")),
    }
}

async fn metrics(State(observed): State<Arc<Observed>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        observed.metrics.render(),
    )
        .into_response()
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failed_connectors: Vec<String>,
}

/// 200 while every connector is running or done; 503 naming the ones that failed.
async fn healthz(State(observed): State<Arc<Observed>>) -> Response {
    let failed: Vec<String> = observed
        .connectors
        .all()
        .into_iter()
        .filter(|c| c.state == ConnectorState::Failed)
        .map(|c| c.name)
        .collect();
    if failed.is_empty() {
        (
            StatusCode::OK,
            Json(Health {
                status: "ok",
                failed_connectors: failed,
            }),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "failing",
                failed_connectors: failed,
            }),
        )
            .into_response()
    }
}

#[derive(Serialize)]
struct Status {
    uptime_s: u64,
    in_flight: u64,
    connectors: Vec<ConnectorStatus>,
    rules: RulesStatus,
    plugins: Vec<PluginStatus>,
    last_errors: Vec<RecentError>,
}

#[derive(Serialize)]
struct RulesStatus {
    directory: String,
    generation: u64,
    rules: Vec<RuleStatus>,
}

#[derive(Serialize)]
struct RuleStatus {
    name: String,
    file: String,
    enabled: bool,
    plugins: Vec<String>,
    matches: u64,
    errors: u64,
}

#[derive(Serialize)]
struct PluginStatus {
    name: String,
    version: u64,
    sha256: String,
    /// The `iotrules:plugin` world it was built for.
    world: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    quarantined: Option<String>,
}

async fn status(State(observed): State<Arc<Observed>>) -> Json<serde_json::Value> {
    Json(status_json(&observed))
}

/// What `/status` answers, as JSON.
pub fn status_json(observed: &Observed) -> serde_json::Value {
    let metrics = &observed.metrics;
    let set = observed.rules.current();
    let errors = metrics.rule_errors.members();
    let rules = set
        .rules()
        .iter()
        .map(|rule| RuleStatus {
            name: rule.name().to_owned(),
            file: rule.file().display().to_string(),
            enabled: rule.enabled(),
            plugins: rule.plugins().map(str::to_owned).collect(),
            matches: metrics.rule_matches.with(&[rule.name()]).get(),
            errors: errors
                .iter()
                .filter(|(labels, _)| labels[0] == rule.name())
                .map(|(_, c)| c.get())
                .sum(),
        })
        .collect();
    let plugins = observed
        .registry
        .names()
        .into_iter()
        .filter_map(|name| {
            let slot = observed.registry.slot(&name)?;
            let version = slot.current();
            Some(PluginStatus {
                name,
                version: version.number,
                sha256: version.sha256.clone(),
                world: version.world(),
                quarantined: version.quarantined(),
            })
        })
        .collect();
    let status = Status {
        uptime_s: observed.started.elapsed().as_secs(),
        in_flight: metrics.in_flight.get(),
        connectors: observed
            .connectors
            .all()
            .into_iter()
            .map(|mut connector| {
                if let Some(signature) = &mut connector.signature {
                    let mismatches = metrics.signature_mismatches.with(&[&connector.name]).get();
                    *signature = crate::status::SignatureStatus::new(signature.mode, mismatches);
                }
                connector
            })
            .collect(),
        rules: RulesStatus {
            directory: observed.rules.dir().display().to_string(),
            generation: observed.rules.generation(),
            rules,
        },
        plugins,
        last_errors: observed.errors.recent(),
    };
    // Plain data: serializing cannot fail.
    serde_json::to_value(status).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_beyond_loopback_is_warned_about_and_loopback_is_not() {
        for quiet in ["127.0.0.1:9464", "[::1]:9464", "127.0.0.2:0"] {
            let address: SocketAddr = quiet.parse().unwrap();
            assert_eq!(exposure_warning(address), None, "{quiet}");
        }
        for exposed in ["0.0.0.0:9464", "[::]:9464", "192.168.1.10:9464"] {
            let address: SocketAddr = exposed.parse().unwrap();
            let warning = exposure_warning(address).expect(exposed);
            assert!(warning.contains("no authentication"), "{warning}");
        }
    }
}
