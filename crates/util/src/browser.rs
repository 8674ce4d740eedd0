//! What keeps a web page a user happens to open from using Cairn's HTTP APIs
//! (the node's and the cloud's) through that user's browser.
//!
//! A browser sends some cross-site requests without asking the server first
//! (CORS calls them simple): `GET`, `HEAD` and `POST` with no body or a form
//! or `text/plain` body. Any page could so `POST` to a node or to the cloud
//! on loopback. And a page whose name its owner points at 127.0.0.1 (DNS
//! rebinding) is, to the browser, the same origin as that address: it can
//! send anything and read the answers. Three checks close both:
//!
//! - **Host**: a request must name this server by an IP address, by
//!   `localhost` (or a name under `.localhost`), or by a name it was told to
//!   answer to. A rebound name is none of these.
//! - **Origin**: a request a browser sends from a page carries the page's
//!   origin; it must be the server's own (same scheme-less host and port as
//!   the `Host` header), or one it was told to allow. Clients other than
//!   browsers send none.
//! - **Content-Type**: a `POST` must say `application/json`. A browser asks
//!   the server before it sends such a request cross-site, and Cairn answers
//!   no such question, so the browser never sends it.
//!
//! `PUT`, `PATCH` and `DELETE` are never simple: the browser asks first (a
//! CORS preflight), and gets permission only for an origin the server trusts.
//!
//! **Trusted origins.** A server may trust pages of other origins that it
//! names itself: a node trusts the pages of its cluster's members (the web
//! console loaded from one node goes on through another when its own dies),
//! the cloud trusts its hosts' nodes. [`Policy::check_access`] says whether
//! a request is of the server's own origin or of a trusted one, and the
//! server then answers the preflight and adds the CORS headers.

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The `Host` header names this server by a name it does not answer to.
    Host { host: String },
    /// The request comes from a page of another origin.
    Origin { origin: String },
    /// A `POST` without `Content-Type: application/json`.
    ContentType { content_type: Option<String> },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Host { host } => write!(
                f,
                "the Host header '{}' is not a name this server answers to: use an IP address \
                 or localhost, or start the server with --allow-host NAME",
                host.escape_debug()
            ),
            Refusal::Origin { origin } => write!(
                f,
                "requests from pages of origin '{}' are not allowed (no cross-origin access is \
                 configured)",
                origin.escape_debug()
            ),
            Refusal::ContentType { content_type: Some(given) } => write!(
                f,
                "a POST must have Content-Type: application/json, not '{}'",
                given.escape_debug()
            ),
            Refusal::ContentType { content_type: None } => {
                write!(f, "a POST must have Content-Type: application/json")
            }
        }
    }
}

/// How a request that passed the checks reached the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// No `Origin`: not sent by a page (or a same-origin `GET`).
    NoOrigin,
    /// From a page of the server's own origin.
    SameOrigin,
    /// From a page of an origin the server trusts (given as sent): the
    /// answer needs `Access-Control-Allow-Origin` with it.
    Trusted(String),
}

/// The headers of the answer to a trusted page's CORS preflight (beside
/// `Access-Control-Allow-Origin`): the methods and request headers it may
/// use, and how long (seconds) the browser may keep the answer.
pub const PREFLIGHT_HEADERS: [(&str, &str); 3] = [
    ("access-control-allow-methods", "GET, HEAD, POST, PUT, PATCH, DELETE"),
    (
        "access-control-allow-headers",
        "authorization, content-type, cairn-session, cairn-seq, last-event-id",
    ),
    ("access-control-max-age", "600"),
];

/// The headers to add to the answer to a page of a trusted origin (`origin`
/// as the page sent it, see [`Access::Trusted`]): that it may read the
/// answer, that answers vary by origin, and for a preflight (an `OPTIONS`
/// with `Access-Control-Request-Method`, answered 204 without going
/// further) what it may send.
pub fn cors_headers(origin: &str, preflight: bool) -> Vec<(&'static str, String)> {
    let mut headers =
        vec![("access-control-allow-origin", origin.to_string()), ("vary", "origin".to_string())];
    if preflight {
        headers.extend(PREFLIGHT_HEADERS.iter().map(|(name, value)| (*name, value.to_string())));
    }
    headers
}

/// The `host:port` of an origin (`scheme://host[:port]`), in lower case with
/// the scheme's default port filled in; `None` for an origin that is not
/// `http` or `https` (`null`, `file://`).
pub fn origin_authority(origin: &str) -> Option<String> {
    let (scheme, authority) = origin.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    host_name(authority)?;
    Some(with_port(authority, default_port))
}

