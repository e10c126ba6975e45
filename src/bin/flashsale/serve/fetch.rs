//! Buyer token keys fetched from an identity provider's URL (`--jwt-key https://...`).
//!
//! One GET per URL over HTTP/1.1, TLS by rustls (on ring) against the system's trusted
//! roots plus any `--jwt-ca` certificates; plain http only to this machine (a key served
//! in the clear from elsewhere could be anyone's). No redirects are followed, an answer
//! past [`KEYS_MAX`] bytes is refused, and a fetch takes at most [`FETCH_TIMEOUT`].
//!
//! An https URL goes through the forward proxy `HTTPS_PROXY` names (an `http://` proxy,
//! asked to `CONNECT`, with Basic credentials if the proxy URL carries them), unless its
//! host is this machine or `NO_PROXY` lists it; the TLS session is still end to end with
//! the provider.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// The most a proxy's answer to `CONNECT` may hold before its blank line.
const PROXY_HEAD_MAX: usize = 8 << 10;

/// A forward proxy for https key URLs, from `HTTPS_PROXY` and `NO_PROXY`.
struct Proxy {
    /// As given, without credentials, for messages.
    text: String,
    host: String,
    port: u16,
    /// The `Proxy-Authorization` header's value, if the proxy URL carries credentials.
    authorization: Option<String>,
    /// The hosts that are reached directly.
    bypass: Vec<Bypass>,
}

/// One `NO_PROXY` entry.
enum Bypass {
    /// `*`: every host.
    All,
    /// A host name and every name under it (`example.com` and `.example.com` both cover
    /// `id.example.com`), or an IP address, matched as written.
    Name(String),
    /// An address range, `10.0.0.0/8` or `fd00::/8`.
    Range(std::net::IpAddr, u8),
}

impl Proxy {
    /// The proxy `HTTPS_PROXY` (or `https_proxy`) names, if any, with `NO_PROXY` (or
    /// `no_proxy`).
    fn from_env() -> Result<Option<Self>, String> {
        let var = |upper: &str, lower: &str| {
            [upper, lower]
                .into_iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
        };
        let Some(proxy) = var("HTTPS_PROXY", "https_proxy") else {
            return Ok(None);
        };
        let no_proxy = var("NO_PROXY", "no_proxy").unwrap_or_default();
        Self::parse(&proxy, &no_proxy)
            .map(Some)
            .map_err(|why| format!("HTTPS_PROXY {}: {why}", without_credentials(&proxy)))
    }

    /// `proxy` as `[http://][user:password@]host:port`, and a `NO_PROXY` list.
    fn parse(proxy: &str, no_proxy: &str) -> Result<Self, String> {
        let proxy = proxy.trim();
        let rest = match proxy.split_once("://") {
            None => proxy,
            Some(("http" | "HTTP", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "only an http:// proxy (asked to CONNECT) is supported, not {scheme}://"
                ));
            }
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, address) = match rest.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, rest),
        };
        let uri: Uri = format!("http://{address}/")
            .parse()
            .map_err(|_| "not a proxy address".to_owned())?;
        let authority = uri.authority().ok_or("not a proxy address")?;
        let port = authority
            .port_u16()
            .ok_or("give the proxy's port (host:port)")?;
        let authorization = credentials.map(|credentials| {
            use base64::Engine;
            let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
            let pair = format!("{}:{}", percent_decoded(user), percent_decoded(password));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        Ok(Self {
            text: format!("http://{address}"),
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            authorization,
            bypass: no_proxy.split(',').filter_map(Bypass::parse).collect(),
        })
    }

    /// Whether `host` (a name, or an address without brackets) is reached directly.
    fn bypasses(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let address = host.parse::<std::net::IpAddr>().ok();
        self.bypass.iter().any(|entry| match entry {
            Bypass::All => true,
            Bypass::Name(name) => {
                host == *name
                    || address.is_some_and(|address| name.parse() == Ok(address))
                    || (address.is_none()
                        && host.ends_with(name.as_str())
                        && host.as_bytes()[host.len() - name.len() - 1] == b'.')
            }
            Bypass::Range(network, bits) => {
                address.is_some_and(|address| in_range(address, *network, *bits))
            }
        })
    }

    /// A TCP stream through the proxy to `host:port`, once the proxy said yes to `CONNECT`.
    async fn tunnel(&self, host: &str, port: u16) -> Result<TcpStream, String> {
        let proxy = &self.text;
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|error| format!("cannot connect to the proxy {proxy}: {error}"))?;
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(authorization) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| format!("the proxy {proxy}: {error}"))?;
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = loop {
            let read = stream
                .read(&mut chunk)
                .await
                .map_err(|error| format!("the proxy {proxy}: {error}"))?;
            if read == 0 {
                return Err(format!(
                    "the proxy {proxy} closed the connection before answering CONNECT {target}"
                ));
            }
            head.extend_from_slice(&chunk[..read]);
            if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if head.len() > PROXY_HEAD_MAX {
                return Err(format!(
                    "the proxy {proxy} answered CONNECT {target} with more than \
                     {PROXY_HEAD_MAX} bytes of head"
                ));
            }
        };
        let status =
            String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or(&[])).into_owned();
        let code = status.split(' ').nth(1);
        if !status.starts_with("HTTP/1.") || code.is_none_or(|code| !code.starts_with('2')) {
            return Err(format!(
                "the proxy {proxy} answered CONNECT {target} with {status:?}"
            ));
        }
        if end != head.len() {
            // The client speaks first in TLS: anything here is not the provider's.
            return Err(format!(
                "the proxy {proxy} sent more than its answer to CONNECT {target}"
            ));
        }
        Ok(stream)
    }
}

