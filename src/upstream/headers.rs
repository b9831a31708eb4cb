//! What an upstream is told about a request: the client's address and the URL it
//! asked for, in every header that says so, set from what Herve saw; the hops it
//! made; and a path that cannot climb out of the upstream's base.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Clients whose forwarding headers are believed: the proxies in front of Herve
/// (`HERVE_TRUSTED_PROXIES`). From anyone else, `X-Forwarded-*`, `Forwarded` and
/// `X-Real-IP` are replaced by what Herve saw.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses a comma-separated list of addresses and networks (`10.0.0.0/8`, `::1`).
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        let mut networks = Vec::new();
        for item in list
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let network = match item.parse::<IpNet>() {
                Ok(network) => network,
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("'{item}' is not an address or a network"))?,
            };
            networks.push(network);
        }
        Ok(TrustedProxies { networks })
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.networks.iter().any(|network| network.contains(&ip))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

/// Replaces the forwarding headers of a request from `client` for `host` (over TLS
/// with `https`): a client Herve does not trust cannot pass its own as Herve's.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    (client, from_node): (Option<IpAddr>, bool),
    (host, https): (Option<HeaderValue>, bool),
    prefix: &HeaderValue,
    trusted: &TrustedProxies,
) {
    let proto = if https { "https" } else { "http" };
    let from_proxy = from_node || client.is_some_and(|ip| trusted.trusts(ip));
    let chain = if from_proxy {
        joined(headers, &X_FORWARDED_FOR)
    } else {
        None
    };
    let earlier_forwarded = if from_proxy {
        joined(headers, &FORWARDED)
    } else {
        None
    };
    if !from_proxy {
        headers.remove(&X_FORWARDED_HOST);
        headers.remove(&X_FORWARDED_PROTO);
    }
    headers.remove(&X_FORWARDED_FOR);
    headers.remove(&FORWARDED);
    headers.remove(&X_REAL_IP);

    if let Some(host) = &host {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    // The prefix the client asked under, which the node it came through knows.
    if !(from_node && headers.contains_key(&X_FORWARDED_PREFIX)) {
        headers.insert(X_FORWARDED_PREFIX.clone(), prefix.clone());
    }

    let Some(client) = client else {
        return;
    };
    let client_value = ip_header_value(client);
    match (&chain, &client_value) {
        (Some(chain), _) => {
            if let Ok(value) = HeaderValue::try_from(format!("{chain}, {client}")) {
                headers.insert(X_FORWARDED_FOR.clone(), value);
            }
        }
        (None, Some(value)) => {
            headers.insert(X_FORWARDED_FOR.clone(), value.clone());
        }
        (None, None) => {}
    }
    // The client is the nearest address in the chain that is not a trusted proxy.
    let real = chain
        .as_deref()
        .map(|chain| {
            chain
                .split(',')
                .rev()
                .filter_map(|item| item.trim().parse::<IpAddr>().ok())
                .find(|ip| !trusted.trusts(*ip))
        })
        .unwrap_or(None);
    match real {
        Some(ip) if ip != client => {
            if let Some(value) = ip_header_value(ip) {
                headers.insert(X_REAL_IP.clone(), value);
            }
        }
        _ => {
            if let Some(value) = client_value {
                headers.insert(X_REAL_IP.clone(), value);
            }
        }
    }
    let element = forwarded_element(client, host.as_ref(), proto);
    let value = match earlier_forwarded {
        Some(earlier) => format!("{earlier}, {element}"),
        None => element,
    };
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(FORWARDED.clone(), value);
    }
}

/// Every value of a header, joined as one list; `None` when absent or not text.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?.to_str().ok()?.to_owned();
    values.try_fold(first, |mut all, value| {
        all.push_str(", ");
        all.push_str(value.to_str().ok()?);
        Some(all)
    })
}

/// `for=…;host=…;proto=…` (RFC 7239); IPv6 addresses and the host quoted.
fn forwarded_element(client: IpAddr, host: Option<&HeaderValue>, proto: &str) -> String {
    let mut element = match client {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    };
    if let Some(host) = host.and_then(|host| host.to_str().ok()) {
        if !host.contains(['"', '\\']) {
            element.push_str(";host=\"");
            element.push_str(host);
            element.push('"');
        }
    }
    element.push_str(";proto=");
    element.push_str(proto);
    element
}

/// An address as a header value, formatted on the stack: one allocation, not two.
pub fn ip_header_value(ip: IpAddr) -> Option<HeaderValue> {
    use std::io::Write;
    // The longest IPv6 text form is 45 bytes.
    let mut buffer = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buffer[..]);
    write!(cursor, "{ip}").ok()?;
    let written = usize::try_from(cursor.position()).ok()?;
    HeaderValue::from_bytes(&buffer[..written]).ok()
}

