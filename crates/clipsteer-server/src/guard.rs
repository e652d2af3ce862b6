//! Which requests the server answers at all. A web page the user has open elsewhere can make the
//! browser send requests to a server on loopback: the browser marks them with that page's
//! `Origin`. A DNS-rebinding page reaches the server under the attacker's own host name, which
//! the `Host` header carries. So a request must name the server by a host it answers to, and, if
//! a browser says which page sent it, come from the server's own page or an origin the operator
//! allows. Both checks run before any route, the token's included.

use super::error::ApiError;
use axum::http::{HeaderMap, StatusCode, Version};
use std::net::{IpAddr, SocketAddr};

/// A host name as the `Host` header or an origin carries it, without its port.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    Ip(IpAddr),
    /// Lowercase, without a trailing dot.
    Domain(String),
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Name::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Name::Ip(ip) => write!(f, "{ip}"),
            Name::Domain(domain) => f.write_str(domain),
        }
    }
}

impl Name {
    fn parse(text: &str) -> Option<Name> {
        if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            return inner.parse().ok().map(Name::Ip);
        }
        // A trailing dot is the root of the DNS: `localhost.` is `localhost`, and browsers read
        // `127.0.0.1.` as the address 127.0.0.1 (WHATWG URL's IPv4 parser drops the empty last
        // part), so it is one here too rather than a host name nobody could allow.
        let text = text.strip_suffix('.').unwrap_or(text);
        if let Ok(ip) = text.parse::<std::net::Ipv4Addr>() {
            return Some(Name::Ip(IpAddr::V4(ip)));
        }
        let name = text.to_ascii_lowercase();
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        valid.then_some(Name::Domain(name))
    }
}

/// `name[:port]` or `[v6][:port]`, as in `Host` and in an origin.
fn split_authority(text: &str) -> Option<(Name, Option<u16>)> {
    let text = text.trim();
    let (name, port) = if text.starts_with('[') {
        let end = text.find(']')?;
        let (name, rest) = text.split_at(end + 1);
        match rest {
            "" => (name, None),
            _ => (name, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match text.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        // Digits only: u16's parser would take "+80" too.
        Some(port) if port.bytes().all(|b| b.is_ascii_digit()) => Some(port.parse::<u16>().ok()?),
        Some(_) => return None,
        None => None,
    };
    Some((Name::parse(name)?, port))
}

/// An origin, `scheme://host[:port]`, with the scheme's default port filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    name: Name,
    port: u16,
}

impl Origin {
    fn parse(text: &str) -> Option<Origin> {
        let (scheme, authority) = text.trim().split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let (name, port) = split_authority(authority.strip_suffix('/').unwrap_or(authority))?;
        Some(Origin {
            scheme,
            name,
            port: port.unwrap_or(default_port),
        })
    }
}

/// One entry of `--allowed-hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Any,
    Exact(Name),
    /// `.example.org`: the name and every name under it.
    Under(String),
}

#[derive(Debug, Clone)]
pub struct Guard {
    bound: SocketAddr,
    hosts: Vec<HostRule>,
    any_origin: bool,
    origins: Vec<Origin>,
}

/// Checks an `--allowed-hosts` entry; the error says what an entry looks like.
pub fn parse_allowed_host(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(String::new()); // an empty environment variable: no names
    }
    host_rule(text).map(|_| text.to_string()).ok_or_else(|| {
        format!("'{text}' is not a host name; give names such as clip.example.org, .example.org (it and every name under it) or * (any), without a scheme or port")
    })
}

fn host_rule(text: &str) -> Option<HostRule> {
    if text == "*" {
        return Some(HostRule::Any);
    }
    if let Some(domain) = text.strip_prefix('.') {
        return match Name::parse(domain)? {
            Name::Domain(domain) => Some(HostRule::Under(domain)),
            Name::Ip(_) => None,
        };
    }
    Name::parse(text).map(HostRule::Exact)
}

/// Checks an `--allowed-origins` entry; the error says what an entry looks like.
pub fn parse_allowed_origin(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(String::new());
    }
    if text == "*" || Origin::parse(text).is_some_and(|_| !has_path(text)) {
        return Ok(text.to_string());
    }
    Err(format!("'{text}' is not an origin; give origins such as https://clip.example.org or http://localhost:3000 (scheme, host and port only), or * (any)"))
}

