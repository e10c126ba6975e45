//! Buyer token keys fetched from an identity provider's URL (`--jwt-key https://...`).
//!
//! One GET per URL over HTTP/1.1, TLS by rustls (on ring) against the system's trusted
//! roots plus any `--jwt-ca` certificates; plain http only to this machine (a key served
//! in the clear from elsewhere could be anyone's). No redirects are followed, an answer
//! past [`KEYS_MAX`] bytes is refused, and a fetch takes at most [`FETCH_TIMEOUT`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// The most one key URL's answer may hold (a JWKS is a few kilobytes).
pub const KEYS_MAX: usize = 1 << 20;
/// How long one fetch may take, from connecting to the last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A URL buyer token keys are fetched from.
pub struct KeyUrl {
    /// As given, for messages.
    text: String,
    /// The host to connect to and name in TLS (an IPv6 address without its brackets).
    host: String,
    port: u16,
    /// `host[:port]`, for the `Host` header.
    authority: String,
    path: String,
    tls: bool,
}

impl KeyUrl {
    /// Whether `text` names a URL rather than a file.
    pub fn is_url(text: &str) -> bool {
        text.starts_with("https://") || text.starts_with("http://")
    }

    /// Parses an `https://` URL, or an `http://` one to this machine.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: Uri = text
            .parse()
            .map_err(|error| format!("not a URL: {error}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("not an https URL".to_owned()),
        };
        let authority = uri.authority().ok_or("the URL names no host")?;
        if authority.as_str().contains('@') {
            return Err("a key URL cannot carry a user name or password".to_owned());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !tls && !is_this_machine(&host) {
            return Err(format!(
                "keys over plain http only from this machine (127.0.0.1, ::1, localhost), \
                 not {host}: use https"
            ));
        }
        Ok(Self {
            text: text.to_owned(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or("/".to_owned(), |path| path.as_str().to_owned()),
            host,
            tls,
        })
    }
}

impl std::fmt::Display for KeyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn is_this_machine(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Fetches key URLs; holds the TLS configuration (the trusted roots), made once.
pub struct Fetcher {
    tls: tokio_rustls::TlsConnector,
}

impl Fetcher {
    /// Trusts the system's roots and the certificates in `extra_roots` (PEM files).
    pub fn new(extra_roots: &[PathBuf]) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        // A system store that does not read leaves only the `--jwt-ca` roots; a URL whose
        // certificate they do not vouch for then fails with its reason at start.
        let (_, _) =
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        for path in extra_roots {
            let name = path.display();
            let contents = crate::input::read_bounded(path, KEYS_MAX as u64)
                .map_err(|why| format!("--jwt-ca {name}: {why}"))?;
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(&contents) {
                let cert = cert.map_err(|error| format!("--jwt-ca {name}: {error}"))?;
                roots
                    .add(cert)
                    .map_err(|error| format!("--jwt-ca {name}: {error}"))?;
                added += 1;
            }
            if added == 0 {
                return Err(format!("--jwt-ca {name}: no PEM certificate in it"));
            }
        }
        if roots.is_empty() {
            // A slim container image often has no CA bundle: say so rather than fail
            // every certificate as "unknown issuer".
            return Err(
                "no trusted CA certificates to check a key URL's with: the system \
                 has none (install its CA bundle, e.g. ca-certificates) and no --jwt-ca \
                 was given"
                    .to_owned(),
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("TLS: {error}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// The body of a `200 OK` answer to a GET of `url`, or why there is none.
    pub async fn fetch(&self, url: &KeyUrl) -> Result<Vec<u8>, String> {
        self.fetch_within(url, FETCH_TIMEOUT).await
    }

    async fn fetch_within(&self, url: &KeyUrl, timeout: Duration) -> Result<Vec<u8>, String> {
        tokio::time::timeout(timeout, self.fetch_now(url))
            .await
            .map_err(|_| format!("no whole answer within {timeout:?}"))?
    }

    async fn fetch_now(&self, url: &KeyUrl) -> Result<Vec<u8>, String> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|error| format!("cannot connect: {error}"))?;
        if !url.tls {
            return get(TokioIo::new(tcp), url).await;
        }
        let name = ServerName::try_from(url.host.clone())
            .map_err(|error| format!("{}: {error}", url.host))?;
        let stream = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|error| format!("TLS: {error}"))?;
        get(TokioIo::new(stream), url).await
    }
}

async fn get<I>(io: I, url: &KeyUrl) -> Result<Vec<u8>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|error| format!("HTTP: {error}"))?;
    let connection = tokio::spawn(connection);
    let exchange = async {
        let request = Request::get(url.path.as_str())
            .header(header::HOST, url.authority.as_str())
            .header(
                header::ACCEPT,
                "application/jwk-set+json, application/json, application/x-pem-file",
            )
            .header(header::USER_AGENT, "flashsale-serve")
            .body(Empty::<Bytes>::new())
            .map_err(|error| format!("HTTP: {error}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("HTTP: {error}"))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(format!(
                "answered {status}: redirects are not followed, give the final URL"
            ));
        }
        if status != StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        let body = Limited::new(response.into_body(), KEYS_MAX)
            .collect()
            .await
            .map_err(|error| format!("reading the answer: {error} (at most {KEYS_MAX} bytes)"))?;
        Ok(body.to_bytes().to_vec())
    };
    let fetched = exchange.await;
    connection.abort();
    fetched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_urls_are_https_or_this_machine() {
        let url = KeyUrl::parse("https://id.example.com/.well-known/jwks.json").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str(), url.tls),
            ("id.example.com", 443, "/.well-known/jwks.json", true)
        );
        let url = KeyUrl::parse("http://[::1]:8081/keys?v=2").unwrap();
        assert_eq!(
            (
                url.host.as_str(),
                url.port,
                url.authority.as_str(),
                url.path.as_str()
            ),
            ("::1", 8081, "[::1]:8081", "/keys?v=2")
        );
        assert!(KeyUrl::parse("http://127.0.0.1/jwks").is_ok());
        assert!(KeyUrl::parse("http://localhost:9/jwks").is_ok());
        for refused in [
            "http://id.example.com/jwks",
            "http://10.0.0.1/jwks",
            "ftp://localhost/jwks",
            "https://user:pass@id.example.com/jwks",
            "https://",
        ] {
            assert!(KeyUrl::parse(refused).is_err(), "{refused}");
        }
        assert!(KeyUrl::is_url("https://x") && !KeyUrl::is_url("keys/jwks.json"));
    }

    /// A plain-http server on this machine that answers one request with `answer` (after
    /// reading the request's head), or holds the connection open without a word when
    /// `answer` is `None`; returns its URL.
    fn answering_once(answer: Option<Vec<u8>>) -> KeyUrl {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let mut stream = reader.into_inner();
            match answer {
                // The client may hang up before reading all of it.
                Some(answer) => drop(stream.write_all(&answer)),
                None => std::thread::sleep(Duration::from_secs(5)),
            }
        });
        KeyUrl::parse(&format!("http://127.0.0.1:{port}/jwks.json")).unwrap()
    }

    fn fetcher() -> Fetcher {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");
        Fetcher::new(&[PathBuf::from(ca)]).unwrap()
    }

    #[tokio::test]
    async fn a_fetch_takes_a_whole_ok_answer_and_refuses_the_rest_with_a_reason() {
        let fetcher = fetcher();
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{\"keys\":1}".to_vec();
        let url = answering_once(Some(ok));
        assert_eq!(fetcher.fetch(&url).await.unwrap(), b"{\"keys\":1}");

        let moved =
            b"HTTP/1.1 301 Moved Permanently\r\nlocation: /new\r\ncontent-length: 0\r\n\r\n";
        let why = fetcher
            .fetch(&answering_once(Some(moved.to_vec())))
            .await
            .unwrap_err();
        assert!(why.contains("redirects are not followed"), "{why}");

        let mut huge = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            KEYS_MAX + 1
        )
        .into_bytes();
        huge.resize(huge.len() + KEYS_MAX + 1, b' ');
        let why = fetcher
            .fetch(&answering_once(Some(huge)))
            .await
            .unwrap_err();
        assert!(why.contains(&format!("at most {KEYS_MAX} bytes")), "{why}");

        let why = fetcher
            .fetch_within(&answering_once(None), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(why.contains("no whole answer within 200ms"), "{why}");
    }
}