/// Whether the `Via` header shows that this request went through `hop` already.
pub fn has_passed(headers: &HeaderMap, hop: &str) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|entry| entry.split_whitespace().nth(1) == Some(hop))
}

/// Adds this hop (`1.1 <hop>`) to the `Via` header.
pub fn add_via(headers: &mut HeaderMap, hop: &HeaderValue) {
    let value = match joined(headers, &header::VIA) {
        Some(earlier) => hop
            .to_str()
            .ok()
            .and_then(|hop| HeaderValue::try_from(format!("{earlier}, {hop}")).ok()),
        None => Some(hop.clone()),
    };
    if let Some(value) = value {
        headers.insert(header::VIA, value);
    }
}

/// The path to send upstream: dot segments removed (RFC 3986 §5.2.4), so that none
/// climbs above the upstream's base; `None` when an encoded dot segment or an
/// encoded slash would climb anyway (an upstream that decodes before it normalises
/// would follow it).
pub fn confined_path(path: &str) -> Option<Cow<'_, str>> {
    if !path.contains("/.") && !path.contains('%') && !path.contains('\\') {
        return Some(Cow::Borrowed(path));
    }
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (index, segment) in segments.iter().enumerate().skip(1) {
        match *segment {
            "." => trailing_slash = index == last,
            ".." => {
                kept.pop();
                trailing_slash = index == last;
            }
            other => {
                if climbs(other) {
                    return None;
                }
                kept.push(other);
                trailing_slash = false;
            }
        }
    }
    let mut confined = String::with_capacity(path.len());
    for segment in &kept {
        confined.push('/');
        confined.push_str(segment);
    }
    if trailing_slash || confined.is_empty() {
        confined.push('/');
    }
    Some(Cow::Owned(confined))
}

/// Whether a segment, once decoded, is or holds a dot segment.
fn climbs(segment: &str) -> bool {
    if !segment.contains(['%', '\\']) {
        return false;
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(segment).collect();
    decoded
        .split(|&byte| byte == b'/' || byte == b'\\')
        .any(|piece| piece == b"." || piece == b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_never_climb() {
        let cases = [
            ("/a/b", Some("/a/b")),
            ("/a/./b", Some("/a/b")),
            ("/a/../b", Some("/b")),
            ("/../../etc/passwd", Some("/etc/passwd")),
            ("/a/b/..", Some("/a/")),
            ("/..", Some("/")),
            ("/a//b", Some("/a//b")),
            ("/file.txt", Some("/file.txt")),
            ("/a%20b", Some("/a%20b")),
            ("/group%2Fproject", Some("/group%2Fproject")),
            ("/%2e%2e/etc", None),
            ("/%2E", None),
            ("/..%2fetc", None),
            ("/a%2F..%2Fb", None),
            ("/a\\..\\b", None),
        ];
        for (path, want) in cases {
            assert_eq!(confined_path(path).as_deref(), want, "{path}");
        }
    }

    #[test]
    fn an_untrusted_client_cannot_set_forwarding_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        headers.append("x-forwarded-for", HeaderValue::from_static("7.7.7.7"));
        headers.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        headers.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        let client: IpAddr = "10.1.2.3".parse().expect("ip");
        set_forwarding(
            &mut headers,
            (Some(client), false),
            (Some(HeaderValue::from_static("app.test")), false),
            &HeaderValue::from_static("/x"),
            &TrustedProxies::default(),
        );
        assert_eq!(headers["x-forwarded-for"], "10.1.2.3");
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(headers["x-real-ip"], "10.1.2.3");
        assert_eq!(
            headers["forwarded"],
            "for=10.1.2.3;host=\"app.test\";proto=http"
        );
    }

    #[test]
    fn a_trusted_proxy_keeps_the_chain() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, ::1").expect("list");
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        headers.append("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let client: IpAddr = "10.1.2.3".parse().expect("ip");
        set_forwarding(
            &mut headers,
            (Some(client), false),
            (None, true),
            &HeaderValue::from_static("/x"),
            &trusted,
        );
        assert_eq!(headers["x-forwarded-for"], "1.2.3.4, 10.9.9.9, 10.1.2.3");
        assert_eq!(headers["x-real-ip"], "1.2.3.4");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert!(TrustedProxies::parse("nonsense").is_err());
    }

    #[test]
    fn via_tells_a_loop() {
        let mut headers = HeaderMap::new();
        assert!(!has_passed(&headers, "herve-1"));
        add_via(&mut headers, &HeaderValue::from_static("1.1 herve-1"));
        assert!(has_passed(&headers, "herve-1"));
        add_via(&mut headers, &HeaderValue::from_static("1.1 herve-2"));
        assert_eq!(headers["via"], "1.1 herve-1, 1.1 herve-2");
        assert!(!has_passed(&headers, "herve-3"));
    }
}
