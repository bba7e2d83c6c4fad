//! Where a connector connects: one reading of the brokers' URLs.

/// A protocol's URL schemes, without and with TLS, and their default ports.
#[derive(Debug, Clone, Copy)]
pub struct Scheme {
    plain: &'static str,
    tls: &'static str,
    plain_port: u16,
    tls_port: u16,
}

impl Scheme {
    /// `amqp://` (5672) and `amqps://` (5671).
    pub const AMQP: Scheme = Scheme {
        plain: "amqp",
        tls: "amqps",
        plain_port: 5672,
        tls_port: 5671,
    };
    /// `mqtt://` (1883) and `mqtts://` (8883).
    pub const MQTT: Scheme = Scheme {
        plain: "mqtt",
        tls: "mqtts",
        plain_port: 1883,
        tls_port: 8883,
    };
    /// `pulsar://` (6650) and `pulsar+ssl://` (6651).
    pub const PULSAR: Scheme = Scheme {
        plain: "pulsar",
        tls: "pulsar+ssl",
        plain_port: 6650,
        tls_port: 6651,
    };
}

/// A broker's address, from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Whether the URL has the TLS scheme.
    pub tls: bool,
    /// The host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// The port: as given, or the scheme's default.
    pub port: u16,
}

impl Endpoint {
    /// `TLS://HOST[:PORT][/…]` or `PLAIN://HOST[:PORT][/…]` in `scheme`'s names; an IPv6 host
    /// in brackets. Credentials are refused: they are derived, or configured apart, and a URL
    /// is shown in `/status` and in errors.
    pub fn parse(url: &str, scheme: Scheme) -> Result<Self, String> {
        let rest = |name: &str| url.strip_prefix(name)?.strip_prefix("://");
        let (tls, rest) = match (rest(scheme.tls), rest(scheme.plain)) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => {
                return Err(format!(
                    "expected {}://HOST:PORT (or {}:// without TLS)",
                    scheme.tls, scheme.plain
                ));
            }
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err("credentials do not belong in the URL".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                let port = port
                    .parse()
                    .map_err(|_| format!("\"{port}\" is not a port"))?;
                (host, port)
            }
            _ => (
                authority,
                if tls {
                    scheme.tls_port
                } else {
                    scheme.plain_port
                },
            ),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(Endpoint {
            tls,
            host: host.to_owned(),
            port,
        })
    }

    /// [`Endpoint::parse`], the error naming the URL (without its `user:password@`).
    pub fn parse_named(url: &str, scheme: Scheme) -> Result<Self, String> {
        Self::parse(url, scheme)
            .map_err(|reason| format!("url \"{}\": {reason}", crate::config::redacted_url(url)))
    }

    /// `HOST:PORT`, an IPv6 host in brackets.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL in `scheme`'s names, as it is connected to.
    pub fn url(&self, scheme: Scheme) -> String {
        let name = if self.tls { scheme.tls } else { scheme.plain };
        format!("{name}://{}", self.address())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The AMQP and MQTT connectors' tests cover the parsing itself with their schemes.

    #[test]
    fn a_pulsar_url_takes_its_default_ports_and_an_ipv6_host_keeps_its_brackets() {
        let v6 = Endpoint::parse("pulsar+ssl://[::1]", Scheme::PULSAR).unwrap();
        assert_eq!((v6.tls, v6.host.as_str(), v6.port), (true, "::1", 6651));
        assert_eq!(v6.address(), "[::1]:6651");
        assert_eq!(v6.url(Scheme::PULSAR), "pulsar+ssl://[::1]:6651");
        let tuya = Endpoint::parse("pulsar+ssl://mqe.tuyaeu.com:7285/", Scheme::PULSAR).unwrap();
        assert_eq!(tuya.address(), "mqe.tuyaeu.com:7285");
        let plain = Endpoint::parse("pulsar://127.0.0.1", Scheme::PULSAR).unwrap();
        assert_eq!((plain.tls, plain.port), (false, 6650));
    }

    #[test]
    fn what_is_wrong_with_a_url_is_named() {
        let error = |url: &str| Endpoint::parse(url, Scheme::MQTT).unwrap_err();
        assert_eq!(
            error("http://host"),
            "expected mqtts://HOST:PORT (or mqtt:// without TLS)"
        );
        // A scheme that only begins like the protocol's is another scheme.
        assert!(
            error("mqttx://host").starts_with("expected"),
            "{}",
            error("mqttx://host")
        );
        assert_eq!(error("mqtt://host:port"), "\"port\" is not a port");
        assert_eq!(error("mqtt://:1883"), "no host");
        assert_eq!(
            error("mqtt://user:pw@host"),
            "credentials do not belong in the URL"
        );
    }
}