/// Whether `authority` (as [`origin_authority`] gives it) names the server
/// at `address` (`host:port`): the same name and port, or both loopback
/// (`localhost`, 127.0.0.0/8, `::1`) with the same port, since a browser may
/// have loaded a page from `localhost` that a cluster lists by address.
pub fn names_address(authority: &str, address: &str) -> bool {
    let address = with_port(address, "");
    if authority == address {
        return true;
    }
    let split = |value: &str| -> Option<(String, String)> {
        let (name, port) = value.rsplit_once(':')?;
        Some((name.trim_start_matches('[').trim_end_matches(']').to_string(), port.to_string()))
    };
    let (Some((a_name, a_port)), Some((b_name, b_port))) = (split(authority), split(&address))
    else {
        return false;
    };
    a_port == b_port && is_loopback(&a_name) && is_loopback(&b_name)
}

fn is_loopback(name: &str) -> bool {
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `value` (`host[:port]`) in lower case, with `default_port` when it has no
/// port.
fn with_port(value: &str, default_port: &str) -> String {
    let value = value.to_ascii_lowercase();
    let has_port = match value.rfind(']') {
        Some(end) => value[end..].contains(':'),
        None => value.contains(':'),
    };
    if has_port || default_port.is_empty() {
        value
    } else {
        format!("{value}:{default_port}")
    }
}

/// The parts of a request the checks read; header values that are not text
/// are passed as `Some("")`, so they are refused rather than skipped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub content_type: Option<&'a str>,
}

/// The names a server answers to beyond IP addresses and `localhost`.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Host names (without port), compared without regard to case.
    pub allowed_hosts: Vec<String>,
}

impl Policy {
    /// Checks one request, all three ways; see the module's comment.
    pub fn check(&self, request: &Request<'_>) -> Result<(), Refusal> {
        self.check_site(request)?;
        check_content_type(request.method, request.content_type)
    }

    /// Checks the `Host` and `Origin` of a request (a server whose routes
    /// check the content type themselves, so that a method a path does not
    /// take is still answered 405).
    pub fn check_site(&self, request: &Request<'_>) -> Result<(), Refusal> {
        self.check_access(request, |_| false).map(|_| ())
    }

    /// Checks the `Host` and `Origin` of a request like [`Policy::check_site`],
    /// but lets through a page of another origin when `trusted` says yes to
    /// its `host:port` (lower case, the scheme's default port filled in):
    /// the answer says which, so that a trusted origin gets CORS headers.
    pub fn check_access(
        &self,
        request: &Request<'_>,
        trusted: impl Fn(&str) -> bool,
    ) -> Result<Access, Refusal> {
        if let Some(host) = request.host {
            if !self.host_allowed(host) {
                return Err(Refusal::Host { host: host.to_string() });
            }
        }
        let Some(origin) = request.origin else { return Ok(Access::NoOrigin) };
        if same_origin(origin, request.host) {
            return Ok(Access::SameOrigin);
        }
        match origin_authority(origin) {
            Some(authority) if trusted(&authority) => Ok(Access::Trusted(origin.to_string())),
            _ => Err(Refusal::Origin { origin: origin.to_string() }),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else { return false };
        if name.parse::<std::net::IpAddr>().is_ok() {
            return true;
        }
        let name = name.to_ascii_lowercase();
        name == "localhost"
            || name.ends_with(".localhost")
            || self.allowed_hosts.iter().any(|allowed| allowed.eq_ignore_ascii_case(&name))
    }
}

/// Refuses a `POST` whose content type is not JSON.
pub fn check_content_type(method: &str, content_type: Option<&str>) -> Result<(), Refusal> {
    if method.eq_ignore_ascii_case("POST") && !is_json(content_type) {
        return Err(Refusal::ContentType { content_type: content_type.map(str::to_string) });
    }
    Ok(())
}

/// The name in a `Host` header value: `name`, `name:port`, `[v6]` or
/// `[v6]:port`; `None` when it is none of these.
pub fn host_name(host: &str) -> Option<&str> {
    if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return Some(inside);
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return None,
        None => host,
    };
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then_some(name)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `origin` (`scheme://host[:port]`) is the origin of the server the
/// request reached, as its `Host` header names it.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let Some((scheme, authority)) = origin.split_once("://") else { return false };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    with_port(authority, default_port) == with_port(host, default_port)
}

