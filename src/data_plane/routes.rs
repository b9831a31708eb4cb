//! The data plane's routing table: which running service answers a request.
//!
//! A running service is reached at `/<uuid>/...`, at `/<name>/...`, and, when it has
//! them, at its host names and path prefix. Request handling only ever reads an
//! immutable snapshot (one atomic load, no lock); the registry publishes a service's
//! routes when it starts, withdraws them when it stops, and each change builds a new
//! snapshot swapped in whole, so a request sees a service either fully routed or not at
//! all, and an edit moves every route of a service at once.
//!
//! Lookup cost does not grow with the number of services: hash lookups by uuid, name,
//! exact host and wildcard parent, then the few path prefixes of the host that matched.
//! Nor does the cost of a change: the maps are persistent (hash array mapped tries), so
//! a new snapshot shares all but the few nodes a change touches with the one before, and
//! the last reader of an old snapshot frees only those.

use std::borrow::Cow;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, Response};
use axum::Router;
use rpds::HashTrieMapSync;
use tower::ServiceExt;
use uuid::Uuid;

use super::middleware::Chain;
use crate::contract::{Answer, Authenticator, Handler, MountPrefix};
use crate::util::lock;

/// The first path segments that are Herve's own, now or in the future: no service may
/// be named after one, and none is routed by name there.
pub(crate) const OWN_PATHS: [&str; 7] = [
    "services",
    "health",
    "metrics",
    "ui",
    "openapi.json",
    "certificates",
    "cluster",
];

/// What a running instance answers with. Every request holds it until its answer's
/// body ends, so that an instance being replaced knows when its last request is done.
pub(crate) struct Target {
    router: Router,
    meter: Arc<super::ServiceMeter>,
    /// Who its bearer tokens name, when the instance offers to tell (an `auth`).
    authenticator: Option<Arc<dyn Authenticator>>,
    /// What answers instead of the router, when the instance has one.
    handler: Option<Arc<dyn Handler>>,
}

impl Target {
    /// The target of an instance's routes.
    pub fn new(
        router: Router,
        meter: Arc<super::ServiceMeter>,
        authenticator: Option<Arc<dyn Authenticator>>,
        handler: Option<Arc<dyn Handler>>,
    ) -> Arc<Target> {
        // Herve bounds bodies itself (`HERVE_MAX_BODY_BYTES`, in `body`); axum's own
        // 2 MiB default would otherwise cut in first. A router that sets its own limit
        // keeps it: its layer runs after this one.
        Arc::new(Target {
            router: router.layer(DefaultBodyLimit::disable()),
            meter,
            authenticator,
            handler,
        })
    }

    /// The instance's answer to `request`: from its handler if it has one, else from
    /// its router.
    pub async fn answer(&self, request: Request<Body>) -> Response<Body> {
        match &self.handler {
            Some(handler) => match handler.answer(request) {
                Answer::Now(response) => response,
                Answer::Later(response) => response.await,
            },
            None => match self.router.clone().oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            },
        }
    }

    /// The counters of the service this answers for.
    pub fn meter(&self) -> &Arc<super::ServiceMeter> {
        &self.meter
    }
}

/// A host name a service answers for: exact, or any name one label below a parent
/// (`*.example.com`). Lowercase, without a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum HostPattern {
    Exact(String),
    /// The parent: `example.com` for `*.example.com`.
    Wildcard(String),
}

impl HostPattern {
    /// Parses `app.example.com` or `*.example.com` (IDNs in punycode); case is ignored.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(parent) => (true, parent),
            None => (false, text.as_str()),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(format!(
                "'{text}' is not a host name (letters, digits and '-' in dot-separated labels, \
                 an IDN in its punycode form, one leading '*.' for a wildcard, no port)"
            ));
        }
        if wildcard && !name.contains('.') {
            return Err(format!("'{text}' is too wide a wildcard"));
        }
        Ok(if wildcard {
            HostPattern::Wildcard(name.to_owned())
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(parent) => write!(f, "*.{parent}"),
        }
    }
}

