//! Where a connection goes: one reading of the URLs of the brokers (AMQP, MQTT, Pulsar) and
//! of the HTTP APIs the command paths call.
//!
//! [`Endpoint::split`] reads the scheme and the authority; its errors are typed
//! ([`UrlError`]), so that each caller can phrase them for what it configures (a broker URL
//! shows the scheme it expects, a command path's URL says where credentials go instead).

/// A protocol's URL schemes, without and with TLS, and their default ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// `http://` (80) and `https://` (443).
    pub const HTTP: Scheme = Scheme {
        plain: "http",
        tls: "https",
        plain_port: 80,
        tls_port: 443,
    };
    /// `pulsar://` (6650) and `pulsar+ssl://` (6651).
    pub(crate) const PULSAR: Scheme = Scheme {
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

/// What is wrong with a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    /// It is not in either of the scheme's names.
    Scheme(Scheme),
    /// It has a `user:password@`: credentials are derived, or configured apart, and a URL is
    /// shown in `/status` and in errors.
    Credentials,
    /// The host is empty.
    NoHost,
    /// The port is not a number up to 65535.
    Port(String),
    /// An IPv6 host's `[` is not closed.
    Unclosed,
}

impl std::fmt::Display for UrlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlError::Scheme(scheme) => write!(
                f,
                "expected {}://HOST:PORT (or {}:// without TLS)",
                scheme.tls, scheme.plain
            ),
            UrlError::Credentials => f.write_str("credentials do not belong in the URL"),
            UrlError::NoHost => f.write_str("no host"),
            UrlError::Port(port) => write!(f, "\"{port}\" is not a port"),
            UrlError::Unclosed => f.write_str("unclosed `[`"),
        }
    }
}

impl Endpoint {
    /// Reads `TLS://HOST[:PORT]REST` or `PLAIN://HOST[:PORT]REST` in `scheme`'s names (an
    /// IPv6 host in brackets): the endpoint, and the rest after the authority (`/path?query`,
    /// or empty).
    pub fn split(url: &str, scheme: Scheme) -> Result<(Self, &str), UrlError> {
        let rest = |name: &str| url.strip_prefix(name)?.strip_prefix("://");
        let (tls, rest) = match (rest(scheme.tls), rest(scheme.plain)) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => return Err(UrlError::Scheme(scheme)),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(end);
        if authority.contains('@') {
            return Err(UrlError::Credentials);
        }
        // `[v6]:port`, `[v6]`, `host:port` or `host`.
        let (host, port) = match authority.strip_prefix('[') {
            Some(bracketed) => match bracketed.split_once(']') {
                Some((host, "")) => (host, None),
                Some((host, port)) => (host, Some(port.trim_start_matches(':'))),
                None => return Err(UrlError::Unclosed),
            },
            None => match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| UrlError::Port(port.to_owned()))?,
            None if tls => scheme.tls_port,
            None => scheme.plain_port,
        };
        if host.is_empty() {
            return Err(UrlError::NoHost);
        }
        let endpoint = Endpoint {
            tls,
            host: host.to_owned(),
            port,
        };
        Ok((endpoint, rest))
    }

    /// The endpoint of `TLS://HOST[:PORT][/…]` or `PLAIN://HOST[:PORT][/…]` in `scheme`'s
    /// names, what follows the authority left aside.
    pub fn parse(url: &str, scheme: Scheme) -> Result<Self, String> {
        Self::split(url, scheme)
            .map(|(endpoint, _)| endpoint)
            .map_err(|e| e.to_string())
    }

    /// [`Endpoint::parse`], the error naming the URL (without its `user:password@`).
    pub(crate) fn parse_named(url: &str, scheme: Scheme) -> Result<Self, String> {
        Self::parse(url, scheme)
            .map_err(|reason| format!("url \"{}\": {reason}", crate::config::redacted_url(url)))
    }

    /// `HOST:PORT`, an IPv6 host in brackets.
    pub fn address(&self) -> String {
        address(&self.host, self.port)
    }

    /// The URL in `scheme`'s names, as it is connected to.
    pub fn url(&self, scheme: Scheme) -> String {
        let name = if self.tls { scheme.tls } else { scheme.plain };
        format!("{name}://{}", self.address())
    }
}

/// `HOST:PORT`, an IPv6 host in brackets.
pub fn address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The AMQP and MQTT connectors' tests cover the parsing itself with their schemes, the
    // command paths' HTTP client with http:// and https://.

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

    #[test]
    fn the_rest_after_the_authority_is_left_to_the_caller_and_errors_are_typed() {
        let (endpoint, rest) = Endpoint::split("https://h/x?y=1", Scheme::HTTP).unwrap();
        assert_eq!((endpoint.address(), rest), ("h:443".to_owned(), "/x?y=1"));
        let (endpoint, rest) = Endpoint::split("http://[::1]:8080?q", Scheme::HTTP).unwrap();
        assert_eq!((endpoint.address(), rest), ("[::1]:8080".to_owned(), "?q"));
        let error = |url: &str| Endpoint::split(url, Scheme::AMQP).unwrap_err();
        assert_eq!(error("amqp://[::1"), UrlError::Unclosed);
        assert_eq!(error("amqps://u:p@h"), UrlError::Credentials);
        assert_eq!(error("amqps://h:x"), UrlError::Port("x".into()));
        assert_eq!(error("mqtt://h"), UrlError::Scheme(Scheme::AMQP));
    }
}
