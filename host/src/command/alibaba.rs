//! The `alibaba-openapi` path: commands through Alibaba Cloud IoT Platform's RPC OpenAPI
//! (`https://iot.{region}.aliyuncs.com`, version 2018-01-20), each call signed with the
//! AccessKey ([`crate::dialect::alibaba::openapi`]) and POSTed as a form.
//!
//! Which call a command becomes, by its name (the device's `product` is the `ProductKey`;
//! its `name`, or else its id without the `{product}.` prefix, is the `DeviceName`):
//!
//! | command name        | call                 | with                                        |
//! |---------------------|----------------------|---------------------------------------------|
//! | `property/set`      | `SetDeviceProperty`  | `Items` = params (a JSON object)            |
//! | `rrpc`              | `RRpc`               | `RequestBase64Byte` = params, `Timeout`     |
//! | starts with `/`     | `Pub`                | `TopicFullName` = name, `MessageContent` = params, QoS 0 |
//! | anything else       | `InvokeThingService` | `Identifier` = name, `Args` = params        |
//!
//! Params sent as a message (`RRpc`, `Pub`) are the text of a JSON string param, or else the
//! params' JSON. `RRpc` waits for the device at most the path's `timeout_ms` less one second,
//! kept within the API's 1–8 s.
//!
//! Answers, see [`classify`]: throttling, system errors and timeouts are retried; anything
//! else with `Success: false` (unknown device, bad parameter, signature, access, …) is a
//! refusal. `RRpc` that reaches the API but not the device (`RrpcCode` other than
//! `SUCCESS`) is retried on `TIMEOUT` and refused otherwise (`OFFLINE`, `HALFCONN`, …).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::http::{HttpClient, Url};
use super::{Failure, Kind, PathConfig, PathSettings, SharedConfig, Transport};
use crate::config::{ConfigError, Expanded, Secret, Table};
use crate::dialect::alibaba::openapi::{self, ApiCredentials, CallContext, RpcRequest};
use crate::event::Command;
use crate::time::Clock;

/// The command name that becomes `SetDeviceProperty`.
pub(crate) const SET_PROPERTY: &str = "property/set";
/// The command name that becomes `RRpc`.
pub(crate) const RRPC: &str = "rrpc";

/// The `alibaba-openapi` kind.
pub const KIND: Kind = Kind {
    name: "alibaba-openapi",
    read: |table| Ok(Box::new(AlibabaSettings::from_config(table)?)),
};

/// An `alibaba-openapi` path's own keys.
#[derive(Default, Deserialize)]
#[serde(default)]
struct AlibabaConfig {
    /// The API's URL, overriding the one `region` gives.
    url: Option<Expanded>,
    /// The region id (`cn-shanghai`, …), also sent as `RegionId`.
    region: Option<Expanded>,
    /// The AccessKey id.
    access_key_id: Option<Expanded>,
    /// The AccessKey secret (the signing key).
    access_key_secret: Option<Secret>,
    /// `IotInstanceId` of an enterprise instance (omit for the public one).
    iot_instance_id: Option<Expanded>,
    /// `https://` URLs: a PEM file of CA certificates trusted besides the system's.
    ca_file: Option<Expanded>,
}

/// An `alibaba-openapi` path's settings, checked.
#[derive(Debug, Clone)]
pub(crate) struct AlibabaSettings {
    /// The API's URL.
    pub url: Url,
    /// `RegionId`.
    pub region: String,
    /// Extra trusted CAs.
    pub ca_file: Option<PathBuf>,
    /// The AccessKey pair.
    pub credentials: ApiCredentials,
    /// `IotInstanceId`, for an enterprise instance.
    pub instance_id: Option<String>,
    /// `Timeout` of `RRpc`, in ms.
    pub rrpc_timeout_ms: u32,
    /// The lanes, time-out and retries.
    pub lanes: PathSettings,
}

