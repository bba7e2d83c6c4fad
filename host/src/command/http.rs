//! The HTTP/1.1 client of the command paths (webhook, the vendors' OpenAPIs): `http://` over
//! TCP or `https://` over rustls ([`crate::tls::client_config`]: system roots plus the
//! path's `ca_file`), idle connections kept and reused, answers read up to a size cap.
//!
//! One [`HttpClient`] talks to one origin (scheme, host, port). Each request borrows an idle
//! connection or opens one, and puts it back once the whole answer is read, so a path's
//! lanes keep at most one connection each in steady state.

use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use super::Failure;
use crate::endpoint::{Endpoint, Scheme, UrlError};

/// The most of an answer's body that is read; a longer answer is a failure (a vendor API
/// answers a command in well under a kilobyte).
pub(crate) const MAX_ANSWER: usize = 1 << 20;

/// An answer: its status and body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: hyper::StatusCode,
    /// The whole body (at most [`MAX_ANSWER`] bytes).
    pub body: Bytes,
}

impl Answer {
    /// The start of the body as text, for error messages.
    pub(crate) fn excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body[..self.body.len().min(200)]);
        text.trim().to_owned()
    }
}

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    /// `https://` or not.
    pub tls: bool,
    /// The host, without brackets or port.
    pub host: String,
    /// The port (80 or 443 unless given).
    pub port: u16,
    /// The path and query, `/` at least, without a trailing `/` unless it is all.
    pub target: String,
}

impl Url {
    /// Parses `url`; the error names it (without a `user:password@`, which is refused:
    /// credentials go in the path's `authorization` or the vendor's keys).
    pub fn parse(url: &str) -> Result<Url, String> {
        let shown = crate::config::redacted_url(url);
        let (endpoint, rest) = Endpoint::split(url, Scheme::HTTP).map_err(|e| match e {
            UrlError::Scheme(_) => format!("url \"{shown}\" is neither http:// nor https://"),
            UrlError::Credentials => format!(
                "url \"{shown}\": credentials do not belong in the URL (give them as the path's \
                 `authorization`)"
            ),
            UrlError::NoHost => format!("url \"{shown}\" has no host"),
            UrlError::Port(port) => format!("url \"{shown}\": bad port \"{port}\""),
            UrlError::Unclosed => format!("url \"{shown}\": unclosed `[`"),
        })?;
        let target = match rest {
            "" => "/",
            path if path.starts_with('/') => path,
            _ => {
                return Err(format!(
                    "url \"{shown}\": a query or fragment needs a path (`/?…`)"
                ));
            }
        };
        Ok(Url {
            tls: endpoint.tls,
            host: endpoint.host,
            port: endpoint.port,
            target: target.to_owned(),
        })
    }

    /// `host:port`, as the `Host` header and the connection take it.
    pub(crate) fn authority(&self) -> String {
        crate::endpoint::address(&self.host, self.port)
    }
}

/// Requests to one origin over kept-alive connections.
pub(crate) struct HttpClient {
    authority: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl HttpClient {
    /// A client for `url`'s origin; `ca_file` adds trusted CAs for `https://`.
    pub fn new(url: &Url, ca_file: Option<&std::path::Path>) -> Result<Self, String> {
        let tls = if url.tls {
            let config = crate::tls::client_config(ca_file).map_err(|e| e.to_string())?;
            let name = ServerName::try_from(url.host.clone())
                .map_err(|e| format!("host \"{}\": {e}", url.host))?;
            Some((tokio_rustls::TlsConnector::from(Arc::clone(&config)), name))
        } else {
            None
        };
        Ok(HttpClient {
            authority: url.authority(),
            tls,
            idle: Mutex::default(),
        })
    }

    /// Sends one request and reads the whole answer. Connection and transfer problems are
    /// [`Failure::retry`]; the status is the caller's to judge.
    pub async fn send(
        &self,
        method: hyper::Method,
        target: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Answer, Failure> {
        let mut request = hyper::Request::builder()
            .method(method.clone())
            .uri(target)
            .header(hyper::header::HOST, &self.authority);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::permanent(format!("cannot build the request: {e}")))?;
        let mut sender = self.connection().await?;
        // The target is left out: a path may hold a token (Tuya's refresh), a query a
        // signature.
        let response = sender.send_request(request).await.map_err(|e| {
            Failure::retry(format!(
                "{method} request to {} failed: {e}",
                self.authority
            ))
        })?;
        let status = response.status();
        // Read the body to the end so the connection can carry the next request.
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| Failure::retry(format!("reading the answer failed: {e}")))?
            .to_bytes();
        crate::sync::lock(&self.idle).push(sender);
        Ok(Answer { status, body })
    }

    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        loop {
            let reused = crate::sync::lock(&self.idle).pop();
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
        let handshake_failed = |e: hyper::Error| {
            Failure::retry(format!(
                "HTTP handshake with {} failed: {e}",
                self.authority
            ))
        };
        match &self.tls {
            None => handshake(stream).await.map_err(handshake_failed),
            Some((connector, name)) => {
                let stream = connector.connect(name.clone(), stream).await.map_err(|e| {
                    Failure::retry(format!("TLS handshake with {} failed: {e}", self.authority))
                })?;
                handshake(stream).await.map_err(handshake_failed)
            }
        }
    }
}

/// The path of a request target, without its query: a query may carry a signature or an
/// access key id, which errors do not repeat.
pub(crate) fn path_only(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

/// An HTTP/1.1 connection over `stream`, its driver spawned: the sender of its requests.
async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_their_default_ports_and_keep_the_path() {
        let url = Url::parse("https://openapi.tuyaeu.com").unwrap();
        assert_eq!(
            (url.tls, url.authority().as_str(), url.target.as_str()),
            (true, "openapi.tuyaeu.com:443", "/")
        );
        let url = Url::parse("http://127.0.0.1:8080/hook?x=1").unwrap();
        assert_eq!(
            (url.tls, url.authority().as_str(), url.target.as_str()),
            (false, "127.0.0.1:8080", "/hook?x=1")
        );
        assert!(Url::parse("ftp://x").unwrap_err().contains("neither"));
        assert!(Url::parse("http://:80/").unwrap_err().contains("no host"));
        assert!(
            Url::parse("http://h:port/")
                .unwrap_err()
                .contains("bad port")
        );
    }

    #[test]
    fn a_url_with_a_password_is_refused_without_showing_it() {
        for url in [
            "https://ops:s3cret@hooks.example.com/in",
            "http://ops:s3cret@127.0.0.1:8080",
            "https://ops:s3cret@[::1]:8443/",
        ] {
            let error = Url::parse(url).unwrap_err();
            assert!(error.contains("credentials do not belong"), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
        let error = Url::parse("ftp://ops:s3cret@host/").unwrap_err();
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn a_query_is_left_out_of_what_errors_show() {
        assert_eq!(path_only("/?Signature=abc&AccessKeyId=x"), "/");
        assert_eq!(path_only("/v1.0/token"), "/v1.0/token");
    }
}