fn has_path(origin: &str) -> bool {
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.trim_end_matches('/').contains('/'))
}

/// Why a request is refused: the status and the one-line error.
fn refuse(status: StatusCode, message: String) -> ApiError {
    ApiError::new(status, message)
}

/// A value from a request shown in an error: short, and only its printable ASCII.
fn shown(value: &[u8]) -> String {
    let text: String = value
        .iter()
        .take(100)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    text
}

/// What the `Origin` check decided for a request that passed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cross {
    /// No `Origin`, or the server's own page.
    SameOrigin,
    /// An origin the operator allows: the answer carries CORS headers for it.
    Allowed(String),
}

impl Guard {
    /// `host_arg` is `--host` as given: a name there is one the server answers to.
    pub fn new(
        bound: SocketAddr,
        host_arg: &str,
        allowed_hosts: &[String],
        allowed_origins: &[String],
    ) -> Guard {
        let mut hosts: Vec<HostRule> = allowed_hosts
            .iter()
            .map(String::as_str)
            .filter_map(host_rule)
            .collect();
        if let Some(Name::Domain(name)) = Name::parse(host_arg) {
            hosts.push(HostRule::Exact(Name::Domain(name)));
        }
        Guard {
            bound,
            hosts,
            any_origin: allowed_origins.iter().any(|o| o.trim() == "*"),
            origins: allowed_origins
                .iter()
                .map(String::as_str)
                .filter_map(Origin::parse)
                .collect(),
        }
    }