impl Bypass {
    fn parse(entry: &str) -> Option<Self> {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.is_empty() {
            return None;
        }
        if entry == "*" {
            return Some(Self::All);
        }
        if let Some((network, bits)) = entry.split_once('/') {
            let network: std::net::IpAddr = network.parse().ok()?;
            let bits: u8 = bits.parse().ok()?;
            let most = if network.is_ipv4() { 32 } else { 128 };
            return (bits <= most).then_some(Self::Range(network, bits));
        }
        let entry = entry.trim_start_matches('.').trim_start_matches("*.");
        let entry = if let Some(inner) = entry.strip_prefix('[') {
            // `[::1]` or `[::1]:443`: the address inside the brackets.
            inner.split(']').next().unwrap_or(inner)
        } else if entry.parse::<std::net::IpAddr>().is_ok() {
            entry
        } else {
            // `host:port` or `1.2.3.4:port`: the port plays no part.
            entry.split(':').next().unwrap_or(entry)
        };
        let entry = entry.trim_end_matches('.');
        (!entry.is_empty()).then(|| Self::Name(entry.to_owned()))
    }
}

/// Whether `address` is in `network/bits` (of the same family).
fn in_range(address: std::net::IpAddr, network: std::net::IpAddr, bits: u8) -> bool {
    use std::net::IpAddr;
    match (address, network) {
        (IpAddr::V4(address), IpAddr::V4(network)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(address) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(address), IpAddr::V6(network)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(address) & mask == u128::from(network) & mask
        }
        _ => false,
    }
}

/// `text` with `%XX` escapes decoded (as in a URL's user name and password).
fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// A proxy URL for messages: its credentials left out.
fn without_credentials(proxy: &str) -> String {
    match proxy.rsplit_once('@') {
        Some((before, after)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…@{after}"),
            None => format!("…@{after}"),
        },
        None => proxy.to_owned(),
    }
}

/// Fetches key URLs; holds the TLS configuration (the trusted roots), made once.
pub struct Fetcher {
    tls: tokio_rustls::TlsConnector,
    proxy: Option<Proxy>,
}

impl Fetcher {
    /// Trusts the system's roots and the certificates in `extra_roots` (PEM files), and
    /// reaches https URLs through the proxy `HTTPS_PROXY` names, if any.
    pub fn new(extra_roots: &[PathBuf]) -> Result<Self, String> {
        let proxy = Proxy::from_env()?;
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
            proxy,
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
        // This machine (plain http is to it only) is never reached through a proxy: the
        // proxy's own loopback is another machine's.
        let tcp = match &self.proxy {
            Some(proxy) if !is_this_machine(&url.host) && !proxy.bypasses(&url.host) => {
                proxy.tunnel(&url.host, url.port).await?
            }
            _ => TcpStream::connect((url.host.as_str(), url.port))
                .await
                .map_err(|error| format!("cannot connect: {error}"))?,
        };
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

    #[test]
    fn a_proxy_is_named_by_its_http_address_and_no_proxy_lists_who_goes_direct() {
        let proxy = Proxy::parse("http://me:p%40ss%3A@proxy.corp:3128/", "").unwrap();
        assert_eq!(
            (proxy.host.as_str(), proxy.port, proxy.text.as_str()),
            ("proxy.corp", 3128, "http://proxy.corp:3128")
        );
        // base64 of `me:p@ss:`
        assert_eq!(proxy.authorization.as_deref(), Some("Basic bWU6cEBzczo="));
        let proxy = Proxy::parse("[fd00::1]:8080", "").unwrap();
        assert_eq!((proxy.host.as_str(), proxy.port), ("fd00::1", 8080));
        assert_eq!(proxy.authorization, None);
        for (bad, why) in [
            ("http://proxy.corp", "port"),
            ("https://proxy.corp:443", "only an http:// proxy"),
            ("socks5h://proxy.corp:1080", "only an http:// proxy"),
            ("http://proxy corp:1", "not a proxy address"),
        ] {
            let error = Proxy::parse(bad, "").err().unwrap_or_default();
            assert!(error.contains(why), "{bad}: {error}");
        }
        assert_eq!(
            without_credentials("http://me:secret@proxy.corp:3128"),
            "http://…@proxy.corp:3128"
        );

        let proxy = Proxy::parse(
            "proxy.corp:3128",
            " Example.COM , .internal.corp,10.0.0.0/8, fd00::/8, 192.168.1.7:443, [::2], ,.",
        )
        .unwrap();
        for direct in [
            "example.com",
            "id.example.com",
            "ID.Example.Com.",
            "login.internal.corp",
            "10.200.0.1",
            "fd00::5",
            "192.168.1.7",
            "::2",
            "0:0::0:2",
        ] {
            assert!(proxy.bypasses(direct), "{direct}");
        }
        for proxied in [
            "notexample.com",
            "example.com.evil.net",
            "internal.corp.evil.net",
            "11.0.0.1",
            "fe80::1",
            "192.168.1.8",
            "id.example.org",
        ] {
            assert!(!proxy.bypasses(proxied), "{proxied}");
        }
        assert!(
            Proxy::parse("p:1", "*")
                .unwrap()
                .bypasses("anything.at.all")
        );
        assert!(!Proxy::parse("p:1", "").unwrap().bypasses("anything.at.all"));
        assert!(in_range(
            "1.2.3.4".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            0
        ));
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