impl AlibabaSettings {
    /// From the path's table; the error names the path and the key.
    pub fn from_config(table: &Table) -> Result<Self, ConfigError> {
        let (shared, config) = table.read_both::<SharedConfig, AlibabaConfig>()?;
        let lanes = shared.settings(table)?;
        let url_given = config.url.as_ref().map(|url| url.as_str().to_owned());
        if let Some(url) = &url_given {
            Url::parse(url).map_err(|reason| table.invalid(reason))?;
        }
        let region = config
            .region
            .as_ref()
            .filter(|r| !r.as_str().is_empty())
            .ok_or_else(|| {
                table.invalid("an alibaba-openapi path needs `region` (e.g. cn-shanghai)")
            })?
            .as_str()
            .to_owned();
        let url = url_given.unwrap_or_else(|| format!("https://{}/", openapi::endpoint(&region)));
        let url = Url::parse(&url).map_err(|reason| table.invalid(reason))?;
        let access_key_id = table.required(&config.access_key_id, "access_key_id")?;
        let secret = table.required_secret(&config.access_key_secret, "access_key_secret")?;
        let rrpc_timeout_ms = u32::try_from(shared.timeout_ms.saturating_sub(1000))
            .unwrap_or(u32::MAX)
            .clamp(
                *openapi::RRPC_TIMEOUT_MS.start(),
                *openapi::RRPC_TIMEOUT_MS.end(),
            );
        Ok(AlibabaSettings {
            url,
            region,
            ca_file: config.ca_file.as_ref().map(|f| table.path(f)),
            credentials: ApiCredentials {
                access_key_id: access_key_id.to_owned(),
                access_key_secret: secret.to_owned(),
            },
            instance_id: config
                .iot_instance_id
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .filter(|id| !id.is_empty()),
            rrpc_timeout_ms,
            lanes,
        })
    }
}

impl PathConfig for AlibabaSettings {
    type Transport = AlibabaTransport;

    fn lanes(&self) -> PathSettings {
        self.lanes
    }

    fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    fn transport(&self, _name: &str, clock: &Clock) -> Result<AlibabaTransport, String> {
        AlibabaTransport::new(self.clone(), clock.clone())
    }
}

/// Whether an error `Code` is worth another attempt: throttling (`Throttling`,
/// `Throttling.User`, …), the service being unavailable or failing (`ServiceUnavailable`,
/// `InternalError`, `iot.system.*`), and `iot.common.InvokeTimeout`. Anything else is a
/// refusal, codes not known here included.
pub(crate) fn classify(code: &str) -> bool {
    code.starts_with("Throttling")
        || code.starts_with("ServiceUnavailable")
        || code.starts_with("InternalError")
        || code.starts_with("iot.system.")
        || code == "iot.common.InvokeTimeout"
}

/// How the API answered.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Reply {
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    error_message: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    rrpc_code: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
}

impl Reply {
    fn describe(&self) -> String {
        format!(
            "Alibaba code {} ({}){}",
            self.code.as_deref().unwrap_or("none"),
            self.error_message
                .as_deref()
                .or(self.message.as_deref())
                .unwrap_or("no message"),
            match &self.request_id {
                Some(id) => format!(", RequestId {id}"),
                None => String::new(),
            }
        )
    }
}

/// Sends commands through Alibaba's IoT OpenAPI.
pub(crate) struct AlibabaTransport {
    client: HttpClient,
    target: String,
    settings: AlibabaSettings,
    clock: Clock,
}

impl AlibabaTransport {
    /// A transport for `settings`, signing with the time of `clock`.
    pub fn new(settings: AlibabaSettings, clock: Clock) -> Result<Self, String> {
        Ok(AlibabaTransport {
            client: HttpClient::new(&settings.url, settings.ca_file.as_deref())?,
            target: settings.url.target.clone(),
            settings,
            clock,
        })
    }