    fn answers_to(&self, name: &Name) -> bool {
        let bound = self.bound.ip();
        let own = match name {
            // An address cannot be rebound to another machine: any address the server listens
            // on is its own.
            Name::Ip(ip) => *ip == bound || bound.is_unspecified(),
            Name::Domain(domain) => {
                (bound.is_loopback() || bound.is_unspecified())
                    && (domain == "localhost" || domain.ends_with(".localhost"))
            }
        };
        own || self.hosts.iter().any(|rule| match (rule, name) {
            (HostRule::Any, _) => true,
            (HostRule::Exact(allowed), _) => allowed == name,
            (HostRule::Under(suffix), Name::Domain(domain)) => {
                domain == suffix
                    || domain
                        .strip_suffix(suffix.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }
            (HostRule::Under(_), Name::Ip(_)) => false,
        })
    }

    /// The `Host` check. The port is not part of it: a name, not a port, is what a rebinding
    /// page controls, and a proxy in front may forward its own port.
    ///
    /// A request target in absolute form (`GET http://name/ HTTP/1.1`) names the host itself, and
    /// RFC 9112 §3.2.2 has the server use it in place of `Host`: so it is checked as `Host` is.
    pub fn check_host(
        &self,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        version: Version,
    ) -> Result<(), ApiError> {
        if let Some(authority) = uri.authority() {
            let known =
                split_authority(authority.as_str()).is_some_and(|(name, _)| self.answers_to(&name));
            if !known {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    format!("this server does not answer to the host in the request target '{}'; send the path alone, with the server's address as Host", shown(authority.as_str().as_bytes())),
                ));
            }
        }
        let Some(value) = headers.get(axum::http::header::HOST) else {
            if version >= Version::HTTP_11 {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "the request has no Host header, which HTTP/1.1 requires; send one naming this server".into(),
                ));
            }
            return Ok(()); // HTTP/1.0 clients may omit it; browsers never do
        };
        if headers.get_all(axum::http::header::HOST).iter().count() > 1 {
            // RFC 9112 §3.2: a request with more than one Host is answered 400, since a proxy
            // and this server could otherwise read different ones.
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "the request has more than one Host header; send one".into(),
            ));
        }
        let known = value
            .to_str()
            .ok()
            .and_then(split_authority)
            .is_some_and(|(name, _)| self.answers_to(&name));
        if known {
            return Ok(());
        }
        let message = match value.to_str().ok().and_then(split_authority) {
            Some((name, _)) => format!("this server does not answer to the host name '{}'; if that name is the server's, start it with --allowed-hosts {} (or CLIPSTEER_ALLOWED_HOSTS)", shown(name.to_string().as_bytes()), shown(name.to_string().as_bytes())),
            None => format!("the Host header '{}' is not a host name; send the server's address, such as 127.0.0.1:8000", shown(value.as_bytes())),
        };
        Err(refuse(StatusCode::FORBIDDEN, message))
    }

    /// The `Origin` check, for a request whose `Host` passed.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<Cross, ApiError> {
        let Some(value) = headers.get(axum::http::header::ORIGIN) else {
            return Ok(Cross::SameOrigin);
        };
        let text = value.to_str().unwrap_or("");
        let origin = Origin::parse(text);
        if let Some(origin) = &origin {
            let host = headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(split_authority);
            // The server's own page: the browser's origin is the address the page was loaded
            // from, which is what it sends as Host.
            if let Some((name, port)) = host {
                if name == origin.name && port.unwrap_or(origin.port) == origin.port {
                    return Ok(Cross::SameOrigin);
                }
            }
            if self.any_origin || self.origins.contains(origin) {
                return Ok(Cross::Allowed(text.to_string()));
            }
        } else if self.any_origin {
            return Ok(Cross::Allowed(text.to_string()));
        }
        let shown = shown(value.as_bytes());
        Err(refuse(
            StatusCode::FORBIDDEN,
            format!("requests from the web page at {shown} are refused; to let that site use this server, start it with --allowed-origins {shown} (or CLIPSTEER_ALLOWED_ORIGINS)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, Uri};

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert("host", HeaderValue::from_str(host).unwrap());
        }
        if let Some(origin) = origin {
            headers.insert("origin", HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    fn host_ok(guard: &Guard, host: &str) -> bool {
        guard
            .check_host(
                &Uri::from_static("/"),
                &headers(Some(host), None),
                Version::HTTP_11,
            )
            .is_ok()
    }

    #[test]
    fn loopback_answers_to_its_address_and_localhost_only() {
        let guard = Guard::new("127.0.0.1:8000".parse().unwrap(), "127.0.0.1", &[], &[]);
        for good in [
            "127.0.0.1:8000",
            "127.0.0.1",
            "localhost:8000",
            "LOCALHOST.",
            "app.localhost:8000",
            "127.0.0.1.:8000",
        ] {
            assert!(host_ok(&guard, good), "{good}");
        }
        for bad in [
            "evil.example",
            "evil.example:8000",
            "127.0.0.1.nip.io:8000",
            "localhost.evil.example",
            "127.0.0.2:8000",
            "[::1]:8000",
            "",
            "127.0.0.1:http",
        ] {
            let error = guard
                .check_host(
                    &Uri::from_static("/"),
                    &headers(Some(bad), None),
                    Version::HTTP_11,
                )
                .unwrap_err();
            assert_eq!(error.status, StatusCode::FORBIDDEN, "{bad}");
        }
        let missing = guard
            .check_host(
                &Uri::from_static("/"),
                &headers(None, None),
                Version::HTTP_11,
            )
            .unwrap_err();
        assert_eq!(missing.status, StatusCode::BAD_REQUEST);
        let mut twice = headers(Some("localhost"), None);
        twice.append(
            axum::http::header::HOST,
            axum::http::HeaderValue::from_static("evil.example"),
        );
        let error = guard
            .check_host(&Uri::from_static("/"), &twice, Version::HTTP_11)
            .unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        let signed = guard
            .check_host(
                &Uri::from_static("/"),
                &headers(Some("localhost:+80"), None),
                Version::HTTP_11,
            )
            .unwrap_err();
        assert_eq!(signed.status, StatusCode::FORBIDDEN);
        assert!(guard
            .check_host(
                &Uri::from_static("/"),
                &headers(None, None),
                Version::HTTP_10
            )
            .is_ok());
    }

    #[test]
    fn an_absolute_request_target_is_checked_as_host_is() {
        let guard = Guard::new("127.0.0.1:8000".parse().unwrap(), "127.0.0.1", &[], &[]);
        let local = headers(Some("127.0.0.1:8000"), None);
        let foreign = Uri::from_static("http://evil.example/api/health");
        let error = guard
            .check_host(&foreign, &local, Version::HTTP_11)
            .unwrap_err();
        assert_eq!(error.status, StatusCode::FORBIDDEN);
        assert!(
            error.message.contains("request target"),
            "{}",
            error.message
        );
        let own = Uri::from_static("http://localhost:8000/api/health");
        assert!(guard.check_host(&own, &local, Version::HTTP_11).is_ok());
    }

    #[test]
    fn allowed_hosts_add_names() {
        let allowed = ["clip.example.org".to_string(), ".lab.example".to_string()];
        let guard = Guard::new("10.0.0.5:80".parse().unwrap(), "10.0.0.5", &allowed, &[]);
        assert!(host_ok(&guard, "10.0.0.5"));
        assert!(host_ok(&guard, "Clip.Example.Org:443"));
        assert!(host_ok(&guard, "lab.example"));
        assert!(host_ok(&guard, "gpu1.lab.example:8000"));
        assert!(!host_ok(&guard, "evillab.example"));
        assert!(!host_ok(&guard, "localhost"), "not bound to loopback");
        let any = Guard::new("0.0.0.0:80".parse().unwrap(), "0.0.0.0", &[], &[]);
        assert!(
            host_ok(&any, "192.168.1.20:80"),
            "any address of the machine"
        );
        assert!(host_ok(&any, "localhost"));
        assert!(!host_ok(&any, "evil.example"));
        let named = Guard::new("10.0.0.5:80".parse().unwrap(), "gpu1.lan", &[], &[]);
        assert!(host_ok(&named, "gpu1.lan:80"), "the --host name itself");
        let star = Guard::new(
            "10.0.0.5:80".parse().unwrap(),
            "10.0.0.5",
            &["*".into()],
            &[],
        );
        assert!(host_ok(&star, "anything.example"));
    }

    #[test]
    fn origin_is_the_servers_own_or_allowed() {
        let allowed = ["https://app.example.org".to_string()];
        let guard = Guard::new(
            "127.0.0.1:8000".parse().unwrap(),
            "127.0.0.1",
            &[],
            &allowed,
        );
        let check =
            |host: &str, origin: &str| guard.check_origin(&headers(Some(host), Some(origin)));
        assert_eq!(
            check("127.0.0.1:8000", "http://127.0.0.1:8000"),
            Ok(Cross::SameOrigin)
        );
        assert_eq!(
            check("localhost:8000", "http://LOCALHOST:8000"),
            Ok(Cross::SameOrigin)
        );
        assert_eq!(
            check("clip.example.org", "https://clip.example.org"),
            Ok(Cross::SameOrigin)
        );
        assert_eq!(
            check("127.0.0.1:8000", "https://app.example.org:443"),
            Ok(Cross::Allowed("https://app.example.org:443".into()))
        );
        for bad in [
            "http://evil.example",
            "http://127.0.0.1:8001",
            "http://localhost:8000",
            "http://app.example.org",
            "null",
            "file://",
        ] {
            let error = check("127.0.0.1:8000", bad).unwrap_err();
            assert_eq!(error.status, StatusCode::FORBIDDEN, "{bad}");
            assert!(
                error.message.contains("--allowed-origins"),
                "{}",
                error.message
            );
        }
        assert_eq!(
            guard.check_origin(&headers(Some("127.0.0.1:8000"), None)),
            Ok(Cross::SameOrigin)
        );
    }

    #[test]
    fn flag_entries_are_checked() {
        assert!(parse_allowed_host("clip.example.org").is_ok());
        assert!(parse_allowed_host(".example.org").is_ok());
        assert!(parse_allowed_host("*").is_ok());
        assert!(parse_allowed_host("https://clip.example.org").is_err());
        assert!(parse_allowed_host("clip.example.org/x").is_err());
        assert!(parse_allowed_origin("https://clip.example.org").is_ok());
        assert!(parse_allowed_origin("http://localhost:3000/").is_ok());
        assert!(parse_allowed_origin("clip.example.org").is_err());
        assert!(parse_allowed_origin("https://clip.example.org/app").is_err());
        assert!(parse_allowed_origin("ftp://x").is_err());
    }
}