fn is_json(content_type: Option<&str>) -> bool {
    let Some(value) = content_type else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(
        method: &'a str,
        host: Option<&'a str>,
        origin: Option<&'a str>,
        content_type: Option<&'a str>,
    ) -> Request<'a> {
        Request { method, host, origin, content_type }
    }

    #[test]
    fn hosts_by_address_and_localhost_pass_and_other_names_only_when_allowed() {
        let policy = Policy { allowed_hosts: vec!["db.example".into()] };
        for host in [
            "127.0.0.1",
            "127.0.0.1:7000",
            "[::1]:7000",
            "[::1]",
            "10.1.2.3:80",
            "localhost:7000",
            "LocalHost",
            "app.localhost:8080",
            "db.example:7000",
            "DB.Example",
        ] {
            assert_eq!(policy.check(&request("GET", Some(host), None, None)), Ok(()), "{host}");
        }
        for host in [
            "evil.example:7000",
            "localhost.evil.example",
            "",
            ":7000",
            "127.0.0.1:x",
            "[::1]x",
            "a b",
            "127.0.0.1:7000:1",
        ] {
            let refused = policy.check(&request("GET", Some(host), None, None));
            assert_eq!(refused, Err(Refusal::Host { host: host.into() }), "{host}");
        }
        // No Host at all is no browser (HTTP/1.0 tools): nothing to check.
        assert_eq!(Policy::default().check(&request("GET", None, None, None)), Ok(()));
    }

    #[test]
    fn only_pages_of_the_servers_own_origin_pass() {
        let policy = Policy::default();
        let host = Some("127.0.0.1:7000");
        let ok = |origin| policy.check(&request("GET", host, Some(origin), None));
        assert_eq!(ok("http://127.0.0.1:7000"), Ok(()));
        assert_eq!(ok("HTTP://127.0.0.1:7000"), Ok(()));
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:7001",
            "http://localhost:7000",
            "null",
            "file://",
            "ftp://127.0.0.1:7000",
        ] {
            assert_eq!(ok(origin), Err(Refusal::Origin { origin: origin.into() }), "{origin}");
        }
        // Default ports are the same origin as the host without one.
        let policy_check =
            |origin, host| Policy::default().check(&request("GET", Some(host), Some(origin), None));
        assert_eq!(policy_check("http://localhost", "localhost:80"), Ok(()));
        assert_eq!(policy_check("https://[::1]", "[::1]:443"), Ok(()));
        assert!(policy_check("https://localhost", "localhost:80").is_err());
    }

    #[test]
    fn pages_of_trusted_origins_pass_and_say_so() {
        let policy = Policy::default();
        let members = ["127.0.0.1:7001", "127.0.0.1:7011", "db-2.example:7000"];
        let trusted = |authority: &str| members.iter().any(|m| names_address(authority, m));
        let access = |origin| {
            policy
                .check_access(&request("GET", Some("127.0.0.1:7001"), Some(origin), None), trusted)
        };
        assert_eq!(access("https://127.0.0.1:7001"), Ok(Access::SameOrigin));
        assert_eq!(
            access("https://127.0.0.1:7011"),
            Ok(Access::Trusted("https://127.0.0.1:7011".into()))
        );
        // Loopback by another name is the same server.
        assert_eq!(
            access("https://localhost:7011"),
            Ok(Access::Trusted("https://localhost:7011".into()))
        );
        assert_eq!(
            access("http://DB-2.example:7000"),
            Ok(Access::Trusted("http://DB-2.example:7000".into()))
        );
        for origin in [
            "https://127.0.0.1:7021",
            "https://db-2.example",
            "https://evil.example:7011",
            "null",
            "file://",
            "https://127.0.0.1:7011/path",
        ] {
            assert_eq!(access(origin), Err(Refusal::Origin { origin: origin.into() }), "{origin}");
        }
        assert_eq!(
            policy.check_access(&request("GET", Some("127.0.0.1:7001"), None, None), trusted),
            Ok(Access::NoOrigin)
        );
        // A bad Host is refused whatever the origin.
        assert!(policy
            .check_access(
                &request("GET", Some("evil.example"), Some("https://127.0.0.1:7011"), None),
                trusted
            )
            .is_err());
        assert!(!names_address("10.0.0.1:7011", "127.0.0.1:7011"));
        assert!(names_address("[::1]:7011", "127.0.0.1:7011"));
    }

    #[test]
    fn a_post_must_say_json_and_other_methods_need_not() {
        let policy = Policy::default();
        let host = Some("127.0.0.1:7000");
        for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
            let refused = policy.check(&request("POST", host, None, content_type));
            assert!(matches!(refused, Err(Refusal::ContentType { .. })), "{content_type:?}");
        }
        for content_type in
            ["application/json", "application/json; charset=utf-8", "Application/JSON"]
        {
            let passed = policy.check(&request("POST", host, None, Some(content_type)));
            assert_eq!(passed, Ok(()), "{content_type}");
        }
        assert_eq!(policy.check(&request("PUT", host, None, Some("text/plain"))), Ok(()));
        assert_eq!(policy.check(&request("DELETE", host, None, None)), Ok(()));
    }
}