    /// The call `command` becomes (see the module's table).
    pub fn request(&self, command: &Command) -> Result<RpcRequest, Failure> {
        let device = &command.device;
        let product = device.product.as_deref().ok_or_else(|| {
            Failure::permanent(format!(
                "device {} has no product: the ProductKey is unknown",
                device.id
            ))
        })?;
        let name = device.name.as_deref().unwrap_or_else(|| {
            device
                .id
                .strip_prefix(product)
                .and_then(|rest| rest.strip_prefix('.'))
                .unwrap_or(&device.id)
        });
        let params = &command.params;
        let message = || -> Vec<u8> {
            match serde_json::from_str::<String>(params.as_str()) {
                Ok(text) => text.into_bytes(),
                Err(_) => params.as_str().as_bytes().to_vec(),
            }
        };
        let request = if command.name == SET_PROPERTY {
            RpcRequest::set_device_property(product, name, params)
        } else if command.name == RRPC {
            RpcRequest::rrpc(product, name, &message(), self.settings.rrpc_timeout_ms)
                .map_err(|e| Failure::permanent(e.to_string()))?
        } else if command.name.starts_with('/') {
            RpcRequest::publish(product, &command.name, &message(), 0)
                .map_err(|e| Failure::permanent(e.to_string()))?
        } else {
            RpcRequest::invoke_thing_service(product, name, &command.name, params)
        };
        Ok(match &self.settings.instance_id {
            Some(id) => request.param("IotInstanceId", id.as_str()),
            None => request,
        })
    }
}