/// Parses a path prefix: `/api` (a trailing slash dropped; `/` for everything); whole
/// segments of URL path characters, no `.` or `..` segment.
pub(crate) fn parse_path_prefix(text: &str) -> Result<String, String> {
    let text = text.trim();
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%".contains(&b);
    let valid = text.starts_with('/')
        && text.len() <= 256
        && text.split('/').skip(1).enumerate().all(|(index, segment)| {
            // Only a trailing slash may leave an empty segment.
            let last = index == text.split('/').count() - 2;
            (segment.is_empty() && last)
                || (!segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment.bytes().all(allowed))
        });
    if !valid {
        return Err(format!(
            "'{text}' is not a path prefix (it starts with '/', and has plain segments)"
        ));
    }
    let trimmed = text.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// What a running service publishes: every way to reach it.
#[derive(Clone)]
pub(crate) struct ServiceRoutes {
    pub uuid: Uuid,
    pub name: String,
    pub hosts: Vec<HostPattern>,
    /// Its path prefix (`/` for everything), when it has host names or a path.
    pub path: Option<String>,
    pub target: Arc<Target>,
    /// Its middlewares, if it has any.
    pub chain: Option<Arc<Chain>>,
}

/// One way to reach a service, and the prefix stripped on the way.
#[derive(Clone)]
pub(crate) struct Entry {
    pub target: Arc<Target>,
    pub prefix: MountPrefix,
    pub chain: Option<Arc<Chain>>,
}

/// A route found for a request: the service, how many bytes of the path its prefix
/// takes, and its middlewares.
pub(crate) struct Found {
    pub target: Arc<Target>,
    pub prefix: MountPrefix,
    pub strip: usize,
    pub chain: Option<Arc<Chain>>,
}

/// The path routes of one host (or of every host), longest prefix first.
#[derive(Clone, Default)]
struct PathRoutes(Vec<(String, Uuid, Entry)>);

impl PathRoutes {
    fn insert(&mut self, prefix: &str, uuid: Uuid, entry: Entry) {
        // `/` is stored as the empty prefix: it matches every path.
        let prefix = if prefix == "/" { "" } else { prefix };
        self.0.push((prefix.to_owned(), uuid, entry));
        self.0.sort_by_key(|route| std::cmp::Reverse(route.0.len()));
    }

    fn remove(&mut self, uuid: Uuid) {
        self.0.retain(|(_, owner, _)| *owner != uuid);
    }

    /// The longest prefix that `path` starts with, on whole segments.
    fn find(&self, path: &str) -> Option<(&str, &Entry)> {
        self.0
            .iter()
            .find(|(prefix, _, _)| {
                prefix.is_empty()
                    || (path.starts_with(prefix.as_str())
                        && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
            })
            .map(|(prefix, _, entry)| (prefix.as_str(), entry))
    }
}

type ByUuid<V> = HashTrieMapSync<Uuid, V, BuildHasherDefault<UuidHasher>>;

/// Every map is persistent: cloning a snapshot is a handful of reference counts.
#[derive(Clone, Default)]
struct Snapshot {
    by_uuid: ByUuid<Entry>,
    by_name: HashTrieMapSync<String, Entry>,
    exact: HashTrieMapSync<String, PathRoutes>,
    wildcard: HashTrieMapSync<String, PathRoutes>,
    /// Few (a path route on every host is rare), and copied only when one changes.
    any_host: Arc<PathRoutes>,
    /// What each service published, to withdraw it.
    published: ByUuid<Arc<ServiceRoutes>>,
}

impl Snapshot {
    fn remove(&mut self, uuid: Uuid) {
        let Some(old) = self.published.get(&uuid).cloned() else {
            return;
        };
        self.published.remove_mut(&uuid);
        self.by_uuid.remove_mut(&uuid);
        self.by_name.remove_mut(&old.name);
        for host in &old.hosts {
            let (map, key) = match host {
                HostPattern::Exact(name) => (&mut self.exact, name),
                HostPattern::Wildcard(parent) => (&mut self.wildcard, parent),
            };
            if let Some(routes) = map.get(key) {
                let mut routes = routes.clone();
                routes.remove(uuid);
                if routes.0.is_empty() {
                    map.remove_mut(key);
                } else {
                    map.insert_mut(key.clone(), routes);
                }
            }
        }
        if old.hosts.is_empty() && old.path.is_some() {
            Arc::make_mut(&mut self.any_host).remove(uuid);
        }
    }

    fn insert(&mut self, routes: ServiceRoutes) {
        let entry = |prefix: &str| Entry {
            target: Arc::clone(&routes.target),
            prefix: MountPrefix::new(prefix),
            chain: routes.chain.clone(),
        };
        self.by_uuid
            .insert_mut(routes.uuid, entry(&format!("/{}", routes.uuid)));
        self.by_name
            .insert_mut(routes.name.clone(), entry(&format!("/{}", routes.name)));
        let path = routes.path.as_deref().unwrap_or("/");
        let stripped = if path == "/" { "" } else { path };
        for host in &routes.hosts {
            let (map, key) = match host {
                HostPattern::Exact(name) => (&mut self.exact, name),
                HostPattern::Wildcard(parent) => (&mut self.wildcard, parent),
            };
            let mut host_routes = map.get(key).cloned().unwrap_or_default();
            host_routes.insert(path, routes.uuid, entry(stripped));
            map.insert_mut(key.clone(), host_routes);
        }
        if routes.hosts.is_empty() && routes.path.is_some() {
            Arc::make_mut(&mut self.any_host).insert(path, routes.uuid, entry(stripped));
        }
        self.published.insert_mut(routes.uuid, Arc::new(routes));
    }
}

/// The routes of every running service.
pub(crate) struct RouteTable {
    current: ArcSwap<Snapshot>,
    /// Writers are rare (start, stop, edit); this keeps two of them from losing each
    /// other's change while readers never wait.
    write: std::sync::Mutex<()>,
    /// Counts changes, for whoever follows the host names in use (ACME).
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            current: ArcSwap::default(),
            write: std::sync::Mutex::new(()),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl RouteTable {
    /// The service that answers `path` on `host` (the `Host` header, if any), by the
    /// precedence of the README: host routes (exact, then wildcard, the longest path
    /// prefix first), then `/<uuid>`, then `/<name>`, then the path routes of every
    /// host. Herve's own paths are the dispatcher's, before this.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<Found> {
        let snapshot = self.current.load();
        let found = |(prefix, entry): (&str, &Entry)| Found {
            target: Arc::clone(&entry.target),
            prefix: entry.prefix.clone(),
            strip: prefix.len(),
            chain: entry.chain.clone(),
        };
        // Most Herves route by uuid and name only: no host to look at then.
        let host_routes = !(snapshot.exact.is_empty() && snapshot.wildcard.is_empty());
        if let Some(host) = host.filter(|_| host_routes).and_then(normalize_host) {
            if let Some(routes) = snapshot.exact.get(host.as_ref()) {
                if let Some(hit) = routes.find(path) {
                    return Some(found(hit));
                }
            }
            if let Some((_, parent)) = host.split_once('.') {
                if let Some(hit) = snapshot
                    .wildcard
                    .get(parent)
                    .and_then(|routes| routes.find(path))
                {
                    return Some(found(hit));
                }
            }
        }
        let first = first_segment(path);
        if let Some(uuid) = super::dispatch::service_uuid(path) {
            if let Some(entry) = snapshot.by_uuid.get(&uuid) {
                return Some(found((&path[..37], entry)));
            }
        }
        if let Some(entry) = snapshot.by_name.get(first) {
            return Some(found((&path[..first.len() + 1], entry)));
        }
        snapshot.any_host.find(path).map(found)
    }

    /// What the running service named `reference` (a name or a uuid) offers to tell
    /// who bearer tokens name, if it runs and offers it.
    pub fn authenticator(&self, reference: &str) -> Option<Arc<dyn Authenticator>> {
        let snapshot = self.current.load();
        let entry = match Uuid::try_parse(reference) {
            Ok(uuid) => snapshot.by_uuid.get(&uuid),
            Err(_) => snapshot.by_name.get(reference),
        }?;
        entry.target.authenticator.clone()
    }

    /// Routes a service as `routes` says, replacing whatever it published before.
    pub fn publish(&self, routes: ServiceRoutes) {
        self.update(|snapshot| {
            snapshot.remove(routes.uuid);
            snapshot.insert(routes);
        });
    }

    /// Stops routing to `uuid`.
    pub fn withdraw(&self, uuid: &Uuid) {
        self.update(|snapshot| snapshot.remove(*uuid));
    }

    /// The exact host names routed now.
    pub fn exact_hosts(&self) -> Vec<String> {
        self.current.load().exact.keys().cloned().collect()
    }

    /// Whether any running service has a wildcard host.
    pub fn has_wildcard_hosts(&self) -> bool {
        !self.current.load().wildcard.is_empty()
    }

    /// Wakes on every change of the table.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        let _writer = lock(&self.write);
        let mut next = Snapshot::clone(&self.current.load());
        change(&mut next);
        self.current.store(Arc::new(next));
        self.changes.send_modify(|count| *count += 1);
    }
}

/// The first segment of a path (`a` of `/a/b`).
pub(crate) fn first_segment(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').next().unwrap_or_default()
}

/// A `Host` value as routes name hosts: no port, no trailing dot, lowercase (copied
/// only when it has capitals, which clients rarely send).
fn normalize_host(host: &str) -> Option<Cow<'_, str>> {
    let name = if host.starts_with('[') {
        // An IPv6 literal: no host route names one.
        return None;
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    Some(if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

/// Uuids v4 are random already: hashing them again (SipHash) would only cost time.
/// Clients cannot pick the uuids in the table, so they cannot aim at one bucket.
#[derive(Default)]
pub(crate) struct UuidHasher(u64);

impl Hasher for UuidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `Uuid` hashes as its 16 bytes; fold them so every byte counts.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(name: &str, hosts: &[&str], path: Option<&str>) -> ServiceRoutes {
        ServiceRoutes {
            uuid: Uuid::new_v4(),
            name: name.to_owned(),
            hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h).expect("host"))
                .collect(),
            path: path.map(str::to_owned),
            target: Target::new(
                Router::new(),
                crate::data_plane::ServiceMeter::new(1),
                None,
                None,
            ),
            chain: None,
        }
    }

    fn hit(table: &RouteTable, host: Option<&str>, path: &str) -> Option<(String, usize)> {
        table
            .find(host, path)
            .map(|found| (found.prefix.as_str().to_owned(), found.strip))
    }

    #[test]
    fn precedence_exact_wildcard_prefix_uuid_name() {
        let table = RouteTable::default();
        let site = routes("site", &["app.example.com"], None);
        let api = routes("api", &["app.example.com"], Some("/api"));
        let wild = routes("wild", &["*.example.com"], None);
        let everywhere = routes("everywhere", &[], Some("/shared"));
        let plain = routes("plain", &[], None);
        let plain_uuid = plain.uuid;
        for r in [site, api, wild, everywhere, plain] {
            table.publish(r);
        }
        assert_eq!(
            hit(&table, Some("app.example.com"), "/x"),
            Some((String::new(), 0))
        );
        assert_eq!(
            hit(&table, Some("APP.example.com:8080"), "/api/x"),
            Some(("/api".to_owned(), 4))
        );
        // Whole segments only.
        assert_eq!(
            hit(&table, Some("app.example.com"), "/apix"),
            Some((String::new(), 0))
        );
        assert_eq!(
            hit(&table, Some("b.example.com"), "/apix"),
            Some((String::new(), 0))
        );
        // One label below the parent, no more.
        assert_eq!(
            hit(&table, Some("a.b.example.com"), "/plain/x").map(|h| h.0),
            Some("/plain".to_owned())
        );
        assert_eq!(
            hit(&table, Some("other.test"), "/shared/y"),
            Some(("/shared".to_owned(), 7))
        );
        let by_uuid = format!("/{plain_uuid}/z");
        assert_eq!(hit(&table, None, &by_uuid).map(|h| h.1), Some(37));
        assert_eq!(hit(&table, None, "/plain"), Some(("/plain".to_owned(), 6)));
        assert!(hit(&table, Some("other.test"), "/nothing").is_none());
        table.withdraw(&plain_uuid);
        assert!(hit(&table, None, "/plain").is_none());
        assert!(hit(&table, None, &by_uuid).is_none());
    }

    #[test]
    fn host_and_path_syntax() {
        assert_eq!(
            HostPattern::parse("App.Example.COM."),
            Ok(HostPattern::Exact("app.example.com".to_owned()))
        );
        assert_eq!(
            HostPattern::parse("*.xn--bcher-kva.example"),
            Ok(HostPattern::Wildcard("xn--bcher-kva.example".to_owned()))
        );
        for bad in [
            "", "*", "*.com", "a..b", "-a.b", "a_b.c", "a.b:80", "*.*.a.b", "a b",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_path_prefix("/api/").as_deref(), Ok("/api"));
        assert_eq!(parse_path_prefix("/").as_deref(), Ok("/"));
        assert_eq!(parse_path_prefix("/a/b").as_deref(), Ok("/a/b"));
        for bad in ["api", "/a//b", "/../x", "/a/./b", "/a b", "/a?b"] {
            assert!(parse_path_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }
}
