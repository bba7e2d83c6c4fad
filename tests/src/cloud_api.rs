//! Local stand-ins for the vendors' command APIs, over HTTPS with a generated CA: Tuya's
//! OpenAPI (tokens that expire, refresh tokens, signed calls, device commands) and Alibaba's
//! IoT RPC API (signed `Pub`, `SetDeviceProperty`, `InvokeThingService`, `RRpc`).
//!
//! Each server checks every request's signature with its own implementation of the algorithm
//! as `shared/PROTOCOLS.md` documents it (the hmac/sha crates directly, nothing from
//! `iotrules::dialect`), refuses a bad one with the vendor's error, records every request with
//! how it was answered, and can be told to fail: a token code once, a 5xx, throttling, a
//! permanent vendor code for a device.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use sha2::Digest as _;

use crate::tls::TestCa;

/// One request as a server saw it, and its answer.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// How it was answered: `ok`, or the refusal (`1010`, `503`, `SignatureDoesNotMatch`, …).
    pub answer: String,
}

/// A request as a handler gets it.
struct Incoming {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// An answer: status, JSON body, and the summary recorded.
struct Outgoing {
    status: u16,
    body: String,
    summary: String,
}

impl Outgoing {
    fn ok(body: String) -> Self {
        Outgoing {
            status: 200,
            body,
            summary: "ok".into(),
        }
    }
}

type Handler = Arc<dyn Fn(&Incoming) -> Outgoing + Send + Sync>;

/// A CA file and a TLS acceptor for `localhost` / 127.0.0.1 signed by it.
pub struct Tls {
    /// Trust this (a command path's `ca_file`) to reach the servers.
    pub ca_file: PathBuf,
    acceptor: tokio_rustls::TlsAcceptor,
    _dir: tempfile::TempDir,
}

impl Tls {
    /// A fresh CA and server certificate.
    pub fn generate() -> Tls {
        let ca = TestCa::generate();
        let dir = tempfile::tempdir().expect("temp dir");
        Tls {
            ca_file: ca.write(dir.path()),
            acceptor: ca.acceptor(),
            _dir: dir,
        }
    }
}

/// Serves `handler` over TLS on a free port of 127.0.0.1; returns the port.
fn serve(
    runtime: &tokio::runtime::Handle,
    tls: &Tls,
    handler: Handler,
    log: Arc<Mutex<Vec<Recorded>>>,
) -> u16 {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let acceptor = tls.acceptor.clone();
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let log = log.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await?.to_bytes().to_vec();
                            let incoming = Incoming {
                                method: parts.method.to_string(),
                                target: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.as_str().to_owned())
                                    .unwrap_or_default(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_owned(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect(),
                                body,
                            };
                            let outgoing = handler(&incoming);
                            log.lock().unwrap().push(Recorded {
                                method: incoming.method,
                                target: incoming.target,
                                headers: incoming.headers,
                                body: incoming.body,
                                answer: outgoing.summary,
                            });
                            let mut response =
                                hyper::Response::new(Full::new(Bytes::from(outgoing.body)));
                            *response.status_mut() = hyper::StatusCode::from_u16(outgoing.status)
                                .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
                            response.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, hyper::Error>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn hmac_sha1(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Decodes `%XX` escapes (and `+` as a space, as forms have it).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3986 encoding: unreserved `A-Za-z0-9-_.~` kept, every other byte `%XX` upper case.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `k=v&…` pairs, decoded.
fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(pair), String::new()),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Tuya

/// How a Tuya server behaves, changeable while it runs.
#[derive(Default)]
struct TuyaState {
    /// Issued access tokens and when each expires (Unix ms of the shared clock).
    tokens: HashMap<String, u64>,
    /// Refresh tokens still valid.
    refresh_tokens: HashMap<String, ()>,
    issued: u64,
    /// Answer this many coming device commands with 1010, revoking every token.
    revoke_next: usize,
    /// Answer this many coming device commands with HTTP 503.
    unavailable_next: usize,
    /// Answer commands for these devices `success:false` with this code and message.
    refusals: HashMap<String, (i64, String)>,
}

/// Tuya's OpenAPI: tokens, refreshes and device commands for one project.
pub struct TuyaServer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<TuyaState>>,
    log: Arc<Mutex<Vec<Recorded>>>,
}

/// A Tuya project's credentials and token lifetime.
#[derive(Clone)]
pub struct TuyaProject {
    pub client_id: String,
    pub secret: String,
    /// `expire_time` of issued tokens, in seconds.
    pub token_ttl_s: u64,
}

impl TuyaServer {
    /// Serves `project` over `tls`, judging token expiry by `clock` (Unix ms).
    pub fn start(
        runtime: &tokio::runtime::Handle,
        tls: &Tls,
        project: TuyaProject,
        clock: Arc<AtomicU64>,
    ) -> TuyaServer {
        let state = Arc::new(Mutex::new(TuyaState::default()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler_state = state.clone();
        let handler: Handler = Arc::new(move |request| {
            tuya_answer(
                &project,
                &mut handler_state.lock().unwrap(),
                clock.load(Ordering::SeqCst),
                request,
            )
        });
        let port = serve(runtime, tls, handler, log.clone());
        TuyaServer {
            url: format!("https://127.0.0.1:{port}"),
            state,
            log,
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// `(path without query, answer)` of every request so far, refresh tokens shown as
    /// `/v1.0/token/REFRESH`.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.requests()
            .into_iter()
            .map(|r| {
                let path = r.target.split('?').next().unwrap_or_default().to_owned();
                let path = if path.starts_with("/v1.0/token/") {
                    "/v1.0/token/REFRESH".to_owned()
                } else {
                    path
                };
                (path, r.answer)
            })
            .collect()
    }

    /// The next `n` device commands are answered 1010 and every token is revoked.
    pub fn revoke_next(&self, n: usize) {
        self.state.lock().unwrap().revoke_next = n;
    }

    /// Every refresh token is forgotten: refreshing fails, only a new grant works.
    pub fn forget_refresh_tokens(&self) {
        self.state.lock().unwrap().refresh_tokens.clear();
    }

    /// The next `n` device commands are answered HTTP 503.
    pub fn unavailable_next(&self, n: usize) {
        self.state.lock().unwrap().unavailable_next = n;
    }

    /// Commands for `device` are refused with `code` and `msg`.
    pub fn refuse_device(&self, device: &str, code: i64, msg: &str) {
        self.state
            .lock()
            .unwrap()
            .refusals
            .insert(device.to_owned(), (code, msg.to_owned()));
    }
}

fn tuya_error(code: i64, msg: &str) -> Outgoing {
    Outgoing {
        status: 200,
        body: serde_json::json!({"success": false, "code": code, "msg": msg, "t": 0}).to_string(),
        summary: code.to_string(),
    }
}

/// The documented string to sign: `METHOD\nsha256(body)\nheaders\npath[?sorted query]`.
fn tuya_string_to_sign(request: &Incoming) -> String {
    let (path, query) = match request.target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (request.target.as_str(), None),
    };
    let mut url = path.to_owned();
    if let Some(query) = query {
        let mut pairs: Vec<(String, String)> = query
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        pairs.sort();
        let joined: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        url = format!("{path}?{}", joined.join("&"));
    }
    let mut signed_headers = String::new();
    if let Some(names) = request.headers.get("signature-headers") {
        for name in names.split(':') {
            let value = request
                .headers
                .get(&name.to_ascii_lowercase())
                .cloned()
                .unwrap_or_default();
            signed_headers.push_str(&format!("{name}:{value}\n"));
        }
    }
    format!(
        "{}\n{}\n{signed_headers}\n{url}",
        request.method,
        hex::encode(sha2::Sha256::digest(&request.body))
    )
}

fn tuya_answer(
    project: &TuyaProject,
    state: &mut TuyaState,
    now: u64,
    request: &Incoming,
) -> Outgoing {
    let header = |name: &str| request.headers.get(name).cloned().unwrap_or_default();
    if header("client_id") != project.client_id {
        return tuya_error(1005, "clientId invalid");
    }
    if header("sign_method") != "HMAC-SHA256" {
        return tuya_error(1004, "sign invalid");
    }
    if header("t").len() != 13 {
        return tuya_error(1013, "request time is invalid");
    }
    let path = request.target.split('?').next().unwrap_or_default();
    let token_call = path == "/v1.0/token" || path.starts_with("/v1.0/token/");
    let access_token = if token_call {
        String::new()
    } else {
        header("access_token")
    };
    let message = format!(
        "{}{access_token}{}{}{}",
        project.client_id,
        header("t"),
        header("nonce"),
        tuya_string_to_sign(request)
    );
    let expected = hex::encode_upper(hmac_sha256(project.secret.as_bytes(), message.as_bytes()));
    if header("sign") != expected {
        return tuya_error(1004, "sign invalid");
    }
    if token_call {
        if let Some(refresh) = path.strip_prefix("/v1.0/token/") {
            if state.refresh_tokens.remove(refresh).is_none() {
                return tuya_error(1011, "token invalid");
            }
        } else if request.target != "/v1.0/token?grant_type=1" {
            return tuya_error(1003, "grant type invalid");
        }
        state.issued += 1;
        let access = format!("access-{}", state.issued);
        let refresh = format!("refresh-{}", state.issued);
        state
            .tokens
            .insert(access.clone(), now + project.token_ttl_s * 1000);
        state.refresh_tokens.insert(refresh.clone(), ());
        return Outgoing::ok(
            serde_json::json!({
                "success": true,
                "t": now,
                "result": {
                    "access_token": access,
                    "expire_time": project.token_ttl_s,
                    "refresh_token": refresh,
                    "uid": "test-uid",
                },
            })
            .to_string(),
        );
    }
    let Some(device) = path
        .strip_prefix("/v1.0/iot-03/devices/")
        .and_then(|rest| rest.strip_suffix("/commands"))
    else {
        return tuya_error(1108, "uri path invalid");
    };
    if request.method != "POST" {
        return tuya_error(1108, "uri path invalid");
    }
    match state.tokens.get(&access_token) {
        Some(expires) if now < *expires => {}
        _ => return tuya_error(1010, "token invalid"),
    }
    if state.revoke_next > 0 {
        state.revoke_next -= 1;
        state.tokens.clear();
        return tuya_error(1010, "token invalid");
    }
    if state.unavailable_next > 0 {
        state.unavailable_next -= 1;
        return Outgoing {
            status: 503,
            body: "service unavailable".into(),
            summary: "503".into(),
        };
    }
    let body: serde_json::Value = match serde_json::from_slice(&request.body) {
        Ok(body) => body,
        Err(_) => return tuya_error(1109, "param is illegal, please check it"),
    };
    let valid = body["commands"].as_array().is_some_and(|commands| {
        !commands.is_empty()
            && commands
                .iter()
                .all(|c| c["code"].is_string() && !c["value"].is_null())
    });
    if !valid {
        return tuya_error(1109, "param is illegal, please check it");
    }
    if let Some((code, msg)) = state.refusals.get(device) {
        return tuya_error(*code, msg);
    }
    Outgoing::ok(serde_json::json!({"success": true, "result": true, "t": now}).to_string())
}

// ---------------------------------------------------------------------------------------
// Alibaba

/// How an Alibaba server behaves, changeable while it runs.
#[derive(Default)]
struct AlibabaState {
    /// Nonces seen (a repeated one is refused, as the API does).
    nonces: HashMap<String, ()>,
    /// Answer this many coming calls `Throttling.User`.
    throttle_next: usize,
    /// Devices that do not exist (`ProductKey/DeviceName`).
    missing: HashMap<String, ()>,
    /// `RrpcCode` answers to give, in order, before `SUCCESS`.
    rrpc_codes: VecDeque<String>,
}

/// Alibaba's IoT Platform RPC API for one AccessKey.
pub struct AlibabaServer {
    /// `https://127.0.0.1:PORT/`.
    pub url: String,
    state: Arc<Mutex<AlibabaState>>,
    log: Arc<Mutex<Vec<Recorded>>>,
}

/// A call the server accepted: its parameters, signature fields removed.
pub type Call = BTreeMap<String, String>;

impl AlibabaServer {
    /// Serves the API for the AccessKey `key_id` / `secret` over `tls`.
    pub fn start(runtime: &tokio::runtime::Handle, tls: &Tls, key_id: &str, secret: &str) -> Self {
        let state = Arc::new(Mutex::new(AlibabaState::default()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler_state = state.clone();
        let (key_id, secret) = (key_id.to_owned(), secret.to_owned());
        let handler: Handler = Arc::new(move |request| {
            alibaba_answer(
                &key_id,
                &secret,
                &mut handler_state.lock().unwrap(),
                request,
            )
        });
        let port = serve(runtime, tls, handler, log.clone());
        AlibabaServer {
            url: format!("https://127.0.0.1:{port}/"),
            state,
            log,
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// The parameters of every call answered `ok`.
    pub fn accepted(&self) -> Vec<Call> {
        self.requests()
            .iter()
            .filter(|r| r.answer == "ok")
            .map(|r| {
                form_pairs(&String::from_utf8_lossy(&r.body))
                    .into_iter()
                    .collect()
            })
            .collect()
    }

    /// The next `n` calls are answered `Throttling.User`.
    pub fn throttle_next(&self, n: usize) {
        self.state.lock().unwrap().throttle_next = n;
    }

    /// `product_key/device_name` does not exist.
    pub fn remove_device(&self, product_key: &str, device_name: &str) {
        self.state
            .lock()
            .unwrap()
            .missing
            .insert(format!("{product_key}/{device_name}"), ());
    }

    /// The next `RRpc` calls get these `RrpcCode`s, in order, before `SUCCESS` again.
    pub fn rrpc_codes(&self, codes: &[&str]) {
        self.state.lock().unwrap().rrpc_codes = codes.iter().map(|c| c.to_string()).collect();
    }
}

fn alibaba_error(status: u16, code: &str, message: &str) -> Outgoing {
    Outgoing {
        status,
        body: serde_json::json!({
            "RequestId": "test-request",
            "Success": false,
            "Code": code,
            "ErrorMessage": message,
        })
        .to_string(),
        summary: code.to_owned(),
    }
}

fn alibaba_answer(
    key_id: &str,
    secret: &str,
    state: &mut AlibabaState,
    request: &Incoming,
) -> Outgoing {
    if request.method != "POST" || request.target != "/" {
        return alibaba_error(404, "InvalidAction.NotFound", "unknown target");
    }
    let mut params: Call = BTreeMap::new();
    let mut signature = None;
    for (key, value) in form_pairs(&String::from_utf8_lossy(&request.body)) {
        if key == "Signature" {
            signature = Some(value);
        } else {
            params.insert(key, value);
        }
    }
    for required in [
        "Format",
        "Version",
        "AccessKeyId",
        "SignatureMethod",
        "SignatureVersion",
        "SignatureNonce",
        "Timestamp",
        "RegionId",
        "Action",
    ] {
        if !params.contains_key(required) {
            return alibaba_error(400, "MissingParameter", &format!("{required} is mandatory"));
        }
    }
    if params["AccessKeyId"] != key_id {
        return alibaba_error(
            404,
            "InvalidAccessKeyId.NotFound",
            "Specified access key is not found.",
        );
    }
    if params["SignatureMethod"] != "HMAC-SHA1" || params["SignatureVersion"] != "1.0" {
        return alibaba_error(400, "InvalidParameter", "bad signature method");
    }
    // BTreeMap iterates in byte order of the keys, as the algorithm sorts them.
    let canonical: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    let string_to_sign = format!(
        "POST&{}&{}",
        percent_encode("/"),
        percent_encode(&canonical.join("&"))
    );
    let expected = base64::engine::general_purpose::STANDARD.encode(hmac_sha1(
        format!("{secret}&").as_bytes(),
        string_to_sign.as_bytes(),
    ));
    if signature.as_deref() != Some(expected.as_str()) {
        return alibaba_error(
            400,
            "SignatureDoesNotMatch",
            "Specified signature is not matched with our calculation.",
        );
    }
    if state
        .nonces
        .insert(params["SignatureNonce"].clone(), ())
        .is_some()
    {
        return alibaba_error(
            400,
            "SignatureNonceUsed",
            "Specified signature nonce was used already.",
        );
    }
    if state.throttle_next > 0 {
        state.throttle_next -= 1;
        return alibaba_error(
            503,
            "Throttling.User",
            "Request was denied due to user flow control.",
        );
    }
    let product = params.get("ProductKey").cloned().unwrap_or_default();
    let device = params.get("DeviceName").cloned().unwrap_or_default();
    let b64 = |key: &str| {
        params
            .get(key)
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .is_some()
    };
    let ok = || {
        Outgoing::ok(serde_json::json!({"RequestId": "test-request", "Success": true}).to_string())
    };
    match params["Action"].as_str() {
        "Pub" => {
            if !params.contains_key("TopicFullName") || !b64("MessageContent") {
                return alibaba_error(200, "InvalidParameter", "TopicFullName/MessageContent");
            }
            ok()
        }
        action @ ("SetDeviceProperty" | "InvokeThingService" | "RRpc") => {
            if state.missing.contains_key(&format!("{product}/{device}")) {
                return alibaba_error(
                    200,
                    "iot.device.NotExistedDevice",
                    "The device does not exist.",
                );
            }
            match action {
                "SetDeviceProperty" => {
                    let items = params
                        .get("Items")
                        .map(|i| serde_json::from_str::<serde_json::Value>(i));
                    if !matches!(items, Some(Ok(serde_json::Value::Object(_)))) {
                        return alibaba_error(
                            200,
                            "InvalidParameter",
                            "Items is not a JSON object",
                        );
                    }
                    ok()
                }
                "InvokeThingService" => {
                    if !params.contains_key("Identifier") {
                        return alibaba_error(200, "InvalidParameter", "Identifier is mandatory");
                    }
                    ok()
                }
                _ => {
                    let timeout = params.get("Timeout").and_then(|t| t.parse::<u32>().ok());
                    if !b64("RequestBase64Byte")
                        || !timeout.is_some_and(|t| (1000..=8000).contains(&t))
                    {
                        return alibaba_error(200, "InvalidParameter", "RequestBase64Byte/Timeout");
                    }
                    let code = state
                        .rrpc_codes
                        .pop_front()
                        .unwrap_or_else(|| "SUCCESS".into());
                    let mut outgoing = Outgoing::ok(
                        serde_json::json!({
                            "RequestId": "test-request",
                            "Success": true,
                            "RrpcCode": code,
                            "PayloadBase64Byte": "b2s=",
                        })
                        .to_string(),
                    );
                    if code != "SUCCESS" {
                        outgoing.summary = code;
                    }
                    outgoing
                }
            }
        }
        _ => alibaba_error(404, "InvalidAction.NotFound", "Specified api is not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_coding_round_trips_and_encodes_as_rfc_3986() {
        assert_eq!(percent_encode("a b*~/"), "a%20b%2A~%2F");
        assert_eq!(percent_decode("a%20b%2A~%2F"), "a b*~/");
    }
}