impl Transport for AlibabaTransport {
    async fn deliver(&self, command: &Command) -> Result<(), Failure> {
        let request = self.request(command)?;
        let nonce = format!("{:032x}", rand::random::<u128>());
        let signed = request.sign(
            "POST",
            &self.settings.credentials,
            &CallContext {
                region_id: &self.settings.region,
                nonce: &nonce,
                timestamp_ms: self.clock.now_ms(),
            },
        );
        let answer = self
            .client
            .send(
                hyper::Method::POST,
                &self.target,
                &[("content-type", "application/x-www-form-urlencoded")],
                signed.query.into_bytes(),
            )
            .await?;
        let action = request.action();
        let status = answer.status;
        let reply: Option<Reply> = serde_json::from_slice(&answer.body).ok();
        let Some(reply) = reply else {
            let reason = format!("{action} answered {status}: {}", answer.excerpt());
            return Err(if status.is_success() || status.is_server_error() {
                Failure::retry(reason)
            } else {
                Failure::permanent(reason)
            });
        };
        if status.is_success() && reply.success == Some(true) {
            return match reply.rrpc_code.as_deref() {
                None | Some("SUCCESS") => Ok(()),
                Some(code) => {
                    let reason = format!("{action}: the device answered RrpcCode {code}");
                    Err(if code == "TIMEOUT" {
                        Failure::retry(reason)
                    } else {
                        Failure::permanent(reason)
                    })
                }
            };
        }
        let reason = format!("{action} answered {status}: {}", reply.describe());
        let retry = match &reply.code {
            Some(code) => classify(code),
            None => status.is_server_error() || status.as_u16() == 429,
        };
        Err(if retry {
            Failure::retry(reason)
        } else {
            Failure::permanent(reason)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Device, Json};

    #[test]
    fn throttling_and_system_errors_are_retried_and_the_rest_refused() {
        for code in [
            "Throttling",
            "Throttling.User",
            "ServiceUnavailable",
            "InternalError",
            "iot.system.SystemException",
            "iot.common.InvokeTimeout",
        ] {
            assert!(classify(code), "{code}");
        }
        for code in [
            "iot.device.NotExistedDevice",
            "InvalidParameter",
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId.NotFound",
            "Forbidden.RAM",
        ] {
            assert!(!classify(code), "{code}");
        }
    }

    fn transport() -> AlibabaTransport {
        let text = "[[command_path]]\nname = \"ali\"\nkind = \"alibaba-openapi\"\n\
                    region = \"cn-shanghai\"\naccess_key_id = \"id\"\n\
                    access_key_secret = \"s\"\niot_instance_id = \"iot-1\"\n";
        let config = crate::config::Config::parse(std::path::Path::new("x.toml"), text).unwrap();
        let settings = AlibabaSettings::from_config(&config.command_paths[0]).unwrap();
        assert_eq!(settings.url.authority(), "iot.cn-shanghai.aliyuncs.com:443");
        assert_eq!(settings.rrpc_timeout_ms, 4000);
        AlibabaTransport::new(settings, Clock::System).unwrap()
    }

    fn command(name: &str, params: &str) -> Command {
        let mut device = Device::new("a1Pk.lamp");
        device.product = Some("a1Pk".into());
        Command {
            via: None,
            device,
            name: name.into(),
            params: Json::from_text(params.into()).unwrap(),
            reply_to: None,
        }
    }

    #[test]
    fn command_names_map_to_the_documented_calls() {
        let transport = transport();
        let set = transport
            .request(&command("property/set", r#"{"On":1}"#))
            .unwrap();
        assert_eq!(set.action(), "SetDeviceProperty");
        assert_eq!(set.get("Items"), Some(r#"{"On":1}"#));
        assert_eq!(set.get("DeviceName"), Some("lamp"));
        assert_eq!(set.get("IotInstanceId"), Some("iot-1"));
        let rrpc = transport.request(&command("rrpc", r#""ping""#)).unwrap();
        assert_eq!(rrpc.action(), "RRpc");
        assert_eq!(rrpc.get("RequestBase64Byte"), Some("cGluZw=="));
        assert_eq!(rrpc.get("Timeout"), Some("4000"));
        let publish = transport
            .request(&command("/a1Pk/lamp/user/get", r#"{"a":1}"#))
            .unwrap();
        assert_eq!(publish.action(), "Pub");
        assert_eq!(publish.get("TopicFullName"), Some("/a1Pk/lamp/user/get"));
        let invoke = transport.request(&command("reboot", "{}")).unwrap();
        assert_eq!(invoke.action(), "InvokeThingService");
        assert_eq!(invoke.get("Identifier"), Some("reboot"));
        let mut orphan = command("reboot", "{}");
        orphan.device.product = None;
        let failure = transport.request(&orphan).unwrap_err();
        assert!(!failure.retryable);
        assert!(failure.reason.contains("no product"), "{}", failure.reason);
    }

    /// The plugin-controlled device name and command name are form values, percent-encoded
    /// where they are signed and sent: they cannot add or replace a parameter (unlike a
    /// Tuya device id, which goes into the URL path and is checked there).
    #[test]
    fn a_device_or_command_name_carrying_parameters_stays_one_encoded_value() {
        let transport = transport();
        let mut injected = command("reboot&Action=DeleteDevice", "{}");
        injected.device.id = "a1Pk.lamp&Action=DeleteDevice&ProductKey=other".into();
        let request = transport.request(&injected).unwrap();
        let signed = request.sign(
            "POST",
            &transport.settings.credentials,
            &CallContext {
                region_id: "cn-shanghai",
                nonce: "n",
                timestamp_ms: 0,
            },
        );
        let pairs: Vec<(&str, &str)> = signed
            .query
            .split('&')
            .map(|pair| pair.split_once('=').unwrap())
            .collect();
        let values = |key: &str| -> Vec<&str> {
            pairs
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .collect()
        };
        assert_eq!(values("Action"), ["InvokeThingService"]);
        assert_eq!(values("ProductKey"), ["a1Pk"]);
        assert_eq!(
            values("DeviceName"),
            ["lamp%26Action%3DDeleteDevice%26ProductKey%3Dother"]
        );
        assert_eq!(values("Identifier"), ["reboot%26Action%3DDeleteDevice"]);
    }
}
